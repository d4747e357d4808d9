"""The statistics of the checkpoint comparison: point metrics, bootstrap intervals, paired tests, Holm.

Plain numpy; scipy.stats is imported inside the functions that need it.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class ModelPredictions:
    model: str
    y_true: np.ndarray
    y_pred: np.ndarray
    y_score: np.ndarray | None
    source: str


def per_row_loss(task: str, p: ModelPredictions) -> tuple[str, np.ndarray]:
    """The per-row loss the paired test compares: absolute error, log loss, or 0/1 error without scores."""
    if task == "regression":
        return "absolute error", np.abs(p.y_true - p.y_pred)
    if p.y_score is not None:
        s = np.clip(p.y_score, 1e-12, 1 - 1e-12)
        return "log loss", -(p.y_true * np.log(s) + (1 - p.y_true) * np.log(1 - s))
    return "0/1 error", zero_one_loss(p)


def zero_one_loss(p: ModelPredictions) -> np.ndarray:
    return (p.y_true != p.y_pred).astype("float64")


def _auc(y_true: np.ndarray, score: np.ndarray) -> float:
    # Rank form of ROC AUC (Mann-Whitney U with average ranks for ties).
    from scipy.stats import rankdata

    pos = y_true == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def point_metrics(task: str, p: ModelPredictions) -> dict[str, float]:
    y, yhat = p.y_true, p.y_pred
    if task == "regression":
        err = y - yhat
        mse = float(np.mean(err**2))
        sst = float(np.sum((y - y.mean()) ** 2))
        return {
            "r2": 1 - float(np.sum(err**2)) / sst if sst > 0 else math.nan,
            "rmse": math.sqrt(mse),
            "mae": float(np.mean(np.abs(err))),
            "mse": mse,
        }
    out = {"accuracy": float(np.mean(y == yhat))}
    if p.y_score is not None:
        out["roc_auc"] = _auc(y, p.y_score)
    return out


def bootstrap_ci(
    task: str, p: ModelPredictions, n_boot: int = 1000, seed: int = 42, alpha: float = 0.05
) -> dict[str, tuple[float, float, float]]:
    """metric → (estimate, low, high): percentile intervals over `n_boot` seeded row resamples."""
    rng = np.random.default_rng(seed)
    n = len(p.y_true)
    estimates = point_metrics(task, p)
    samples: dict[str, list[float]] = {k: [] for k in estimates}
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        resampled = ModelPredictions(
            p.model, p.y_true[idx], p.y_pred[idx], None if p.y_score is None else p.y_score[idx], p.source
        )
        for k, v in point_metrics(task, resampled).items():
            samples[k].append(v)
    out = {}
    for k, est in estimates.items():
        values = np.asarray(samples[k], dtype="float64")
        values = values[np.isfinite(values)]
        if len(values) == 0:
            out[k] = (est, math.nan, math.nan)
            continue
        low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        out[k] = (est, float(low), float(high))
    return out


def paired_test(
    loss_checkpoint: np.ndarray, loss_candidate: np.ndarray, n_boot: int = 1000, seed: int = 42, alpha: float = 0.05
) -> dict[str, float]:
    """Checkpoint minus candidate per-row loss: mean, bootstrap CI, and the Wilcoxon signed-rank p-value."""
    from scipy.stats import wilcoxon

    diff = loss_checkpoint - loss_candidate
    rng = np.random.default_rng(seed)
    means = np.array([diff[rng.integers(0, len(diff), size=len(diff))].mean() for _ in range(n_boot)])
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    if np.count_nonzero(diff) == 0:
        statistic, p_value = 0.0, 1.0
    else:
        res = wilcoxon(loss_checkpoint, loss_candidate, zero_method="wilcox", alternative="two-sided")
        statistic, p_value = float(res.statistic), float(res.pvalue)
    return {
        "mean_diff": float(diff.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "wilcoxon_statistic": statistic,
        "p_value": p_value,
        "n": int(len(diff)),
    }


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
