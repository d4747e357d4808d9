"""Classification targets: the classes, their encoding as indices, and the selection metric they call for.

A target with two classes is binary: index 1 is the larger class (the positive label), and models score
its probability. Three or more classes are multiclass: index c is the c-th class in sorted order, models
give one probability per class and the label is the most probable one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlgraph.core import metrics as core_metrics
from mlgraph.core.experiment import ExperimentConfig


def plain(value: Any) -> Any:
    """numpy scalars → plain Python (JSON, metric names and error messages see 2, not np.int64(2))."""
    return value.item() if hasattr(value, "item") else value


def target_classes(values: pd.Series, where: str) -> tuple[Any, ...]:
    """The sorted classes of a classification target; two or more, or a ValueError saying what to change."""
    classes = tuple(plain(c) for c in sorted(pd.unique(values.dropna())))
    if len(classes) < 2:
        raise ValueError(
            f"{where}: column {values.name!r}: classification needs at least two target classes, found "
            f"{len(classes)} ({list(classes)}). Fix: point 'target' in the experiment YAML at a column with two or "
            "more classes, or keep more rows (sampling.train_rows, sampling.strategy: stratified)."
        )
    return classes


def encode_labels(values: pd.Series, classes: tuple[Any, ...], where: str) -> np.ndarray:
    """Class indices of `values` in `classes` (binary: 1 = the larger class, anything else 0)."""
    if len(classes) == 2:
        return (values.to_numpy() == classes[1]).astype(np.int64)
    codes = pd.Categorical(values, categories=list(classes)).codes.astype(np.int64)
    if (codes < 0).any():
        unknown = sorted({str(v) for v in values[codes < 0]})
        raise ValueError(
            f"{where}: column {values.name!r}: value(s) {unknown[:10]} are not among the training classes "
            f"{list(classes)[:20]}. Fix: use sampling.strategy: stratified (every class in both splits) or drop "
            "the rows of classes too rare to split."
        )
    return codes


def class_labels(values: pd.Series, where: str, cv_folds: int | None = None) -> tuple[np.ndarray, tuple[Any, ...]]:
    """(class indices, classes); with `cv_folds`, every class must have at least that many rows."""
    classes = target_classes(values, where)
    codes = encode_labels(values, classes, where)
    if cv_folds is not None:
        counts = np.bincount(codes, minlength=len(classes))
        rare = np.flatnonzero(counts < cv_folds)
        if rare.size:
            named = ", ".join(f"{classes[c]!r} ({int(counts[c])} row{'' if counts[c] == 1 else 's'})" for c in rare)
            lowest = int(counts.min())
            lower = f"lower 'cv_folds' in the experiment YAML to {lowest} or less, or " if lowest >= 2 else ""
            one = rare.size == 1
            raise ValueError(
                f"{where}: column {values.name!r}: {'class' if one else 'classes'} {named} {'has' if one else 'have'} "
                f"fewer training rows than cv_folds={cv_folds}, so stratified cross-validation cannot put "
                f"{'it' if one else 'them'} in every fold. Fix: {lower}add rows of {'that class' if one else 'those classes'} "
                f"(or merge or drop {'it' if one else 'them'} in the data)."
            )
    return codes, classes


def binary_labels(values: pd.Series, where: str) -> tuple[np.ndarray, Any]:
    """0/1 labels with 1 = the larger of exactly two classes."""
    classes = target_classes(values, where)
    if len(classes) != 2:
        raise ValueError(
            f"{where}: column {values.name!r}: expected a binary target, found {len(classes)} classes "
            f"({list(classes)[:10]}). Fix: binarise the target column or use a multiclass-aware step."
        )
    return encode_labels(values, classes, where), classes[1]


def probability_columns(classes: tuple[Any, ...]) -> list[str]:
    """Prediction-file columns of a multiclass model's class probabilities, in class-index order."""
    return [f"proba[{label}]" for label in classes]


def selection_metric(config: ExperimentConfig, n_classes: int | None) -> str:
    """The metric that picks the champion for this target, checked against the metrics training computes."""
    metric = config.selection_metric_for(n_classes)
    allowed = core_metrics.target_metrics(config.task, n_classes)
    if config.task == "classification" and metric not in allowed:
        kind = (
            f"a {n_classes}-class target" if core_metrics.is_multiclass(config.task, n_classes) else "a binary target"
        )
        raise ValueError(
            f"experiment {config.name!r}: selection.metric {metric!r} is not computed for {kind}. Fix: set "
            f"selection.metric in the experiment YAML to one of {list(allowed)}, or remove it (default "
            f"{core_metrics.default_selection_metric(config.task, n_classes)!r})."
        )
    return metric


def class_count(frame: pd.DataFrame, config: ExperimentConfig) -> int | None:
    """How many classes a classification target shows in `frame` (None for other tasks or no target column);
    never raises, so a step can name its selection metric before training reports what is wrong."""
    if config.task != "classification" or config.target not in frame.columns:
        return None
    return int(frame[config.target].nunique(dropna=True))
