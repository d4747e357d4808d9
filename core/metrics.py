"""The metric contract, one home: the metrics of each task, which way each one improves, and how the
metrics that trained candidates and external checkpoints share are computed (so their rows compare
like for like). Forecasting's composite score and the fold summaries live with training
(pipeline_assets/training/metrics.py); sklearn is imported only inside the function that needs it.
"""

from __future__ import annotations

import numpy as np

CLASSIFICATION_METRICS = ("roc_auc", "precision", "recall", "f1", "accuracy")
REGRESSION_METRICS = ("r2", "rmse", "mae")
FORECAST_METRICS = ("mse", "rmse", "mae", "composite")
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": CLASSIFICATION_METRICS,
    "regression": REGRESSION_METRICS,
    "forecasting": FORECAST_METRICS,
}
DEFAULT_SELECTION_METRIC: dict[str, str] = {
    "regression": "r2",
    "classification": "roc_auc",
    "forecasting": "composite",
}
# Metrics where lower is better; every other metric is maximised.
LOWER_IS_BETTER = frozenset({"rmse", "mae", "mse", "composite", "log_loss"})


def task_metrics(task: str, where: str = "experiment") -> tuple[str, ...]:
    """The metrics every model of `task` is scored on."""
    if task not in TASK_METRICS:
        raise ValueError(f"{where}: task {task!r} has no metric set. Fix: use one of {sorted(TASK_METRICS)}.")
    return TASK_METRICS[task]


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def better(metric: str, a: float, b: float) -> bool:
    """True when value `a` is strictly better than `b` for `metric`."""
    return a < b if lower_is_better(metric) else a > b


def classification_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC-AUC of the scores; precision, recall, F1 and accuracy of `scores >= threshold`.

    `y_true` holds 0/1 (1 = positive class). A single-class `y_true` has no ROC-AUC: it is NaN.
    """
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    y_pred = (scores >= threshold).astype(int)
    tp = int(np.sum((y_pred == 1) & (y_true == 1)))
    fp = int(np.sum((y_pred == 1) & (y_true == 0)))
    fn = int(np.sum((y_pred == 0) & (y_true == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    roc = float(roc_auc_score(y_true, scores)) if len(np.unique(y_true)) == 2 else float("nan")
    return {
        "roc_auc": roc,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": float(np.mean(y_pred == y_true)),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    err = y_pred - y_true
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else float("nan")
    return {"r2": r2, "rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}
