"""The fit: every whole-data statistic the operators use, accumulated chunk by chunk and mergeable.

Pass 1 (StatisticsAccumulator) fixes imputation values, clip bounds, category sets and which
features to derive; pass 2 (GramAccumulator, finish_selection) fixes feature selection and scaling.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from mlgraph.core.hashing import sha256_text
from mlgraph.preprocessing.normalized import Roles, column_values, fill_null, rows_with_target
from mlgraph.preprocessing.options import EngineInputError, EngineOptions

OTHER = "__other__"  # the one-hot level of the categories beyond max_categories


@dataclass
class Moments:
    """Count, mean, central moments M2/M3, min, max and missing count of one column; mergeable."""

    n: int = 0
    nulls: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    @classmethod
    def of(cls, x: np.ndarray, third: bool = True) -> Moments:
        nan = np.isnan(x)
        nulls = int(np.count_nonzero(nan))
        values = x[~nan] if nulls else x
        n = int(values.size)
        if n == 0:
            return cls(nulls=nulls)
        mean = float(values.mean())
        d = values - mean
        d2 = d * d
        # Plain reductions, not np.dot: OpenBLAS threads spin on a busy machine (5 ms for 100k values).
        m2 = float(d2.sum())
        m3 = float(np.multiply(d2, d, out=d2).sum()) if third else 0.0
        return cls(n, nulls, mean, m2, m3, float(values.min()), float(values.max()))

    def merge(self, other: Moments) -> Moments:
        if other.n == 0:
            return Moments(self.n, self.nulls + other.nulls, self.mean, self.m2, self.m3, self.min, self.max)
        if self.n == 0:
            return Moments(other.n, self.nulls + other.nulls, other.mean, other.m2, other.m3, other.min, other.max)
        na, nb = self.n, other.n
        n = na + nb
        delta = other.mean - self.mean
        mean = self.mean + delta * nb / n
        m2 = self.m2 + other.m2 + delta * delta * na * nb / n
        m3 = (
            self.m3
            + other.m3
            + delta**3 * na * nb * (na - nb) / (n * n)
            + 3.0 * delta * (na * other.m2 - nb * self.m2) / n
        )
        return Moments(n, self.nulls + other.nulls, mean, m2, m3, min(self.min, other.min), max(self.max, other.max))

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else 0.0

    @property
    def skew(self) -> float:
        if self.n == 0 or self.m2 <= 0:
            return 0.0
        return (self.m3 / self.n) / (self.m2 / self.n) ** 1.5


class GramAccumulator:
    """Sum and cross-products of k features around a fixed shift (the first row's values).

    A fixed shift keeps the sums small (no cancellation) and is the same for every chunking,
    so streaming and batch differ only in summation order.
    """

    def __init__(self, k: int):
        self.n = 0
        self.shift: np.ndarray | None = None
        self.sum = np.zeros(k)
        self.cross = np.zeros((k, k))

    def add(self, columns: list[np.ndarray]) -> None:
        rows = columns[0].shape[0] if columns else 0
        if rows == 0:
            return
        if self.shift is None:
            self.shift = np.array([c[0] for c in columns], dtype=np.float64)
        matrix = np.empty((rows, len(columns)), order="F")
        for j, c in enumerate(columns):
            np.subtract(c, self.shift[j], out=matrix[:, j])
        self.sum += matrix.sum(axis=0)
        self.cross += matrix.T @ matrix
        self.n += rows

    def merge(self, other: GramAccumulator) -> None:
        """Fold in another accumulator that used the same shift (chunks of the same run)."""
        if other.n == 0:
            return
        if self.shift is None:
            self.shift = other.shift
        self.sum += other.sum
        self.cross += other.cross
        self.n += other.n

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean vector and centered cross-product matrix."""
        n = max(self.n, 1)
        shift = self.shift if self.shift is not None else np.zeros_like(self.sum)
        return shift + self.sum / n, self.cross - np.outer(self.sum, self.sum) / n


def _is_constant(var: float, mean: float) -> bool:
    # Chunked sums leave ~1e-30 of variance on a constant column; compare with its scale.
    return var <= (1e-12 * max(1.0, abs(mean))) ** 2


@dataclass
class Fit:
    """Everything the operators need, computed from the whole data; JSON round-trips exactly."""

    options: dict[str, Any]
    rows: int = 0  # rows with a target
    rows_dropped_missing_target: int = 0
    numeric: list[str] = field(default_factory=list)  # source numeric columns (booleans as 0/1)
    booleans: list[str] = field(default_factory=list)
    impute: dict[str, float] = field(default_factory=dict)
    clip_low: dict[str, float] = field(default_factory=dict)
    clip_high: dict[str, float] = field(default_factory=dict)
    raw_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    categorical: list[str] = field(default_factory=list)  # in source order (JSON sorts dict keys)
    categories: dict[str, list[str]] = field(default_factory=dict)  # kept levels, sorted
    category_fill: dict[str, str] = field(default_factory=dict)  # the mode, for missing values
    category_other: dict[str, bool] = field(default_factory=dict)  # rarer levels exist → `__other__`
    dropped_columns: dict[str, str] = field(default_factory=dict)  # column → why
    log_columns: list[str] = field(default_factory=list)
    ratio_pairs: list[list[str]] = field(default_factory=list)
    time_column: str | None = None
    time_features: list[str] = field(default_factory=list)
    target: str = ""
    target_type: str = ""
    features: list[str] = field(default_factory=list)  # numeric features before selection
    # Set from the fit pass:
    selected: list[str] = field(default_factory=list)
    dropped_constant: list[str] = field(default_factory=list)
    dropped_correlated: list[dict[str, Any]] = field(default_factory=list)
    scale_mean: dict[str, float] = field(default_factory=dict)
    scale_std: dict[str, float] = field(default_factory=dict)
    onehot_columns: list[str] = field(default_factory=list)
    output_columns: list[str] = field(default_factory=list)

    @property
    def engine_options(self) -> EngineOptions:
        return EngineOptions.from_json(self.options)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fit:
        return cls(**data)

    @property
    def fit_id(self) -> str:
        return sha256_text(json.dumps(self.to_json(), sort_keys=True))

    @property
    def target_arrow_type(self) -> pa.DataType:
        return pa.type_for_alias(self.target_type)

    @property
    def roles(self) -> Roles:
        return Roles(tuple(self.numeric), tuple(self.booleans), tuple(self.categorical), self.target, self.time_column)


class StatisticsAccumulator:
    """Pass 1: per-chunk statistics of the normalized columns, merged in source order."""

    def __init__(self, roles: Roles, options: EngineOptions, target_type: pa.DataType, where: Any):
        self.roles = roles
        self.options = options
        self.target_type = target_type
        self.where = where
        self.moments = {c: Moments() for c in roles.numeric}
        self.counts: dict[str, dict[str, int]] = {c: {} for c in roles.categorical}
        self.rows = 0
        self.dropped = 0
        self.rows_seen = 0

    def add(self, chunk: pa.Table, row_offset: int = 0) -> None:
        self.rows_seen += chunk.num_rows
        chunk, dropped = rows_with_target(chunk, self.roles.target)
        self.dropped += dropped
        self.rows += chunk.num_rows
        if self.roles.time:
            nulls = chunk[self.roles.time].null_count
            if nulls:
                raise EngineInputError(
                    f"{self.where}: time column {self.roles.time!r} has {nulls} missing value(s) between data rows "
                    f"{row_offset + 1} and {row_offset + self.rows_seen}. Fix: fill or drop those rows."
                )
        booleans = set(self.roles.booleans)
        for c in self.roles.numeric:
            self.moments[c] = self.moments[c].merge(Moments.of(column_values(chunk[c]), third=c not in booleans))
        for c in self.roles.categorical:
            counts = self.counts[c]
            for arr in chunk[c].chunks:
                dictionary = arr.dictionary.to_pylist()
                indices = fill_null(arr.indices, len(dictionary)).to_numpy()
                tally = np.bincount(indices, minlength=len(dictionary) + 1)
                for value, count in zip(dictionary, tally[:-1].tolist(), strict=True):
                    if count:
                        counts[value] = counts.get(value, 0) + count

    def merge(self, other: StatisticsAccumulator) -> None:
        self.rows_seen += other.rows_seen
        self.rows += other.rows
        self.dropped += other.dropped
        for c in self.roles.numeric:
            self.moments[c] = self.moments[c].merge(other.moments[c])
        for c in self.roles.categorical:
            counts = self.counts[c]
            for k, v in other.counts[c].items():
                counts[k] = counts.get(k, 0) + v

    def finish(self) -> Fit:
        o = self.options
        if self.rows_seen == 0:
            raise EngineInputError(
                f"{self.where}: no data rows. Fix: the file needs at least one row below the header."
            )
        if self.rows == 0:
            raise EngineInputError(
                f"{self.where}: every row's target {o.target!r} is missing. Fix: fill the target column or choose "
                "another target."
            )
        fit = Fit(
            options=o.to_json(),
            rows=self.rows,
            rows_dropped_missing_target=self.dropped,
            target=o.target,
            target_type=str(self.target_type),
        )
        for c in self.roles.numeric:
            m = self.moments[c]
            if m.n == 0:
                fit.dropped_columns[c] = "no values in rows with a target"
                continue
            fit.numeric.append(c)
            if c in self.roles.booleans:
                fit.booleans.append(c)
            std = m.std
            fit.impute[c] = m.mean
            fit.clip_low[c] = m.mean - o.outlier_z * std
            fit.clip_high[c] = m.mean + o.outlier_z * std
            fit.raw_stats[c] = {
                "n": m.n,
                "missing": m.nulls,
                "mean": m.mean,
                "std": std,
                "skew": m.skew,
                "min": m.min,
                "max": m.max,
            }
        for c in self.roles.categorical:
            counts = self.counts[c]
            if not counts:
                fit.dropped_columns[c] = "no values in rows with a target"
                continue
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            fit.categorical.append(c)
            fit.categories[c] = sorted(k for k, _ in ranked[: o.max_categories])
            fit.category_fill[c] = ranked[0][0]
            fit.category_other[c] = len(ranked) > o.max_categories
        plan_features(fit, o)
        return fit


def plan_features(fit: Fit, o: EngineOptions) -> None:
    continuous = [c for c in fit.numeric if c not in fit.booleans]
    non_negative = [c for c in continuous if fit.raw_stats[c]["min"] >= 0]
    # Raw values are ≥ 0 here, and clipping/imputation keep them there: log1p and 1 + b are safe.
    fit.log_columns = [c for c in non_negative if fit.raw_stats[c]["skew"] > o.skew_threshold]
    ratio_base = non_negative[: o.max_ratio_columns]
    fit.ratio_pairs = [[a, b] for i, a in enumerate(ratio_base) for b in ratio_base[i + 1 :]]
    if o.time_column:
        t = o.time_column
        fit.time_column = t
        fit.time_features = [
            f"{t}_{s}" for s in ("hour", "dow", "month", "hour_sin", "hour_cos", "dow_sin", "dow_cos", "days")
        ]
    fit.features = (
        list(fit.numeric)
        + [f"log1p_{c}" for c in fit.log_columns]
        + [f"{a}_per_{b}" for a, b in fit.ratio_pairs]
        + list(fit.time_features)
    )


def finish_selection(fit: Fit, gram: GramAccumulator) -> None:
    """From the fit pass's cross-products: drop constant and collinear features, keep scaling stats."""
    o = fit.engine_options
    mean, cross = gram.finish()
    var = np.diag(cross) / max(gram.n, 1)
    kept: list[int] = []
    fit.selected, fit.dropped_constant, fit.dropped_correlated = [], [], []
    fit.scale_mean, fit.scale_std = {}, {}
    for i, name in enumerate(fit.features):
        if _is_constant(float(var[i]), float(mean[i])):
            fit.dropped_constant.append(name)
            continue
        partner = None
        for j in kept:
            r = float(cross[i, j] / math.sqrt(cross[i, i] * cross[j, j]))
            if abs(r) > o.correlation_threshold:
                partner = (fit.features[j], r)
                break
        if partner:
            fit.dropped_correlated.append({"feature": name, "correlated_with": partner[0], "r": partner[1]})
            continue
        kept.append(i)
        fit.selected.append(name)
        fit.scale_mean[name] = float(mean[i])
        fit.scale_std[name] = math.sqrt(float(var[i]))
    fit.onehot_columns = [
        f"{c}={v}" for c in fit.categorical for v in (*fit.categories[c], *((OTHER,) if fit.category_other[c] else ()))
    ]
    fit.output_columns = [*fit.selected, *fit.onehot_columns, fit.target]
