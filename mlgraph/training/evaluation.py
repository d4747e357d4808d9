"""Test-set evaluation of every trained family and of the task's trivial baseline.

Baselines: classification predicts the training majority class (its score is the training positive
rate, so its ROC-AUC is 0.5; multiclass: the training class shares as every row's probabilities);
regression predicts the training mean; forecasting repeats the value one season earlier (seasonal
naive). They are evaluated like the models and stored beside them as `baseline_*` rows, so the
champion gate and any later analysis compare like with like. A multiclass target also gets per-class
precision, recall and F1 on the test set (`precision[<class>]`, ...; mlgraph/core/metrics.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlgraph.core import evaluation_store
from mlgraph.core import metrics as core_metrics
from mlgraph.core.atomic import atomic_path
from mlgraph.core.drive import DrivePaths
from mlgraph.core.experiment import ExperimentConfig
from mlgraph.core.markdown import md_table
from mlgraph.core.plugins import ensure_on_path
from mlgraph.training import families as fam
from mlgraph.training import forecasting as fc
from mlgraph.training import metrics as mt
from mlgraph.training.forecast_data import evaluation_series
from mlgraph.training.labels import binary_labels, encode_labels, probability_columns, target_classes

SOURCE = "candidates"  # the evaluation_store source (file name) of the trained candidates' rows
BASELINE = {
    "classification": "baseline_majority_class",
    "regression": "baseline_mean",
    "forecasting": "baseline_seasonal_naive",
}


@dataclass
class EvaluationOutcome:
    metrics: dict[str, dict[str, float]]  # model → metric → value (test set)
    # model, row, y_true, y_pred (+ y_score for binary classification, proba[<class>] per class for
    # multiclass, timestamp for forecasting); classification's y_true and y_pred are class indices
    predictions: pd.DataFrame
    baseline: str
    classes: tuple[Any, ...] | None = None  # multiclass: the class labels, in index order
    series: dict[str, Any] | None = None  # forecasting: how train + test were reindexed (forecast_data)


def load_model(task: str, name: str, path: Path):
    """Spec `name`'s saved model (a forecaster's family is recorded in its file)."""
    if task == "forecasting":
        return fc.load_forecaster(None, path)
    import joblib

    ensure_on_path()  # a user estimator's class is unpickled from the plugins folder
    return joblib.load(path)


def evaluate(
    config: ExperimentConfig,
    train: pd.DataFrame,
    test: pd.DataFrame,
    artifacts: Mapping[str, Path],
    thresholds: Mapping[str, float] | None = None,
    scale: float | None = None,
) -> EvaluationOutcome:
    """Metrics and predictions on `test` for each family's saved model (`artifacts`) and the baseline."""
    task = config.task
    baseline = BASELINE[task]
    metrics: dict[str, dict[str, float]] = {}
    parts: list[pd.DataFrame] = []

    if task == "forecasting":
        regular, positions = evaluation_series(config, train, test)
        series, ts = regular.values, regular.timestamps
        y_true = series[positions]
        sigma = scale if scale is not None else float(np.std(train[config.target].to_numpy(dtype=np.float64))) or 1.0
        weights = config.selection.composite_weights
        preds = {f: fc.predict_forecaster(load_model(task, f, p), series, ts, positions) for f, p in artifacts.items()}
        lag = fc.seasonal_lag(config.forecast)
        preds[baseline] = series[positions - lag]
        for model, y_pred in preds.items():
            metrics[model] = mt.forecast_metrics(y_true, y_pred, weights, sigma)
            parts.append(
                pd.DataFrame(
                    {
                        "model": model,
                        "row": np.arange(len(positions)),
                        "timestamp": ts[positions],
                        "y_true": y_true,
                        "y_pred": y_pred,
                    }
                )
            )
        return EvaluationOutcome(metrics, pd.concat(parts, ignore_index=True), baseline, series=regular.report)

    spec = fam.feature_spec(train, config)
    X_test = fam.prepare_frame(test, spec)
    rows = np.arange(len(test))
    if task == "classification" and len(target_classes(train[config.target], "train.parquet")) > 2:
        return _evaluate_multiclass(config, train, test, X_test, artifacts)
    if task == "classification":
        y_train, positive = binary_labels(train[config.target], "train.parquet")
        y_true = (test[config.target].to_numpy() == positive).astype(np.int64)
        thresholds = dict(thresholds or {})
        scores = {f: fam.positive_scores(load_model(task, f, p), X_test) for f, p in artifacts.items()}
        # Majority class: a constant score at the training positive rate, labelled by the usual 0.5 cut.
        scores[baseline] = np.full(len(test), float(y_train.mean()))
        thresholds.setdefault(baseline, 0.5)
        for model, score in scores.items():
            threshold = thresholds.get(model, 0.5)
            metrics[model] = {
                **core_metrics.classification_metrics(y_true, score, threshold),
                "threshold": float(threshold),
            }
            parts.append(
                pd.DataFrame(
                    {
                        "model": model,
                        "row": rows,
                        "y_true": y_true,
                        "y_pred": (score >= threshold).astype(np.int64),
                        "y_score": score,
                    }
                )
            )
        return EvaluationOutcome(metrics, pd.concat(parts, ignore_index=True), baseline)

    y_true = test[config.target].to_numpy(dtype=np.float64)
    values = {f: fam.predict(task, load_model(task, f, p), X_test) for f, p in artifacts.items()}
    values[baseline] = np.full(len(test), float(np.mean(train[config.target].to_numpy(dtype=np.float64))))
    for model, y_pred in values.items():
        metrics[model] = core_metrics.regression_metrics(y_true, y_pred)
        parts.append(pd.DataFrame({"model": model, "row": rows, "y_true": y_true, "y_pred": y_pred}))
    return EvaluationOutcome(metrics, pd.concat(parts, ignore_index=True), baseline)


