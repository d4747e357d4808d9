"""Train every configured model spec with cross-validation, in parallel within the machine's cores.

The work is cut into tasks — one per (spec, fold) plus one final fit per spec on the whole
training split — and run by joblib (loky processes), slowest first. Every task pins its BLAS and
torch thread pools to one thread and is seeded from the experiment seed, so results do not depend
on how tasks land on workers: the same seed and data give identical metrics. Final models are saved
atomically by the worker that fits them.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlgraph.core import metrics as core_metrics
from mlgraph.core.atomic import atomic_path
from mlgraph.core.experiment import ExperimentConfig, ModelSpec
from mlgraph.core.hashing import sha256_file
from mlgraph.training import families as fam
from mlgraph.training import forecasting as fc
from mlgraph.training import metrics as mt
from mlgraph.training.cv import cv_splits
from mlgraph.training.forecast_data import training_series
from mlgraph.training.labels import class_labels, probability_columns, selection_metric
from mlgraph.training.spec_check import check_specs

SKLEARN_SUFFIX = ".joblib"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def artifact_name(task: str, name: str, family: str) -> str:
    """The model file of spec `name`: named after the spec, with its family's format as the suffix."""
    return name + (fc.ARTIFACT_SUFFIX[family] if task == "forecasting" else SKLEARN_SUFFIX)


@dataclass(frozen=True)
class TrainingData:
    """One experiment's training split, prepared for the task."""

    task: str
    y: (
        np.ndarray
    )  # classification: class index 0..k-1 of the sorted classes (binary: 1 = positive label); otherwise float
    X: pd.DataFrame | None = None  # tabular tasks
    features: fam.FeatureSpec | None = None
    timestamps: np.ndarray | None = None  # forecasting
    positive_label: Any = None  # binary classification: the larger class
    scale: float | None = None  # forecasting: std of the training target (composite normalisation)
    observed: np.ndarray | None = None  # forecasting: False where forecast_data filled a gap (never scored)
    series: dict[str, Any] | None = None  # forecasting: how the series was reindexed (missing points, fill)
    classes: tuple[Any, ...] | None = None  # classification: the class labels, in index order

    @property
    def n_classes(self) -> int | None:
        return len(self.classes) if self.classes is not None else None


def prepare_training_data(train: pd.DataFrame, config: ExperimentConfig, where: str = "train.parquet") -> TrainingData:
    if config.target not in train.columns:
        raise ValueError(
            f"{where}: target column {config.target!r} is missing. Fix: check 'target' in the experiment YAML."
        )
    if config.task != "classification" and not pd.api.types.is_numeric_dtype(train[config.target]):
        raise ValueError(
            f"{where}: column {config.target!r} has type {train[config.target].dtype}, but a {config.task} target "
            "must be numeric. Fix: point 'target' at a numeric column or declare it numeric in 'columns'."
        )
    if config.task == "forecasting":
        series = training_series(train, config, where)
        return TrainingData(
            task="forecasting",
            y=series.values,
            timestamps=series.timestamps,
            scale=series.scale,
            observed=series.observed,
            series=series.report,
        )
    spec = fam.feature_spec(train, config)
    X = fam.prepare_frame(train, spec)
    if config.task == "classification":
        y, classes = class_labels(train[config.target], where, config.cv_folds)
        positive = classes[1] if len(classes) == 2 else None
        return TrainingData(task="classification", y=y, X=X, features=spec, positive_label=positive, classes=classes)
    y = train[config.target].to_numpy(dtype=np.float64)
    return TrainingData(task="regression", y=y, X=X, features=spec)


@dataclass(frozen=True)
class Task:
    spec: ModelSpec
    fold: int | None  # None = the final fit on the whole training split
    train_idx: np.ndarray
    val_idx: np.ndarray | None
    params: dict[str, Any]
    artifact: Path | None

    @property
    def name(self) -> str:
        return self.spec.key

    @property
    def family(self) -> str:
        return self.spec.family


@dataclass
class TaskResult:
    name: str
    fold: int | None
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    predictions: np.ndarray | None = None
    val_idx: np.ndarray | None = None
    artifact_sha256: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


FORECAST_PARAM_KEYS = {
    "gru": {"hidden_size", "learning_rate", "epochs", "patience", "batch_size", "window", "horizon"},
    "lstm": {"hidden_size", "learning_rate", "epochs", "patience", "batch_size", "window", "horizon"},
    "seasonal_naive": {"seasonal_period", "horizon"},
}


