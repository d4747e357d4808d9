"""Decision-threshold calibration: the most recall that still meets a precision target."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ThresholdResult:
    threshold: float
    precision: float
    recall: float
    reached_target: bool
    precision_target: float
    candidates: int  # distinct thresholds considered

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate_threshold(y_true: np.ndarray, scores: np.ndarray, precision_target: float) -> ThresholdResult:
    """The threshold t (predict positive when score >= t) maximising recall subject to precision >= target.

    Candidates are the distinct scores. Ties in recall go to the higher precision, then the higher
    threshold. When no candidate reaches the target, the highest-precision candidate is returned
    (ties to the higher recall) with `reached_target=False`.
    """
    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels and scores must be equal-length 1-D arrays, got {y.shape} and {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity; the model's predictions are broken")
    positives = int(y.sum())
    if positives == 0:
        raise ValueError("no positive labels in the out-of-fold data: a threshold cannot be calibrated")

    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(1 - y_sorted)
    # Predicting positive at threshold t takes every row with score >= t: the last index of each run
    # of equal scores in the descending order.
    last_of_run = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    thresholds = s_sorted[last_of_run]
    tp, fp = tp[last_of_run], fp[last_of_run]
    precision = tp / (tp + fp)
    recall = tp / positives

    feasible = precision >= precision_target - 1e-12
    if feasible.any():
        idx = np.flatnonzero(feasible)
        # lexsort: last key is primary → recall, then precision, then threshold (all maximised).
        best = idx[np.lexsort((thresholds[idx], precision[idx], recall[idx]))[-1]]
        reached = True
    else:
        idx = np.arange(thresholds.size)
        best = idx[np.lexsort((recall, precision))[-1]]
        reached = False
    return ThresholdResult(
        threshold=float(thresholds[best]),
        precision=float(precision[best]),
        recall=float(recall[best]),
        reached_target=reached,
        precision_target=float(precision_target),
        candidates=int(thresholds.size),
    )


def calibrate_families(families: Iterable[str], oof: Any, precision_target: float) -> dict[str, ThresholdResult]:
    """family → its threshold, from the out-of-fold scores (`oof`: model, y_true, y_score columns)."""
    results = {}
    for family in families:
        part = oof[oof["model"] == family]
        results[family] = calibrate_threshold(part["y_true"].to_numpy(), part["y_score"].to_numpy(), precision_target)
    return results