def _evaluate_multiclass(
    config: ExperimentConfig,
    train: pd.DataFrame,
    test: pd.DataFrame,
    X_test: pd.DataFrame,
    artifacts: Mapping[str, Path],
) -> EvaluationOutcome:
    """Every class's probability; the label is the most probable class (no threshold); per-class metrics too."""
    baseline = BASELINE["classification"]
    classes = target_classes(train[config.target], "train.parquet")
    y_train = encode_labels(train[config.target], classes, "train.parquet")
    y_true = encode_labels(test[config.target], classes, "test.parquet")
    probabilities = {
        f: fam.class_probabilities(load_model("classification", f, p), X_test) for f, p in artifacts.items()
    }
    # Majority class: the training class shares for every row, so its label is the most frequent class.
    shares = np.bincount(y_train, minlength=len(classes)) / len(y_train)
    probabilities[baseline] = np.tile(shares, (len(test), 1))
    metrics, parts = {}, []
    for model, proba in probabilities.items():
        metrics[model] = core_metrics.multiclass_metrics(y_true, proba, classes)
        part = pd.DataFrame(
            {
                "model": model,
                "row": np.arange(len(test)),
                "y_true": y_true,
                "y_pred": proba.argmax(axis=1).astype(np.int64),
            }
        )
        part[probability_columns(classes)] = proba
        parts.append(part)
    return EvaluationOutcome(metrics, pd.concat(parts, ignore_index=True), baseline, classes)


def metric_records(
    experiment: str, config_hash: str, dataset: str, values: Mapping[str, Mapping[str, float]], timestamp: Any
) -> list[dict[str, Any]]:
    """Rows for mlgraph.core.evaluation_store.write_metrics (NaN values are skipped)."""
    return [
        {
            "experiment": experiment,
            "model": model,
            "dataset": dataset,
            "metric": metric,
            "value": float(value),
            "config_hash": config_hash,
            "timestamp": timestamp,
        }
        for model, by_metric in values.items()
        for metric, value in by_metric.items()
        if value == value
    ]


