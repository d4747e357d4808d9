"""The metric contract, one home: the metrics of each task, which way each one improves, and how the
metrics that trained candidates and external checkpoints share are computed (so their rows compare
like for like). Forecasting's composite score and the fold summaries live with training
(mlgraph/training/metrics.py); sklearn is imported only inside the function that needs it.

A classification target with two classes is scored by CLASSIFICATION_METRICS (positive-class scores
cut at a threshold); one with three or more classes by MULTICLASS_METRICS (the label is the most
probable class) plus per-class metrics named `precision[<class>]`, `recall[<class>]`, `f1[<class>]`.
"""

from __future__ import annotations

import re

import numpy as np

CLASSIFICATION_METRICS = ("roc_auc", "precision", "recall", "f1", "accuracy")
MULTICLASS_METRICS = ("f1_macro", "f1_weighted", "roc_auc_ovr_macro", "log_loss", "accuracy")
PER_CLASS_METRICS = ("precision", "recall", "f1")
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
# Multiclass labels are the argmax, so the default scores those decisions, every class weighing the same
# (a rare class counts as much as the majority); roc_auc_ovr_macro is the threshold-free alternative.
MULTICLASS_SELECTION_METRIC = "f1_macro"
# Metrics where lower is better; every other metric is maximised.
LOWER_IS_BETTER = frozenset({"rmse", "mae", "mse", "composite", "log_loss"})
_PER_CLASS = re.compile(r"^(?P<metric>[a-z0-9_]+)\[(?P<label>.*)\]$", re.DOTALL)


def task_metrics(task: str, where: str = "experiment") -> tuple[str, ...]:
    """The metrics every model of `task` is scored on."""
    if task not in TASK_METRICS:
        raise ValueError(f"{where}: task {task!r} has no metric set. Fix: use one of {sorted(TASK_METRICS)}.")
    return TASK_METRICS[task]


def is_multiclass(task: str, n_classes: int | None) -> bool:
    return task == "classification" and n_classes is not None and n_classes > 2


def target_metrics(task: str, n_classes: int | None = None, where: str = "experiment") -> tuple[str, ...]:
    """The summary metrics of `task` for a target with `n_classes` classes (multiclass: MULTICLASS_METRICS)."""
    return MULTICLASS_METRICS if is_multiclass(task, n_classes) else task_metrics(task, where)


def default_selection_metric(task: str, n_classes: int | None = None) -> str:
    """The metric that picks the champion when the experiment names none."""
    return MULTICLASS_SELECTION_METRIC if is_multiclass(task, n_classes) else DEFAULT_SELECTION_METRIC[task]


def per_class_metric(metric: str, label: object) -> str:
    """The name of one class's metric, e.g. `recall[setosa]`."""
    return f"{metric}[{label}]"


def split_per_class(name: str) -> tuple[str, str] | None:
    """(metric, class label) of a per-class metric name; None for any other metric."""
    match = _PER_CLASS.match(name)
    return (match["metric"], match["label"]) if match else None


def mlflow_metric_key(name: str) -> str:
    """`name` as MLflow accepts it: `recall[a b/c]` becomes `recall/a b_c` (MLflow groups on the slash)."""
    parts = split_per_class(name)
    if parts is None:
        return name
    label = re.sub(r"[^\w.\- ]", "_", parts[1]).strip(".") or "_"
    return f"{parts[0]}/{label}"


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


def multiclass_metrics(y_true: np.ndarray, proba: np.ndarray, labels: list | tuple | None = None) -> dict[str, float]:
    """MULTICLASS_METRICS of class probabilities `proba` (n, k) against class indices `y_true` (0..k-1).

    The predicted label is the most probable class (the first on a tie, like sklearn's predict). F1 per
    class is 0 when the class is neither predicted nor present; one-vs-rest ROC-AUC is the mean over the
    classes present in `y_true` (all of them, in a stratified split) of each class's ROC-AUC against the
    rest, which is sklearn's `roc_auc_score(multi_class="ovr", average="macro")`. With `labels` (the class
    names, in index order), precision, recall and F1 of each class are added as `precision[<label>]`, ...
    """
    from sklearn.metrics import log_loss, roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=np.float64)
    k = proba.shape[1]
    y_pred = proba.argmax(axis=1)
    support = np.bincount(y_true, minlength=k).astype(np.float64)
    predicted = np.bincount(y_pred, minlength=k).astype(np.float64)
    tp = np.bincount(y_true[y_pred == y_true], minlength=k).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    aucs = [float(roc_auc_score(y_true == c, proba[:, c])) for c in range(k) if 0 < support[c] < len(y_true)]
    metrics = {
        "f1_macro": float(f1.mean()),
        "f1_weighted": float(np.sum(f1 * support) / support.sum()),
        "roc_auc_ovr_macro": float(np.mean(aucs)) if aucs else float("nan"),
        # Rows renormalised: float32 probabilities (an ONNX graph's) sum to 1 only within 1e-7.
        "log_loss": float(log_loss(y_true, proba / proba.sum(axis=1, keepdims=True), labels=list(range(k)))),
        "accuracy": float(np.mean(y_pred == y_true)),
    }
    if labels is not None:
        for c, label in enumerate(labels):
            for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
                metrics[per_class_metric(name, label)] = float(values[c])
    return metrics


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    err = y_pred - y_true
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else float("nan")
    return {"r2": r2, "rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}
