"""Experiment configuration: the pydantic model, YAML loading with clear errors, the config hash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from mlgraph.core.drive import PROJECT_ROOT
from mlgraph.core.hashing import sha256_text
from mlgraph.core.metrics import DEFAULT_SELECTION_METRIC, default_selection_metric
from mlgraph.core.model_spec import (
    DEFAULT_FAMILIES,
    FAMILIES,
    USER_FAMILIES,
    ModelSpec,
    Strict,
    spec_hash_payload,
)
from mlgraph.core.names import EXPERIMENT_NAME_RE, EXPERIMENT_NAME_RULE, is_experiment_name

# Re-exported: the experiment schema's public names, one import away for its readers.
__all__ = [
    "DEFAULT_FAMILIES",
    "EXPERIMENT_NAME_RE",
    "EXPERIMENT_NAME_RULE",
    "FAMILIES",
    "USER_FAMILIES",
    "ModelSpec",
    "is_experiment_name",
]

# libyaml's loader when present: sensors re-read every experiment file each tick.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DEFAULT_CONFIG_DIR = PROJECT_ROOT / "config"

Task = Literal["classification", "regression", "forecasting"]
ColumnType = Literal["numeric", "integer", "categorical", "boolean", "datetime"]


class ConfigError(ValueError):
    """A config file is invalid; the message names the file, the field and the fix."""


class DatasetConfig(Strict):
    generator: Literal["salary", "student_engagement", "demand_forecast"] | None = Field(
        default=None, description="Built-in deterministic demo generator"
    )
    path: str | None = Field(
        default=None,
        description="CSV or parquet file; relative paths are relative to the experiment YAML",
    )
    rows: int | None = Field(default=None, gt=0, description="Rows to generate (generators only)")
    seed: int = Field(default=0, description="Generator seed")
    na_values: list[str] | None = Field(
        default=None,
        description="A file's texts for a missing cell besides "
        "the empty one (unset: pandas' NA, N/A, NaN, null, None, ...)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if (self.generator is None) == (self.path is None):
            raise ValueError("set exactly one of 'generator' or 'path'")
        if self.path is not None:
            if self.rows is not None:
                raise ValueError("'rows' applies to generators only; remove it for a file source")
            if Path(self.path).suffix.lower() not in {".csv", ".parquet", ".pq"}:
                raise ValueError(f"path {self.path!r} must end in .csv or .parquet")
        elif self.na_values is not None:
            raise ValueError("'na_values' applies to file sources only; remove it for a generator")
        return self


class SamplingConfig(Strict):
    train_rows: int | None = Field(default=None, gt=0, description="Rows kept from the train split")
    test_rows: int | None = Field(default=None, gt=0, description="Rows kept from the test split")
    strategy: Literal["head", "random", "stratified"] = "head"
    seed: int = 42


class SplitConfig(Strict):
    test_size: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = 42


class SelectionConfig(Strict):
    metric: str | None = Field(default=None, description="Metric that picks the champion")
    composite_weights: dict[str, float] = Field(
        default_factory=lambda: {"rmse": 0.5, "mae": 0.3, "mse": 0.2},
        description="Weights of the forecasting composite score (lower is better)",
    )

    @field_validator("composite_weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - {"rmse", "mae", "mse"}
        if unknown:
            raise ValueError(f"unknown composite metrics {sorted(unknown)}; use rmse, mae, mse")
        if any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError("composite weights must be non-negative and sum to more than 0")
        return value


# Drift is checked every few minutes; a shorter cooldown would retrain on nearly every check.
MIN_RETRAIN_COOLDOWN_HOURS = 0.25
# Drift tests, numeric then categorical (mlgraph/monitoring/drift.py, distribution.py); `drift.tests` names those
# that decide, all are reported. Why these defaults (ks reports only): docs/monitoring.md, "Which tests decide".
DRIFT_TESTS = ("z", "ks", "wasserstein", "psi", "unseen", "chi2", "jensen_shannon")
DEFAULT_DRIFT_TESTS = ("z", "wasserstein", "psi", "unseen", "chi2", "jensen_shannon")


class DriftConfig(Strict):
    """Drift monitoring and the retraining it triggers (design document 001, stage 5); not in the config hash."""

    window: int = Field(default=5000, gt=0, description="Newest logged predictions a drift report reads")
    min_window: int = Field(default=200, gt=0, description="Fewer predictions: 'insufficient_data', not 'no drift'")
    drift_zscore_threshold: float = Field(default=3.0, gt=0, description="|window mean - train mean| / train std limit")
    drift_min_features: int = Field(default=2, ge=1, description="Drift when at least this many features drift")
    class_rate_shift_threshold: float = Field(default=0.1, gt=0, le=1, description="Predicted class-share shift limit")
    unseen_share_threshold: float = Field(default=0.05, ge=0, le=1, description="Unseen-category share limit")
    chi2_pvalue: float = Field(default=0.001, gt=0, lt=1, description="Categorical chi-square p-value limit")
    tests: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DRIFT_TESTS),
        description=f"Tests that decide, of {', '.join(DRIFT_TESTS)} (a feature drifts when one flags it; all are "
        "reported). Default: all but ks, whose p < 0.05 on 20 features false-alarms in 1 window of 4",
    )
    ks_pvalue: float = Field(default=0.05, gt=0, lt=1, description="ks flags a two-sample p-value under this")
    wasserstein_threshold: float = Field(
        default=0.1, gt=0, description="W1 / training std limit (Evidently's); at least the noise 4/sqrt(n m/(n+m))"
    )
    psi_threshold: float = Field(
        default=0.2, gt=0, description="PSI limit over the training deciles; at least its chi-square noise bound"
    )
    jensen_shannon_threshold: float = Field(
        default=0.1, gt=0, le=1, description="Jensen-Shannon distance limit (Evidently's); at least its noise bound"
    )
    allow_fast_retraining: bool = Field(
        default=False,
        description=f"Allow retrain_cooldown_hours under {MIN_RETRAIN_COOLDOWN_HOURS:g} h (down to 0: a retraining "
        "run on every drift tick); for tests and demos, never for a served model",
    )
    retrain_cooldown_hours: float = Field(
        default=6.0,
        ge=0,
        description=f"Hours between drift-triggered retrainings; at least {MIN_RETRAIN_COOLDOWN_HOURS:g} "
        "unless allow_fast_retraining is true",
    )
    # Delayed labels (mlgraph/monitoring/live.py): the realized selection metric against the champion's test value.
    performance_drop: float = Field(
        default=0.05, gt=0, description="Retrain when the last min_labels labelled predictions score this much worse"
    )
    min_labels: int = Field(default=200, gt=0, description="Labelled predictions the performance-drop check needs")
    live_bucket: Literal["hour", "day"] = Field(default="day", description="live_performance's time bucket")

    @field_validator("retrain_cooldown_hours")
    @classmethod
    def _cooldown_floor(cls, value: float, info: ValidationInfo) -> float:
        # allow_fast_retraining is declared first, so it is validated (and in info.data) by now.
        if value < MIN_RETRAIN_COOLDOWN_HOURS and not info.data.get("allow_fast_retraining", False):
            raise ValueError(
                f"{value:g} h is under the {MIN_RETRAIN_COOLDOWN_HOURS:g} h minimum: drift would start a "
                f"retraining run on every sensor tick. Fix: set drift.retrain_cooldown_hours to "
                f"{MIN_RETRAIN_COOLDOWN_HOURS:g} or more, or add drift.allow_fast_retraining: true if you "
                "mean it (tests and demos)"
            )
        return value

    @field_validator("tests")
    @classmethod
    def _known_tests(cls, value: list[str]) -> list[str]:
        if not value or set(value) - set(DRIFT_TESTS):
            unknown = ", ".join(repr(n) for n in value if n not in DRIFT_TESTS)
            raise ValueError(
                f"{f'unknown test(s) {unknown}' if unknown else 'no test'}. Fix: set drift.tests to a list of "
                f"{', '.join(DRIFT_TESTS)} (default: {', '.join(DEFAULT_DRIFT_TESTS)})"
            )
        return list(dict.fromkeys(value))  # a name given twice decides once


class ServingSLO(Strict):
    """What the served champion must sustain, judged by the serving_capacity asset's open-loop sweep. Defaults:
    the demo's ONNX champion saturates at 4,000-5,400/s on the shared 2-core machine, so 200/s within 50 ms
    passes 20x over yet refuses a champion that cannot keep up (a native 400-tree forest at ~30 ms a row)."""

    p99_ms: float = Field(default=50.0, gt=0, description="Open-loop p99 latency a sustained rate must stay under")
    min_rps: float = Field(default=200.0, gt=0, description="Requests/s the service must sustain within p99_ms")
    sweep_max_rps: float | None = Field(
        default=None, gt=0, description="Highest rate the capacity sweep tries (default 8,000/s); at least min_rps"
    )

    @model_validator(mode="after")
    def _sweep_reaches_min_rps(self) -> ServingSLO:
        if self.sweep_max_rps is not None and self.sweep_max_rps < self.min_rps:
            msg = f"sweep_max_rps {self.sweep_max_rps} is below min_rps {self.min_rps}: the sweep could never show"
            raise ValueError(f"{msg} the SLO met. Fix: raise sweep_max_rps to at least min_rps, or leave it out")
        return self


class DeploymentConfig(Strict):
    """Release-gate budgets for the ONNX variants (design document 001, stage 3) and the serving SLO."""

    int8_max_roc_auc_loss: float = Field(
        default=0.01, ge=0, le=1, description="Classification: ROC AUC INT8 may lose against FP32 on the test split"
    )
    int8_max_rmse_increase: float = Field(
        default=0.01, ge=0, description="Regression/forecasting: relative RMSE increase INT8 may add against FP32"
    )
    slo: ServingSLO = Field(
        default_factory=ServingSLO, description="Serving SLO (not in the config hash: it judges serving, not the model)"
    )


class PreprocessingConfig(Strict):
    correlation_threshold: float = Field(
        default=0.95, gt=0, le=1, description="Drop one of each feature pair with |r| above this"
    )
    outlier_z: float = Field(default=4.0, gt=0, description="Clip numeric values to mean ± z·std")
    significance_runs: int = Field(default=10, ge=2, description="Repeats per significance test")
    spill_to_disk: bool = True


class ForecastConfig(Strict):
    window: int = Field(default=24, gt=0, description="Input window length (time steps)")
    horizon: int = Field(default=1, gt=0)
    seasonal_period: int = Field(default=24, gt=0)
    epochs: int = Field(default=20, gt=0)
    patience: int = Field(default=3, gt=0)
    batch_size: int = Field(default=64, gt=0)
    hidden_size: int = Field(default=32, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)
    device: Literal["cpu", "cuda"] = Field(
        default="cpu", description="Where GRU/LSTM train; models are always saved and served from the CPU"
    )
    target_mode: Literal["change", "level"] = Field(
        default="change",
        description="What GRU/LSTM learn: the change from the window's last value, or the standardised level",
    )
    frequency: str | None = Field(
        default=None,
        description="The series' spacing as a pandas alias ('1h', 'W-SUN', 'MS'; a number for a numeric time "
        "column); inferred from the training timestamps when unset",
    )

    @field_validator("frequency")
    @classmethod
    def _frequency(cls, value: str | None) -> str | None:
        if value is None or _is_number(value):
            return value
        from pandas.tseries.frequencies import to_offset  # only when set: core stays light to import

        try:
            to_offset(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a pandas frequency; use e.g. '1h', '15min', 'D', 'W-SUN', 'MS'"
            ) from None
        return value


def _is_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


# Fields added after config hashes were first recorded, with their defaults: left out of the hash while
# unset, so a field added to the schema never makes an existing experiment's models stale.
HASH_OMITTED_AT_DEFAULT: dict[tuple[str, ...], Any] = {
    ("dataset", "na_values"): None,
    ("exclude_columns",): [],
    ("forecast", "target_mode"): "change",
    ("forecast", "frequency"): None,
    ("deployment",): DeploymentConfig().model_dump(exclude={"slo"}),
}
# `drift:` as hashes first recorded it (monitoring only now): every hash keeps this payload in its place.
LEGACY_DRIFT_HASH_PAYLOAD: dict[str, Any] = {"ks_pvalue": 0.01, "min_samples": 200, "psi_threshold": 0.2}


class ExperimentConfig(Strict):
    """One experiment: one dataset, one task, the models to compare and how to judge them."""

    name: str
    task: Task
    description: str = ""
    dataset: DatasetConfig
    target: str
    time_column: str | None = None
    columns: dict[str, ColumnType] = Field(default_factory=dict, description="Declared column types, checked on load")
    exclude_columns: list[str] = Field(
        default_factory=list, description="Columns that are not features (row ids, leaks); left out of the splits"
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    models: list[ModelSpec] = Field(default_factory=list)
    cv_folds: int = Field(default=5, ge=2, le=20)
    precision_target: float = Field(default=0.8, gt=0, le=1)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    forecast: ForecastConfig = Field(default_factory=ForecastConfig)
    deployment: DeploymentConfig = Field(default_factory=DeploymentConfig)
    seed: int = 42

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not is_experiment_name(value):
            raise ValueError(f"{value!r} is not a valid experiment name: use {EXPERIMENT_NAME_RULE}")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("target must name the column to predict")
        return value

    @field_validator("exclude_columns")
    @classmethod
    def _excludable(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if kept := [info.data[k] for k in ("target", "time_column") if info.data.get(k) in value]:
            raise ValueError(f"{kept} name the target or time column, which cannot be excluded; remove them")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if self.task == "forecasting" and not self.time_column:
            raise ValueError("forecasting experiments need 'time_column' (the timestamp column)")
        if self.sampling.strategy == "stratified" and self.task != "classification":
            raise ValueError("sampling.strategy 'stratified' needs task 'classification'")
        allowed = FAMILIES[self.task]
        for spec in self.models:
            if spec.family not in allowed:
                raise ValueError(
                    f"model family {spec.family!r} is not available for {self.task}; choose from {', '.join(allowed)}"
                )
        names = [spec.key for spec in self.models]
        if duplicated := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(
                f"model name(s) {duplicated} appear more than once in 'models'; give each spec its own 'name' "
                "(e.g. ridge_weak, ridge_strong)"
            )
        return self

    @property
    def model_specs(self) -> list[ModelSpec]:
        """The configured specs, or one spec per default family of the task when none are listed."""
        return list(self.models) or [ModelSpec(family=f) for f in DEFAULT_FAMILIES[self.task]]

    @property
    def model_names(self) -> list[str]:
        """Every spec's name, in config order (ties in selection go to the first)."""
        return [spec.key for spec in self.model_specs]

    def model_spec(self, name: str) -> ModelSpec:
        for spec in self.model_specs:
            if spec.key == name:
                return spec
        raise KeyError(f"experiment {self.name!r} has no model named {name!r}; it has {self.model_names}")

    def model_params(self, name: str) -> dict[str, Any]:
        """The params spec `name` sets ({} when the experiment has no such spec)."""
        return next((dict(s.params) for s in self.model_specs if s.key == name), {})

    @property
    def selection_metric(self) -> str:
        """The configured metric, else the task's default (classification: the binary default, roc_auc)."""
        return self.selection.metric or DEFAULT_SELECTION_METRIC[self.task]

    def selection_metric_for(self, n_classes: int | None) -> str:
        """The configured metric, else the default for a target with `n_classes` classes (3+: f1_macro)."""
        return self.selection.metric or default_selection_metric(self.task, n_classes)

    @property
    def config_hash(self) -> str:
        """SHA-256 of the canonical validated config (defaults filled in; description and drift excluded).

        The description is prose and `drift` is monitoring: editing either must not make every model stale.
        """
        payload = self.model_dump(mode="json", exclude={"description", "drift"})
        payload["drift"] = LEGACY_DRIFT_HASH_PAYLOAD  # monitoring never changes the model; old hashes stay put
        payload["deployment"].pop("slo", None)  # the serving SLO judges the service, never the model
        payload["models"] = [
            spec_hash_payload(spec, dumped) for spec, dumped in zip(self.models, payload["models"], strict=True)
        ]
        for (*parents, field), default in HASH_OMITTED_AT_DEFAULT.items():
            node = payload
            for key in parents:
                node = node[key]
            if node[field] == default:
                del node[field]
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return sha256_text(canonical)


