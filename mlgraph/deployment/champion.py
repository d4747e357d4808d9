"""The promoted champion as the deployment group sees it: which model, where, and the rows it serves.

The champion comes from the promotion pointer (`PromotionStore.current()` of the experiment's config
hash); its file must still hash to what was promoted. `Rows` holds inputs in the champion's serving
form: the feature frame of a tabular model, or raw series windows of a recurrent forecaster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlgraph.core.drive import DrivePaths
from mlgraph.core.experiment import ExperimentConfig
from mlgraph.core.hashing import sha256_file
from mlgraph.core.plugins import ensure_on_path
from mlgraph.training import families as fam
from mlgraph.training import forecasting as fc
from mlgraph.training.forecast_data import evaluation_series, window_inputs
from mlgraph.training.labels import binary_labels, encode_labels, target_classes
from mlgraph.training.model_files import ARGMAX_DECISION
from mlgraph.training.promotion import PromotionStore, pointer_model_name


@dataclass(frozen=True)
class Champion:
    experiment: str
    task: str
    family: str  # the kind of model (gru, lightgbm, estimator, torch, ...)
    model_path: Path
    model_version: str
    run_id: str
    config_hash: str
    threshold: float | None  # binary classification: the promoted cut-off (multiclass: None, the label is the argmax)
    metric: str | None = None  # the selection metric it was promoted on
    classes: tuple[Any, ...] | None = None  # multiclass: the class labels, in index order
    name: str = ""  # the spec's name (the family unless the experiment names its specs)
    import_path: str | None = None  # the user's code (family estimator / torch)

    @property
    def multiclass(self) -> bool:
        return self.classes is not None and len(self.classes) > 2

    def load(self) -> Any:
        """The native model: a fitted sklearn Pipeline, or a forecasting.ForecastFit."""
        if self.task == "forecasting":
            return fc.load_forecaster(self.family, self.model_path)
        import joblib

        ensure_on_path()  # a user estimator's class is unpickled from the plugins folder
        return joblib.load(self.model_path)

    @property
    def model_name(self) -> str:
        return self.name or self.family

    def label(self) -> str:
        return f"{self.model_name} v{self.model_version}"


def read_champion(drive: DrivePaths, config: ExperimentConfig) -> Champion:
    """The current champion of this experiment's config, its file checked against the promoted hash."""
    store = PromotionStore(drive.promotion_dir(config.config_hash))
    pointer = store.current()
    if pointer is None:
        raise FileNotFoundError(
            f"{store.current_path} is missing: no champion is promoted for experiment {config.name!r} with config "
            f"hash {config.config_hash[:12]}. Fix: materialize champion_model for this experiment first."
        )
    for key in ("model_path", "model_type", "model_version", "run_id"):
        if not pointer.get(key):
            raise ValueError(f"{store.current_path}: field {key!r} is missing. Fix: materialize champion_model again.")
    path = Path(pointer["model_path"])
    if not path.exists():  # the drive may be mounted elsewhere than where it was promoted
        path = drive.champion_bundle(config.name, str(pointer["model_version"])) / path.name
    if not path.exists():
        raise FileNotFoundError(
            f"{store.current_path}: model_path {pointer['model_path']} is missing (also at {path}). "
            "Fix: restore the champion bundle, or materialize champion_model again."
        )
    recorded = pointer.get("artifact_sha256")
    if recorded and sha256_file(path) != recorded:
        raise ValueError(
            f"{path}: SHA-256 differs from artifact_sha256 in {store.current_path}: the champion file changed "
            "after promotion. Fix: roll back (`mlgraph promote --rollback`) or materialize champion_model again."
        )
    threshold = pointer.get("threshold")
    argmax = pointer.get("decision") == ARGMAX_DECISION
    if config.task == "classification" and threshold is None and not argmax:
        raise ValueError(f"{store.current_path}: field 'threshold' is missing for a classifier. Fix: promote again.")
    name = pointer_model_name(pointer)
    spec = next((s for s in config.model_specs if s.key == name), None)
    return Champion(
        experiment=config.name,
        task=config.task,
        family=str(pointer["model_type"]),
        name=name,
        import_path=spec.import_path if spec is not None else None,
        model_path=path,
        model_version=str(pointer["model_version"]),
        run_id=str(pointer["run_id"]),
        config_hash=config.config_hash,
        threshold=float(threshold) if threshold is not None else None,
        metric=pointer.get("metric") or config.selection_metric,
        classes=tuple(pointer["classes"]) if argmax and pointer.get("classes") else None,
    )


@dataclass(frozen=True)
class Rows:
    """Inputs in serving form: a feature frame (tabular) or raw windows (n, steps) (recurrent forecasters)."""

    frame: pd.DataFrame | None = None
    windows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frame) if self.frame is not None else len(self.windows)

    def take(self, index: np.ndarray | slice) -> Rows:
        if self.frame is not None:
            return Rows(frame=self.frame.iloc[index].reset_index(drop=True))
        return Rows(windows=self.windows[index])

    def tile(self, n: int) -> Rows:
        """Exactly `n` rows, cycling through these."""
        return self.take(np.arange(n) % len(self))

    def concat(self, other: Rows) -> Rows:
        if self.frame is not None:
            return Rows(frame=pd.concat([self.frame, other.frame], ignore_index=True))
        return Rows(windows=np.concatenate([self.windows, other.windows]))


