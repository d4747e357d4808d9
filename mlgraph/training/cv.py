"""Cross-validation splits per task: stratified k-fold, shuffled k-fold, expanding-window time series."""

from __future__ import annotations

import numpy as np


def cv_splits(
    task: str, y: np.ndarray, folds: int, seed: int, min_train: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train positions, validation positions) per fold, deterministic for a seed.

    Forecasting uses expanding windows: fold k trains on everything before its validation block,
    and validation blocks are consecutive and in time order (sklearn's TimeSeriesSplit).
    `min_train` is the shortest training prefix a forecaster can use (window + horizon).
    """
    n = len(y)
    if task == "classification":
        from sklearn.model_selection import StratifiedKFold

        counts = np.unique(y, return_counts=True)[1]
        if counts.min() < folds:
            raise ValueError(
                f"the rarest class has {counts.min()} training rows, fewer than cv_folds={folds}. "
                "Fix: lower cv_folds in the experiment YAML or use more data."
            )
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [(tr, va) for tr, va in splitter.split(np.zeros(n), y)]
    if task == "regression":
        from sklearn.model_selection import KFold

        if n < folds:
            raise ValueError(f"{n} training rows cannot make cv_folds={folds} folds. Fix: lower cv_folds.")
        return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(n)))
    if task == "forecasting":
        from sklearn.model_selection import TimeSeriesSplit

        block = n // (folds + 1)
        if n - folds * block < min_train or block < 1:
            raise ValueError(
                f"{n} training time steps are too few for {folds} expanding-window folds with a "
                f"{min_train}-step minimum history. Fix: lower cv_folds or forecast.window, or use more data."
            )
        return list(TimeSeriesSplit(n_splits=folds).split(np.zeros(n)))
    raise ValueError(f"unknown task {task!r}")
