"""Model specs: the entries of an experiment's `models:` (a built-in family, the user's estimator or torch
module), the families each task allows, and how a spec enters the config hash."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlgraph.core.names import EXPERIMENT_NAME_RULE, is_experiment_name

# The families an experiment trains when its `models:` list is empty (as they always were).
DEFAULT_FAMILIES: dict[str, tuple[str, ...]] = {
    "regression": ("ridge", "random_forest", "hist_gradient_boosting", "knn", "decision_tree"),
    "classification": ("logistic_regression", "knn", "svm", "decision_tree", "random_forest"),
    "forecasting": ("gru", "lstm", "prophet", "seasonal_naive"),
}
# The user's own code: `estimator` (a scikit-learn-compatible class or factory), `torch` (a build function).
USER_FAMILIES = ("estimator", "torch")
# Every family a spec may name, per task.
FAMILIES: dict[str, tuple[str, ...]] = {
    "regression": (*DEFAULT_FAMILIES["regression"], "lightgbm", "xgboost", *USER_FAMILIES),
    "classification": (
        *DEFAULT_FAMILIES["classification"],
        "hist_gradient_boosting",
        "lightgbm",
        "xgboost",
        *USER_FAMILIES,
    ),
    "forecasting": (*DEFAULT_FAMILIES["forecasting"], "torch"),
}
# "module:Name": a dotted module path and an attribute of it (plugins/my_models.py → my_models:NearestMean).
IMPORT_PATH_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


class Strict(BaseModel):
    # Unknown keys are typos more often than not: reject them instead of ignoring them.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelSpec(Strict):
    """One model to train: a built-in family, the user's estimator, or the user's torch module."""

    name: str | None = Field(
        default=None, description="Unique within the experiment (files, MLflow runs, reports); default: the family"
    )
    family: str
    params: dict[str, Any] = Field(default_factory=dict)
    estimator: str | None = Field(
        default=None, description="family 'estimator': 'module:Name', a class or factory in plugins/ or a package"
    )
    module: str | None = Field(
        default=None, description="family 'torch': 'module:build', a function build(n_inputs, params) -> nn.Module"
    )
    preprocessing: Literal["standard", "none"] = Field(
        default="standard",
        description="family 'estimator': 'none' makes the estimator the whole pipeline (it gets the raw columns)",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not is_experiment_name(value):
            raise ValueError(f"{value!r} is not a valid model name: use {EXPERIMENT_NAME_RULE}")
        return value

    @model_validator(mode="after")
    def _user_code(self) -> ModelSpec:
        needs = {"estimator": "estimator", "torch": "module"}.get(self.family)
        for key in ("estimator", "module"):
            value = getattr(self, key)
            if key == needs and value is None:
                raise ValueError(f"family {self.family!r} needs '{key}: \"module:Name\"' (the import path of the code)")
            if key != needs and value is not None:
                raise ValueError(f"'{key}' applies to family {'estimator' if key == 'estimator' else 'torch'} only")
            if value is not None and IMPORT_PATH_RE.fullmatch(value) is None:
                raise ValueError(
                    f"{key} {value!r} is not an import path; write it as 'module:Name' (e.g. my_models:NearestMean)"
                )
        if self.preprocessing == "none" and self.family != "estimator":
            raise ValueError("'preprocessing: none' applies to family 'estimator' only")
        return self

    @property
    def key(self) -> str:
        """The spec's name: how files, MLflow runs, the evaluation parquet and promotion call this model."""
        return self.name or self.family

    @property
    def import_path(self) -> str | None:
        """The user code the spec runs (estimator or torch module), if any."""
        return self.estimator or self.module


# ModelSpec fields added after hashes were first recorded, with their defaults (left out of the hash).
SPEC_HASH_OMITTED_AT_DEFAULT: dict[str, Any] = {"estimator": None, "module": None, "preprocessing": "standard"}


def spec_hash_payload(spec: ModelSpec, dumped: dict[str, Any]) -> dict[str, Any]:
    """A spec as the config hash sees it: new fields at their defaults left out, the user's code by content.

    A name equal to the family is the default too, so an existing experiment keeps its hash. User code
    enters as its import path plus the SHA-256 of its source files: editing it makes the models stale.
    """
    out = {
        k: v for k, v in dumped.items() if k not in SPEC_HASH_OMITTED_AT_DEFAULT or v != SPEC_HASH_OMITTED_AT_DEFAULT[k]
    }
    if out.get("name") in (None, spec.family):
        out.pop("name", None)
    if spec.import_path is not None:
        from mlgraph.core.plugins import source_digest

        out["code_sha256"] = source_digest(spec.import_path)
    return out
