"""The request and response models, built from the experiment's features with `pydantic.create_model`.

Fields carry the real feature names (as aliases: a column may be named like a pydantic attribute),
types as the experiment declares them, strict (no "3" for 3), and `null` for a missing value (the model
imputes it as in training). Unknown fields are refused (`extra="forbid"`). A forecaster's row is the
window of past target values it needs, oldest first.

Every value JSON can carry but the model cannot hold is refused here, naming the field (422), never
found out by a conversion inside the model (a 500): numbers within the float dtype the served runtimes
compute features in (`model.FEATURE_FLOAT`), integers within `model.FEATURE_INT`, strings at most
`max_string_length` characters (a category is a short label; a megabyte one would end up in the
prediction log). The schema is fixed at start-up while the runtime may change (native, ONNX), so the
bounds are the narrowest any runtime reads.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, create_model

from mlgraph.serving.model import BOOL, FEATURE_FLOAT, FEATURE_INT, FLOAT, INT, STR, InputSpec
from mlgraph.serving.settings import DEFAULT_MAX_STRING_LENGTH

_FLOAT_MAX = float(np.finfo(FEATURE_FLOAT).max)
_INT = np.iinfo(FEATURE_INT)
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-_FLOAT_MAX, le=_FLOAT_MAX)]
BoundedInt = Annotated[StrictInt, Field(ge=int(_INT.min), le=int(_INT.max))]
FORBID = ConfigDict(extra="forbid")


def types(max_string_length: int) -> dict[str, Any]:
    """The annotation of each feature kind: what the model holds, and strings of at most `max_string_length`."""
    if max_string_length < 1:
        raise ValueError(f"max_string_length is {max_string_length}; it must be at least 1 character")
    return {
        FLOAT: FiniteFloat,
        INT: BoundedInt,
        BOOL: StrictBool,
        STR: Annotated[StrictStr, Field(max_length=max_string_length)],
    }


def row_model(spec: InputSpec, max_string_length: int = DEFAULT_MAX_STRING_LENGTH) -> type[BaseModel]:
    if spec.window is not None:
        description = (
            f"The last {spec.window} values of {spec.target!r}, oldest first, evenly spaced; the "
            f"forecast is for {spec.horizon} step(s) after the last one."
        )
        window = Annotated[
            list[FiniteFloat], Field(min_length=spec.window, max_length=spec.window, description=description)
        ]
        return create_model("PredictRequest", __config__=FORBID, window=(window, ...))
    kinds = types(max_string_length)
    fields = {
        f"field_{i}": (
            kinds[f.kind] | None,
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