def spec_params(config: ExperimentConfig, spec: ModelSpec) -> dict[str, Any]:
    """The spec's params with its family's defaults filled in (forecasting: from the `forecast` section)."""
    family, overrides = spec.family, dict(spec.params)
    unknown = sorted(set(overrides) - FORECAST_PARAM_KEYS.get(family, set(overrides)))
    if config.task == "forecasting" and unknown:
        raise ValueError(
            f"experiment {config.name!r}: models[{spec.key}].params {unknown} are not {family} settings. "
            f"Fix: use {sorted(FORECAST_PARAM_KEYS[family])} (or the experiment's 'forecast' section)."
        )
    if config.task == "forecasting":
        if family in fc.TORCH_FORECASTERS:
            f = config.forecast
            base = {
                "hidden_size": f.hidden_size,
                "learning_rate": f.learning_rate,
                "epochs": f.epochs,
                "patience": f.patience,
                "batch_size": f.batch_size,
                "window": f.window,
                "horizon": f.horizon,
            }
            if family == "torch":  # the user's network has its own size; everything else goes to build()
                del base["hidden_size"]
            return {**base, **overrides}
        if family == "seasonal_naive":
            return {"seasonal_period": config.forecast.seasonal_period, "horizon": config.forecast.horizon, **overrides}
        return overrides
    return fam.resolved_params(config.task, family, overrides)


@contextlib.contextmanager
def _single_thread() -> Any:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


_WATCHED_PARENT: int | None = None


def exit_with_parent(parent_pid: int) -> None:
    """In a worker process: exit when the process that started the training is gone.

    A run killed by a timeout or SIGKILL never shuts its pool down, and idle loky workers whose parent
    died were seen lingering for hours; a daemon thread polling the parent pid ends them within seconds.
    """
    global _WATCHED_PARENT
    if os.getpid() == parent_pid or parent_pid == _WATCHED_PARENT:
        return
    _WATCHED_PARENT = parent_pid

    def watch() -> None:
        while True:
            time.sleep(2.0)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            if os.getppid() == 1:  # re-parented to init: the parent is gone or exiting
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_task(task: Task, data: TrainingData, config: ExperimentConfig, parent_pid: int | None = None) -> TaskResult:
    """Fit one spec on one fold (predict its validation rows) or on everything (save the model)."""
    if parent_pid is not None:
        exit_with_parent(parent_pid)
    with _single_thread():
        if data.task == "forecasting":
            return _run_forecast_task(task, data, config)
        return _run_tabular_task(task, data, config)


def _run_tabular_task(task: Task, data: TrainingData, config: ExperimentConfig) -> TaskResult:
    import joblib

    assert data.X is not None and data.features is not None
    model = fam.build_model(data.task, task.family, task.params, data.features, config.seed, task.spec)
    X_tr, y_tr = data.X.iloc[task.train_idx], data.y[task.train_idx]
    start = time.perf_counter()
    model.fit(X_tr, y_tr)
    if task.fold is None:
        seconds = time.perf_counter() - start
        assert task.artifact is not None
        with atomic_path(task.artifact) as tmp:
            # zlib level 1: a 400-tree forest shrinks ~3× for ~1 s; joblib output is deterministic.
            joblib.dump(model, tmp, compress=1)
        # The platform's torch loop records per-epoch losses (MLflow step metrics).
        history = list(getattr(fam.final_estimator(model), "history_", []))
        return TaskResult(task.name, None, seconds, artifact_sha256=sha256_file(task.artifact), history=history)
    assert task.val_idx is not None
    preds = fam.predict(data.task, model, data.X.iloc[task.val_idx])
    seconds = time.perf_counter() - start
    y_va = data.y[task.val_idx]
    if data.task == "classification" and preds.ndim == 2:
        metrics = core_metrics.multiclass_metrics(y_va, preds)
    elif data.task == "classification":
        metrics = core_metrics.classification_metrics(y_va, preds, threshold=0.5)
    else:
        metrics = core_metrics.regression_metrics(y_va, preds)
    return TaskResult(task.name, task.fold, seconds, metrics, preds, task.val_idx)


def _run_forecast_task(task: Task, data: TrainingData, config: ExperimentConfig) -> TaskResult:
    assert data.timestamps is not None and data.scale is not None
    cfg = config.forecast.model_copy(
        update={k: task.params[k] for k in ("window", "horizon", "seasonal_period") if k in task.params}
    )
    params = {k: v for k, v in task.params.items() if k not in ("window", "horizon", "seasonal_period")}
    end = int(task.train_idx.max()) + 1  # expanding window: the training part is a prefix
    start = time.perf_counter()
    observed = data.observed if data.observed is not None else np.ones(len(data.y), dtype=bool)
    fit = fc.fit_forecaster(
        task.family,
        data.y[:end],
        data.timestamps[:end],
        cfg,
        params,
        config.seed,
        observed[:end],
        task.spec.module,
        task.name,
    )
    if task.fold is None:
        seconds = time.perf_counter() - start
        assert task.artifact is not None
        fc.save_forecaster(fit, task.artifact)
        return TaskResult(
            task.name,
            None,
            seconds,
            artifact_sha256=sha256_file(task.artifact),
            history=fit.history,
            metadata=fit.metadata,
        )
    assert task.val_idx is not None
    val_idx = task.val_idx[observed[task.val_idx]]  # filled points are not scored
    preds = fc.predict_forecaster(fit, data.y, data.timestamps, val_idx)
    seconds = time.perf_counter() - start
    metrics = mt.forecast_metrics(data.y[val_idx], preds, config.selection.composite_weights, data.scale)
    return TaskResult(task.name, task.fold, seconds, metrics, preds, val_idx, history=fit.history)