class LoadedExperiment(BaseModel):
    """A validated config together with the file it came from."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    config: ExperimentConfig
    path: Path

    @property
    def source_path(self) -> Path | None:
        """Absolute path of the dataset file (None for generators)."""
        if self.config.dataset.path is None:
            return None
        return resolve_dataset_path(self.path, self.config.dataset.path)


def resolve_dataset_path(config_file: Path, raw: str) -> Path:
    """Resolve a dataset path; relative paths may not leave the YAML's directory."""
    candidate = Path(raw)
    if candidate.is_absolute():
        return candidate
    base = config_file.parent.resolve()
    resolved = (base / candidate).resolve()
    if ".." in candidate.parts or not resolved.is_relative_to(base):
        raise ConfigError(
            f"{config_file}: field 'dataset.path': {raw!r} leaves the config directory {base}. "
            "Fix: use an absolute path, or put the file under that directory and give its path "
            "without '..'."
        )
    return resolved


_FIXES = {
    "extra_forbidden": "remove this key or fix its spelling",
    "missing": "add this required field",
    "literal_error": "use one of the allowed values",
    "string_type": "quote it (YAML reads unquoted numbers, null, ~ and yes/no as other types)",
}


def format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid experiment config ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        fix = _FIXES.get(err["type"], "correct the value")
        lines.append(f"  field '{loc}': {err['msg']}. Fix: {fix}.")
    return "\n".join(lines)


