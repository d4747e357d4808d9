"""Train/test split and seeded sampling, per the experiment's task and sampling spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlgraph.core.experiment import ExperimentConfig, SamplingConfig


@dataclass(frozen=True)
class SplitResult:
    train: pd.DataFrame
    test: pd.DataFrame
    meta: dict[str, Any]


def sample_rows(
    df: pd.DataFrame, n: int | None, sampling: SamplingConfig, target: str, seed_offset: int
) -> pd.DataFrame:
    """Keep `n` rows by the configured strategy; row order is preserved (matters for time series)."""
    if n is None or n >= len(df):
        return df
    seed = sampling.seed + seed_offset
    if sampling.strategy == "head":
        return df.iloc[:n]
    if sampling.strategy == "random":
        rng = np.random.default_rng(seed)
        return df.iloc[np.sort(rng.choice(len(df), size=n, replace=False))]
    from sklearn.model_selection import train_test_split

    part = "train" if seed_offset == 0 else "test"
    check_stratifiable(df[target], n, f"stratified sampling of {n} {part} rows", f"raise sampling.{part}_rows")
    kept, _ = train_test_split(np.arange(len(df)), train_size=n, stratify=df[target], random_state=seed)
    return df.iloc[np.sort(kept)]


def check_stratifiable(labels: pd.Series, kept: int, what: str, fix: str) -> None:
    """A stratified draw keeping `kept` of these rows needs 2+ rows of every class and a class's room on both
    sides; sklearn's own errors name neither the class nor the YAML field, so say it here."""
    counts = labels.value_counts(dropna=True)
    lonely = [f"{label!r}" for label, count in counts.items() if count < 2]
    if lonely:
        raise ValueError(
            f"target {labels.name!r}: class {', '.join(lonely[:10])} has a single row, but {what} needs at least 2 "
            "rows of every class. Fix: add rows of that class, or merge or drop it in the data (training needs at "
            "least cv_folds rows of each class anyway)."
        )
    if min(kept, len(labels) - kept) < len(counts):
        raise ValueError(
            f"target {labels.name!r}: {what} leaves {min(kept, len(labels) - kept)} row(s) on one side for "
            f"{len(counts)} classes; each side needs one row per class. Fix: {fix} in the experiment YAML."
        )


def split_dataset(df: pd.DataFrame, config: ExperimentConfig) -> SplitResult:
    """Stratified split for classification, chronological for forecasting, shuffled for regression."""
    from sklearn.model_selection import train_test_split

    # Excluded columns leave here, once: every consumer of the splits (training, the preprocessing
    # engine, the served schema, external trainers) then sees the same features.
    df = df.drop(columns=config.exclude_columns)
    rows_total = len(df)
    missing_cells = int(df.isna().to_numpy().sum())
    df = df[df[config.target].notna()].reset_index(drop=True)
    dropped = rows_total - len(df)
    test_size = config.split.test_size
    if config.task == "forecasting":
        assert config.time_column is not None
        df = df.sort_values(config.time_column, kind="stable").reset_index(drop=True)
        cut = len(df) - max(1, round(len(df) * test_size))
        train, test = df.iloc[:cut], df.iloc[cut:]
        method = "chronological"
    else:
        stratify = df[config.target] if config.task == "classification" else None
        if stratify is not None:
            test_rows = int(np.ceil(test_size * len(df)))  # sklearn's rounding of a fractional test_size
            check_stratifiable(
                stratify,
                len(df) - test_rows,
                f"the stratified split (split.test_size {test_size})",
                "change split.test_size",
            )
        idx_train, idx_test = train_test_split(
            np.arange(len(df)), test_size=test_size, random_state=config.split.seed, stratify=stratify
        )
        # Sorted positions keep the source order inside each split: stable bytes, readable files.
        train, test = df.iloc[np.sort(idx_train)], df.iloc[np.sort(idx_test)]
        method = "stratified" if stratify is not None else "shuffled"

    train_after = sample_rows(train, config.sampling.train_rows, config.sampling, config.target, 0)
    test_after = sample_rows(test, config.sampling.test_rows, config.sampling, config.target, 1)
    meta = {
        "config_hash": config.config_hash,
        "split_method": method,
        "test_size": test_size,
        "split_seed": config.split.seed,
        "rows_total": rows_total,
        "rows_dropped_missing_target": dropped,
        "missing_cells": missing_cells,
        "excluded_columns": list(config.exclude_columns),
        "train_rows_before": len(train),
        "test_rows_before": len(test),
        "train_rows_after": len(train_after),
        "test_rows_after": len(test_after),
        "strategy": config.sampling.strategy,
        "seed": config.sampling.seed,
    }
    if config.task == "classification":
        # Shares before sampling: the split's stratification, whatever sampling does afterwards.
        for name, part in (("train", train), ("test", test)):
            shares = part[config.target].value_counts(normalize=True).sort_index()
            meta[f"{name}_class_shares"] = {str(k): round(float(v), 6) for k, v in shares.items()}
    return SplitResult(train_after.reset_index(drop=True), test_after.reset_index(drop=True), meta)
