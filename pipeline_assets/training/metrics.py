"""Metrics per task, the forecasting composite score, and the "which is better" rule.

Composite score (forecasting; lower is better): the weighted mean of RMSE, MAE and MSE computed on the
target standardised by the *training* target's standard deviation σ, i.e.

    composite = (w_rmse·RMSE/σ + w_mae·MAE/σ + w_mse·MSE/σ²) / (w_rmse + w_mae + w_mse)

RMSE and MAE are in target units and MSE in squared units, so a raw weighted sum would be dominated by
MSE on any target larger than ~1 (and by RMSE/MAE on a target smaller than 1). Dividing by σ (σ² for
MSE) makes the score scale-free, comparable across runs of one experiment, and independent of which
other models are in the comparison (unlike min-max scaling across models). With the design document's
weights (0.5/0.3/0.2, which already sum to 1) and a target that is already standardised, this is
exactly the document's weighted sum. A model that always predicts the training mean scores about
(0.5 + 0.3·0.8 + 0.2) ≈ 0.94 on stationary data; a perfect model scores 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from core.experiment import LOWER_IS_BETTER

CLASSIFICATION_METRICS = ("roc_auc", "precision", "recall", "f1", "accuracy")
REGRESSION_METRICS = ("r2", "rmse", "mae")
FORECAST_METRICS = ("mse", "rmse", "mae", "composite")
TASK_METRICS = {
    "classification": CLASSIFICATION_METRICS,
    "regression": REGRESSION_METRICS,
    "forecasting": FORECAST_METRICS,
}


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


def composite_score(rmse: float, mae: float, mse: float, weights: Mapping[str, float], scale: float) -> float:
    """The normalised weighted score described in the module docstring (lower is better)."""
    if not scale > 0:
        raise ValueError(f"composite scale must be positive (the training target's std), got {scale}")
    parts = {"rmse": rmse / scale, "mae": mae / scale, "mse": mse / scale**2}
    total = sum(weights.values())
    return float(sum(weights.get(k, 0.0) * v for k, v in parts.items()) / total)


def forecast_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, weights: Mapping[str, float], scale: float
) -> dict[str, float]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    err = y_pred - y_true
    mse = float(np.mean(err**2))
    rmse = float(np.sqrt(mse))
    mae = float(np.mean(np.abs(err)))
    return {"mse": mse, "rmse": rmse, "mae": mae, "composite": composite_score(rmse, mae, mse, weights, scale)}


def summarize_folds(fold_metrics: list[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """metric → {"mean", "std"} over folds (population std, NaN folds ignored)."""
    summary: dict[str, dict[str, float]] = {}
    for name in fold_metrics[0] if fold_metrics else []:
        values = np.array([m[name] for m in fold_metrics], dtype=np.float64)
        finite = values[np.isfinite(values)]
        summary[name] = {
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "std": float(finite.std()) if finite.size else float("nan"),
        }
    return summary
