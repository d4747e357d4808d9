"""The request and response models, built from the experiment's features with `pydantic.create_model`.

Fields carry the real feature names (as aliases: a column may be named like a pydantic attribute),
types as the experiment declares them, strict (no "3" for 3), finite floats only, and `null` for a
missing value (the model imputes it as in training). Unknown fields are refused (`extra="forbid"`).
A forecaster's row is the window of past target values it needs, oldest first.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, create_model

from mlgraph.serving.model import BOOL, FLOAT, INT, STR, InputSpec

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
TYPES: dict[str, Any] = {FLOAT: FiniteFloat, INT: StrictInt, BOOL: StrictBool, STR: StrictStr}
FORBID = ConfigDict(extra="forbid")


def row_model(spec: InputSpec) -> type[BaseModel]:
    if spec.window is not None:
        description = (
            f"The last {spec.window} values of {spec.target!r}, oldest first, evenly spaced; the "
            f"forecast is for {spec.horizon} step(s) after the last one."
        )
        window = Annotated[
            list[FiniteFloat], Field(min_length=spec.window, max_length=spec.window, description=description)
        ]
        return create_model("PredictRequest", __config__=FORBID, window=(window, ...))
    fields = {
        f"field_{i}": (
            TYPES[f.kind] | None,
            Field(
                ...,
                alias=f.name,
                description=(f"{'categorical' if f.categorical else 'numeric'} feature ({f.kind}); null = missing"),
            ),
        )
        for i, f in enumerate(spec.features)
    }
    return create_model("PredictRequest", __config__=FORBID, **fields)


def batch_model(row: type[BaseModel], max_rows: int) -> type[BaseModel]:
    rows = Annotated[
        list[row], Field(min_length=1, description=f"One object per row; at most {max_rows} rows (more: 413).")
    ]
    return create_model("BatchPredictRequest", __config__=FORBID, rows=(rows, ...))


def response_models(spec: InputSpec) -> tuple[type[BaseModel], type[BaseModel]]:
    """(one-row response, batch response) as /docs shows them."""
    if spec.task == "classification":
        output = {
            "prediction": (Any, Field(description="The label: at the promoted threshold (binary), else the argmax")),
            "probability": (float | None, Field(None, description="Binary: the positive class's probability")),
            "probabilities": (dict[str, float] | None, Field(None, description="Multiclass: class → probability")),
        }
    else:
        what = "forecast" if spec.window is not None else "predicted value"
        output = {"prediction": (float, Field(description=f"The {what} of {spec.target!r}"))}
    ids = {"request_id": (str, ...), "model_version": (str, Field(description="The champion that answered"))}
    one = create_model("PredictResponse", **ids, **output)
    row = create_model("RowPrediction", **output)
    return one, create_model("BatchPredictResponse", **ids, predictions=(list[row], ...))