def parse_experiment(path: Path, data: Any) -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the file must hold a YAML mapping (name:, task:, dataset:, ...), "
            f"got {type(data).__name__}. Fix: see config/experiments/salary.yaml for an example."
        )
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None
    if config.name != path.stem:
        raise ConfigError(
            f"{path}: field 'name': {config.name!r} does not match the file name {path.stem!r}. "
            f"Fix: rename the file to {config.name}.yaml or set name: {path.stem}."
        )
    return config


def load_experiment_file(path: str | Path) -> LoadedExperiment:
    """Read and validate one experiment YAML; every failure is a ConfigError naming the file."""
    path = Path(path).resolve()
    if not is_experiment_name(path.stem):
        raise ConfigError(
            f"{path}: the file name {path.stem!r} is not a valid experiment name. Fix: rename it "
            f"to {EXPERIMENT_NAME_RULE}."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such experiment config. Fix: create it or check the name.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason}). Fix: save it as UTF-8.") from None
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}. Fix: correct the YAML syntax.") from None
    config = parse_experiment(path, data)
    loaded = LoadedExperiment(config=config, path=path)
    loaded.source_path  # noqa: B018 - validates the dataset path eagerly
    return loaded


def experiments_dir(config_dir: str | Path | None = None) -> Path:
    return Path(config_dir or DEFAULT_CONFIG_DIR) / "experiments"


def experiment_names(config_dir: str | Path | None = None) -> list[str]:
    """Stems of the experiment YAML files (valid names only; sorted)."""
    directory = experiments_dir(config_dir)
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.yaml") if p.is_file() and is_experiment_name(p.stem))