@dataclass(frozen=True)
class Evaluation:
    """The test split in serving form, with truth and the unit errors are measured in."""

    rows: Rows
    y_true: np.ndarray
    error_unit: float  # 1 for probabilities; the training target's standard deviation for values
    train: pd.DataFrame
    target: str
    features: fam.FeatureSpec | None = None  # tabular: the raw columns the champion reads


def model_features(model: Any, whole: fam.FeatureSpec | None = None) -> fam.FeatureSpec:
    """The raw columns a fitted tabular Pipeline reads, from its ColumnTransformer.

    The user's whole pipeline (`preprocessing: none`) has no ColumnTransformer: it reads the experiment's
    feature columns, `whole` (families.feature_spec of the training split).
    """
    steps = getattr(model, "named_steps", None)
    if steps is None or "preprocess" not in steps:
        if whole is None:
            raise ValueError(
                f"{type(model).__name__} is the user's whole pipeline (preprocessing: none): its columns are the "
                "experiment's features; pass them (families.feature_spec of the training split)"
            )
        return whole
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    for name, _, columns in model.named_steps["preprocess"].transformers_:
        if name == "numeric":
            numeric = tuple(columns)
        elif name == "categorical":
            categorical = tuple(columns)
    return fam.FeatureSpec(numeric, categorical)


def evaluation_split(config: ExperimentConfig, train: pd.DataFrame, test: pd.DataFrame, native: Any) -> Evaluation:
    """The test split as the champion sees it (the same rows and truth evaluation_metrics scored)."""
    if config.task == "forecasting":
        regular, positions = evaluation_series(config, train, test)
        series = regular.values
        meta = native.metadata
        windows = window_inputs(series, positions, meta["window"], meta["horizon"])
        unit = float(np.std(train[config.target].to_numpy(dtype=np.float64))) or 1.0
        return Evaluation(Rows(windows=windows), series[positions], unit, train, config.target)
    features = model_features(native, fam.feature_spec(train, config))
    X = fam.prepare_frame(test, features)
    if config.task == "classification" and len(classes := target_classes(train[config.target], "train.parquet")) > 2:
        # Multiclass: class indices, as the champion predicts them (probabilities are (n, k)).
        y_true = encode_labels(test[config.target], classes, "test.parquet")
        return Evaluation(Rows(frame=X), y_true, 1.0, train, config.target, features)
    if config.task == "classification":
        _, positive = binary_labels(train[config.target], "train.parquet")
        y_true = (test[config.target].to_numpy() == positive).astype(np.int64)
        return Evaluation(Rows(frame=X), y_true, 1.0, train, config.target, features)
    unit = float(np.std(train[config.target].to_numpy(dtype=np.float64))) or 1.0
    y_true = test[config.target].to_numpy(dtype=np.float64)
    return Evaluation(Rows(frame=X), y_true, unit, train, config.target, features)


def edge_rows(evaluation: Evaluation, native: Any) -> tuple[Rows, list[str]]:
    """Rows the test split may lack, with a name each: a gap in every column, unseen categories, extremes.

    Extremes lie ten training ranges beyond the observed minimum and maximum: far outside the data, yet
    inside what float32 represents exactly enough that a mismatch means a real difference.
    """
    rows = evaluation.rows
    if rows.windows is not None:
        base = rows.windows[0]
        span = float(np.ptp(evaluation.train[evaluation.target].to_numpy(dtype=np.float64))) or 1.0
        edges = {
            "constant window": np.full_like(base, float(np.median(base))),
            "window 10 ranges above": base + 10 * span,
            "window 10 ranges below": base - 10 * span,
            "alternating extremes": np.where(
                np.arange(base.size) % 2 == 0, base.max() + 10 * span, base.min() - 10 * span
            ),
        }
        return Rows(windows=np.stack(list(edges.values()))), list(edges)
    spec = evaluation.features or model_features(native)
    base = rows.frame.iloc[[0]].reset_index(drop=True)
    frames, names = [], []
    gap = base.copy()
    for column in spec.numeric:
        gap[column] = np.nan
    for column in spec.categorical:
        gap[column] = None
    frames.append(gap)
    names.append("missing in every column")
    for column in spec.categorical:
        unseen = base.copy()
        unseen[column] = "__mlgraph_unseen_category__"
        frames.append(unseen)
        names.append(f"unseen category in {column}")
    for column in spec.numeric:
        values = pd.to_numeric(evaluation.train[column], errors="coerce").astype(np.float64)
        low, high = float(values.min()), float(values.max())
        span = (high - low) or 1.0
        for label, value in (("above", high + 10 * span), ("below", low - 10 * span)):
            extreme = base.copy()
            extreme[column] = extreme[column].astype(np.float64)
            extreme.loc[0, column] = value
            frames.append(extreme)
            names.append(f"{column} 10 ranges {label}")
    frame = pd.concat(frames, ignore_index=True)
    for column in spec.categorical:
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return Rows(frame=frame), names
