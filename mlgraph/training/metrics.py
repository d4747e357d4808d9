"""Training-side metrics: the forecasting composite score and the cross-validation fold summary.

The metric names per task, which way each improves, and the classification and regression metrics that
external checkpoints share live in mlgraph/core/metrics.py.

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