def cv_values(manifest: Mapping[str, Any], thresholds: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """family → cross-validated mean and std of every metric (+ its threshold), as `cv` metric rows."""
    values: dict[str, dict[str, float]] = {}
    for family, entry in manifest["families"].items():
        values[family] = {m: s["mean"] for m, s in entry["cv"].items()}
        values[family].update({f"{m}_std": s["std"] for m, s in entry["cv"].items()})
        if family in thresholds:
            values[family]["threshold"] = thresholds[family]
    return values


def write_evaluation(
    drive: DrivePaths,
    config: ExperimentConfig,
    manifest: Mapping[str, Any],
    thresholds: Mapping[str, float],
    outcome: EvaluationOutcome,
    timestamp: Any,
) -> list[Path]:
    """Test and CV metric rows (hive-partitioned parquet), then the test and out-of-fold predictions."""
    evaluation_dir = drive.evaluation_dir(config.name)
    records = metric_records(config.name, config.config_hash, "test", outcome.metrics, timestamp)
    records += metric_records(config.name, config.config_hash, "cv", cv_values(manifest, thresholds), timestamp)
    written = evaluation_store.write_metrics(evaluation_dir, records, source=SOURCE)
    with atomic_path(drive.predictions_path(config.name, "test")) as tmp:
        outcome.predictions.to_parquet(tmp, index=False)
    with atomic_path(drive.predictions_path(config.name, "cv")) as tmp:
        pd.read_parquet(drive.oof_predictions(config.name)).to_parquet(tmp, index=False)
    return written


def read_test_metrics(drive: DrivePaths, experiment: str, config_hash: str) -> dict[str, dict[str, float]]:
    """model → metric → value from the candidates' own test-metric files of this config, read through DuckDB."""
    import duckdb

    pattern = evaluation_store.metrics_glob(drive.evaluation_dir(experiment), dataset="test", source=SOURCE)
    rows = duckdb.sql(
        f"SELECT model, metric, value FROM read_parquet('{pattern}', hive_partitioning = true) WHERE config_hash = ?",
        params=[config_hash],
    ).fetchall()
    test: dict[str, dict[str, float]] = {}
    for model, metric, value in rows:
        test.setdefault(model, {})[metric] = value
    return test


def scoreboard_markdown(
    task: str,
    selection_metric: str,
    cv: Mapping[str, Mapping[str, Mapping[str, float]]],
    test: Mapping[str, Mapping[str, float]],
    champion_candidate: str | None = None,
    n_classes: int | None = None,
) -> str:
    """Markdown table ranked by the cross-validated selection metric; baselines listed last."""
    test_metrics = list(core_metrics.target_metrics(task, n_classes))
    if task == "classification" and not core_metrics.is_multiclass(task, n_classes):
        test_metrics.append("threshold")
    ranked = sorted(
        cv,
        key=lambda f: (
            cv[f][selection_metric]["mean"]
            if core_metrics.lower_is_better(selection_metric)
            else -cv[f][selection_metric]["mean"]
        ),
    )
    header = ["rank", "model", f"cv {selection_metric} (mean ± std)", *[f"test {m}" for m in test_metrics]]
    rows = []
    for rank, family in enumerate(ranked, 1):
        s = cv[family][selection_metric]
        name = f"**{family}**" if family == champion_candidate else family
        cells = [str(rank), name, f"{s['mean']:.4f} ± {s['std']:.4f}"]
        rows.append(cells + [f"{test.get(family, {}).get(m, float('nan')):.4f}" for m in test_metrics])
    for model in sorted(set(test) - set(cv)):
        rows.append(["–", f"_{model}_", "–"] + [f"{test[model].get(m, float('nan')):.4f}" for m in test_metrics])
    return md_table(header, rows)


def per_class_markdown(
    test: Mapping[str, Mapping[str, float]], classes: tuple[Any, ...], predictions: pd.DataFrame
) -> str:
    """Markdown table of each model's test precision, recall and F1 per class, with the class's test rows."""
    support = np.bincount(predictions.drop_duplicates("row")["y_true"], minlength=len(classes))
    rows = []
    for model, values in test.items():
        for index, label in enumerate(classes):
            cells = [
                values.get(core_metrics.per_class_metric(m, label), float("nan"))
                for m in core_metrics.PER_CLASS_METRICS
            ]
            rows.append([model, str(label), str(int(support[index])), *(f"{v:.4f}" for v in cells)])
    return md_table(["model", "class", "test rows", *core_metrics.PER_CLASS_METRICS], rows)
