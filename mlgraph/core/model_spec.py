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


# A sweep is executions, not a loop: past this many trials it is a typo (or a job for a cluster scheduler).
MAX_TRIALS = 1000
# Families whose training has epochs, so a trial can be pruned on its per-epoch validation loss.
EPOCH_FAMILIES = ("gru", "lstm", "torch")
SWEEP_FAMILIES_WITHOUT_PARAMS = ("prophet",)


def _number_text(value: Any, where: str) -> None:
    # YAML 1.1 reads 1e-3 (no dot) as text: a model would get the string "1e-3" and fail mid-sweep.
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return
        raise ValueError(
            f"{where}: {value!r} is text, not a number (YAML reads 1e-3 as text). Fix: write 0.001 or 1.0e-3"
        )


class Range(Strict):
    """A numeric search range: low..high, on a log scale when `log`, whole numbers when `type: int`."""

    low: float | int
    high: float | int
    log: bool = False
    type: Literal["float", "int"] = "float"
    step: float | int | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"range low {self.low} must be below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("a range cannot be both log and stepped: drop 'step' or 'log'")
        if self.type == "int" and any(v != int(v) for v in (self.low, self.high)):
            raise ValueError(f"an int range needs whole bounds, got {self.low}..{self.high}")
        return self


class SearchConfig(Strict):
    """Adaptive search (Optuna): `n_trials` points of `space`, drawn by the sampler."""

    sampler: Literal["tpe", "random"] = "tpe"
    n_trials: int = Field(gt=0, le=MAX_TRIALS)
    timeout: float | None = Field(default=None, gt=0, description="Seconds; no new trial starts after it")
    seed: int | None = Field(default=None, description="Sampler seed; default: the experiment's seed")
    space: dict[str, Range | list[Any]] = Field(description="param → range {low, high, log, type} or a list of choices")

    @field_validator("space")
    @classmethod
    def _space(cls, value: dict[str, Range | list[Any]]) -> dict[str, Range | list[Any]]:
        if not value:
            raise ValueError("search.space is empty: name at least one param to search")
        for name, choices in value.items():
            if isinstance(choices, list):
                if not choices:
                    raise ValueError(f"search.space.{name} is an empty list of choices")
                for choice in choices:
                    _number_text(choice, f"search.space.{name}")
        return value


class SweepConfig(Strict):
    """A spec's hyperparameter sweep: one execution per trial, the best (cross-validated) becomes the candidate."""

    grid: dict[str, list[Any]] | None = Field(default=None, description="param → values; every combination runs")
    search: SearchConfig | None = None
    prune: bool = Field(default=False, description="Stop a neural-network trial whose validation loss lags (median)")
    prune_startup_trials: int = Field(default=3, ge=0, description="Trials that always finish before any is pruned")
    prune_warmup_epochs: int = Field(default=5, ge=0, description="Epochs a trial always runs before it can be pruned")
    max_parallel: int | None = Field(default=None, gt=0, description="Trials at once; default: the cores (local)")

    @model_validator(mode="after")
    def _one_kind(self) -> SweepConfig:
        if (self.grid is None) == (self.search is None):
            raise ValueError("a sweep needs exactly one of 'grid' (values per param) or 'search' (Optuna)")
        if self.grid is not None:
            if not self.grid:
                raise ValueError("sweep.grid is empty: name at least one param and its values")
            size = 1
            for name, values in self.grid.items():
                if not values:
                    raise ValueError(f"sweep.grid.{name} has no values")
                if len({repr(v) for v in values}) != len(values):
                    raise ValueError(f"sweep.grid.{name} lists a value twice: {values}")
                for v in values:
                    _number_text(v, f"sweep.grid.{name}")
                size *= len(values)
            if size > MAX_TRIALS:
                raise ValueError(f"sweep.grid has {size} combinations; at most {MAX_TRIALS}. Fix: use 'search'")
        return self

    @property
    def params(self) -> tuple[str, ...]:
        """The params the sweep varies."""
        return tuple(self.grid) if self.grid is not None else tuple(self.search.space)  # type: ignore[union-attr]


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
    sweep: SweepConfig | None = Field(default=None, description="Vary params: one execution per trial (grid/search)")

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
        if self.sweep is not None and self.sweep.prune and self.family not in EPOCH_FAMILIES:
            raise ValueError(
                f"sweep.prune applies to families trained by epochs ({', '.join(EPOCH_FAMILIES)}); "
                f"{self.family!r} has no per-epoch validation loss. Fix: remove 'prune'"
            )
        if self.sweep is not None and self.family in SWEEP_FAMILIES_WITHOUT_PARAMS:
            raise ValueError(f"family {self.family!r} takes no params to sweep. Fix: remove 'sweep'")
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
SPEC_HASH_OMITTED_AT_DEFAULT: dict[str, Any] = {
    "estimator": None,
    "module": None,
    "preprocessing": "standard",
    "sweep": None,
}


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