@dataclass
class ModelOutcome:
    """One spec's trained model: its file, cross-validation and fit cost."""

    name: str
    family: str
    spec: ModelSpec
    params: dict[str, Any]
    artifact: Path
    artifact_sha256: str
    fit_seconds: float
    cv_seconds: float
    fold_metrics: list[dict[str, float]]
    cv: dict[str, dict[str, float]]
    history: list[dict[str, float]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingOutcome:
    models: dict[str, ModelOutcome]  # spec name → outcome, in config order
    oof: pd.DataFrame  # model, row, fold, y_true, y_pred (classification: y_score) (+ timestamp for forecasting)
    data: TrainingData
    n_jobs: int
    wall_seconds: float
    selection_metric: str = ""  # resolved for this target (multiclass default: f1_macro)


def plan_tasks(config: ExperimentConfig, data: TrainingData, models_dir: Path) -> list[Task]:
    specs = config.model_specs
    min_train = max(fc.min_history(s.family, config.forecast) for s in specs) if data.task == "forecasting" else 1
    splits = cv_splits(data.task, data.y, config.cv_folds, config.seed, min_train=min_train)
    everything = np.arange(len(data.y))
    tasks = []
    for spec in specs:
        params = spec_params(config, spec)
        artifact = models_dir / artifact_name(data.task, spec.key, spec.family)
        tasks.append(Task(spec, None, everything, None, params, artifact))
        tasks.extend(Task(spec, k, tr, va, params, None) for k, (tr, va) in enumerate(splits))
    # Slowest first (stable otherwise), so no core idles behind a late random forest.
    return sorted(tasks, key=lambda t: -fam.FIT_COST.get(t.family, 1))


def train_candidates(
    config: ExperimentConfig,
    train: pd.DataFrame,
    models_dir: Path,
    n_jobs: int | None = None,
    where: str = "train.parquet",
) -> TrainingOutcome:
    """Cross-validate and fit every configured model spec; save each final model under `models_dir`.

    Specs with the user's code are tried first (spec_check.check_specs): a wrong spec stops the run
    before any training.
    """
    start = time.perf_counter()
    data = prepare_training_data(train, config, where)
    metric = selection_metric(config, data.n_classes)
    check_specs(config, data)
    models_dir.mkdir(parents=True, exist_ok=True)
    tasks = plan_tasks(config, data, models_dir)
    n_jobs = max(1, min(n_jobs or available_cores(), len(tasks)))
    if n_jobs == 1:
        # Each task gets its own unpickled copy, as a loky worker does: pickle's output follows object
        # identity (memo), so only then are the model files byte-identical whatever the worker count.
        results = [run_task(*pickle.loads(pickle.dumps((t, data, config)))) for t in tasks]
    else:
        from joblib import Parallel, delayed

        parent = os.getpid()
        results = Parallel(n_jobs=n_jobs, backend="loky")(delayed(run_task)(t, data, config, parent) for t in tasks)
        # Idle loky workers would linger for minutes (in tests, in the daemon's run process).
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)

    outcomes: dict[str, ModelOutcome] = {}
    oof_parts = []
    by_name: dict[str, list[TaskResult]] = {}
    for result in results:
        by_name.setdefault(result.name, []).append(result)
    for spec in config.model_specs:
        name = spec.key
        parts = by_name[name]
        final = next(r for r in parts if r.fold is None)
        folds = sorted((r for r in parts if r.fold is not None), key=lambda r: r.fold)
        fold_metrics = [r.metrics for r in folds]
        outcomes[name] = ModelOutcome(
            name=name,
            family=spec.family,
            spec=spec,
            params=next(t.params for t in tasks if t.name == name),
            artifact=models_dir / artifact_name(data.task, name, spec.family),
            artifact_sha256=final.artifact_sha256 or "",
            fit_seconds=final.seconds,
            cv_seconds=sum(r.seconds for r in folds),
            fold_metrics=fold_metrics,
            cv=mt.summarize_folds(fold_metrics),
            history=final.history,
            metadata=final.metadata,
        )
        oof_parts.extend(_oof_part(name, r, data) for r in folds)
    oof = pd.concat(oof_parts, ignore_index=True)
    return TrainingOutcome(outcomes, oof, data, n_jobs, time.perf_counter() - start, metric)


def _oof_part(name: str, r: TaskResult, data: TrainingData) -> pd.DataFrame:
    """One fold's out-of-fold rows: binary classifiers give scores (the threshold turns them into labels
    later), multiclass ones the argmax label and every class probability, the others values."""
    part = pd.DataFrame({"model": name, "row": r.val_idx, "fold": r.fold, "y_true": data.y[r.val_idx]})
    if data.task == "classification" and r.predictions.ndim == 2:
        part["y_pred"] = r.predictions.argmax(axis=1).astype(np.int64)
        part[probability_columns(data.classes)] = r.predictions
    else:
        part["y_score" if data.task == "classification" else "y_pred"] = r.predictions
    if data.timestamps is not None:
        part["timestamp"] = data.timestamps[r.val_idx]
    return part
