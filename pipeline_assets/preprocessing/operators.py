"""The four operators and the whole-data statistics they use (the fit), on the engine's working form.

Working form ("normalized"): numeric and boolean columns as float64 with NaN for missing (no
validity bitmap, so numpy reads them without a copy), text as dictionary<int32, string>, the
time column as timestamp[s], the target as given (float64 for regression and forecasting).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline_assets.preprocessing.reading import EngineInputError, EngineOptions

OPERATORS = ("preprocess", "feature_engineering", "feature_selection", "encode_scale")
OTHER = "__other__"
_NAN = pa.scalar(math.nan, pa.float64())
# The Arrow pool the operators allocate from: the engine points it at a proxy pool per chunk so
# that it counts the operators' own allocations, not those of a reader running in another thread.
_POOL: contextvars.ContextVar[pa.MemoryPool | None] = contextvars.ContextVar("mlgraph_arrow_pool", default=None)


@contextlib.contextmanager
def arrow_pool(pool: pa.MemoryPool | None) -> Iterator[None]:
    token = _POOL.set(pool)
    try:
        yield
    finally:
        _POOL.reset(token)


def _fill_null(values: pa.Array, fill: Any) -> pa.Array:
    # A typed scalar: with a bare Python float pc.fill_null takes a ~500x slower path. coalesce is
    # fill_null's kernel, and unlike the fill_null wrapper it takes a memory pool.
    scalar = fill if isinstance(fill, pa.Scalar) else pa.scalar(fill, values.type)
    return pc.coalesce(values, scalar, memory_pool=_POOL.get())


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Roles:
    """Which source column plays which part; fixed from the schema for the whole run."""

    numeric: tuple[str, ...]  # numbers and booleans, as float64 with NaN for missing
    booleans: tuple[str, ...]
    categorical: tuple[str, ...]  # dictionary<int32, string>
    target: str
    time: str | None

    @classmethod
    def of(cls, schema: pa.Schema, options: EngineOptions, where: Any) -> Roles:
        numeric, booleans, categorical = [], [], []
        for f in schema:
            if f.name in {options.target, options.time_column}:
                continue
            t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
            if options.column_types.get(f.name) == "categorical" or pa.types.is_string(t) or pa.types.is_large_string(t):
                categorical.append(f.name)
            elif pa.types.is_boolean(t):
                numeric.append(f.name)
                booleans.append(f.name)
            elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t):
                numeric.append(f.name)
            elif pa.types.is_timestamp(t) or pa.types.is_date(t):
                continue  # a second timestamp has no declared role; calendar features need one
            else:
                raise EngineInputError(
                    f"{where}: column {f.name!r} has type {f.type}, which the engine cannot use. "
                    "Fix: drop the column or convert it to a number, text or timestamp."
                )
        return cls(tuple(numeric), tuple(booleans), tuple(categorical), options.target, options.time_column)


def _float_values(column: pa.Array) -> pa.Array:
    """float64 without a validity bitmap: NaN marks missing, so numpy reads it without a copy."""
    if not pa.types.is_float64(column.type):
        column = pc.cast(column, pa.float64(), memory_pool=_POOL.get())
    if column.null_count:
        column = _fill_null(column, _NAN)
    return column


def _dictionary_values(column: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(column.type):
        if pa.types.is_string(column.type.value_type):
            return column
        column = pc.cast(column, column.type.value_type, memory_pool=_POOL.get())
    if not pa.types.is_string(column.type):
        column = pc.cast(column, pa.string(), memory_pool=_POOL.get())
    return pc.dictionary_encode(column, memory_pool=_POOL.get())


def normalize(batch: pa.RecordBatch, roles: Roles, task: str) -> pa.RecordBatch:
    """A source batch in the engine's working form (idempotent: normalized input passes through)."""
    arrays, names = [], []
    for name in roles.numeric:
        arrays.append(_float_values(batch.column(name)))
        names.append(name)
    for name in roles.categorical:
        arrays.append(_dictionary_values(batch.column(name)))
        names.append(name)
    if roles.time:
        column = batch.column(roles.time)
        if not pa.types.is_timestamp(column.type) or column.type.unit != "s" or column.type.tz is not None:
            column = pc.cast(column, pa.timestamp("s"), memory_pool=_POOL.get())
        arrays.append(column)
        names.append(roles.time)
    target = batch.column(roles.target)
    if task != "classification" and not pa.types.is_float64(target.type):
        target = pc.cast(target, pa.float64(), memory_pool=_POOL.get())
    arrays.append(target)
    names.append(roles.target)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _normalize_table(table: pa.Table, roles: Roles, task: str) -> pa.Table:
    batches = [normalize(b, roles, task) for b in table.to_batches()]
    if not batches:
        batches = [normalize(pa.RecordBatch.from_pylist([], schema=table.schema), roles, task)]
    return pa.Table.from_batches(batches)


def _numpy(column: pa.ChunkedArray) -> np.ndarray:
    """float64 values of a normalized numeric column (one copy at most, to join chunks)."""
    if column.num_chunks == 1:
        return column.chunk(0).to_numpy()
    return column.to_numpy()


def _with_target(table: pa.Table, target: str) -> tuple[pa.Table, int]:
    """Rows whose target is present (NaN counts as missing); how many were dropped."""
    column = table[target]
    pool = _POOL.get()
    valid = pc.is_valid(column, memory_pool=pool)
    if pa.types.is_floating(column.type):
        valid = pc.and_(valid, pc.invert(pc.is_nan(column, memory_pool=pool), memory_pool=pool), memory_pool=pool)
    kept = pc.sum(valid).as_py() or 0
    if kept == table.num_rows:
        return table, 0
    return pc.filter(table, valid, memory_pool=pool), table.num_rows - kept


# ---------------------------------------------------------------------------------------------
# Statistics


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


# ---------------------------------------------------------------------------------------------
# The fit: every whole-data statistic the operators use


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
        return _sha256_bytes(json.dumps(self.to_json(), sort_keys=True).encode("utf-8"))

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
        chunk, dropped = _with_target(chunk, self.roles.target)
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
            self.moments[c] = self.moments[c].merge(Moments.of(_numpy(chunk[c]), third=c not in booleans))
        for c in self.roles.categorical:
            counts = self.counts[c]
            for arr in chunk[c].chunks:
                dictionary = arr.dictionary.to_pylist()
                indices = _fill_null(arr.indices, len(dictionary)).to_numpy()
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
            raise EngineInputError(f"{self.where}: no data rows. Fix: the file needs at least one row below the header.")
        if self.rows == 0:
            raise EngineInputError(
                f"{self.where}: every row's target {o.target!r} is missing. Fix: fill the target column or choose "
                "another target."
            )
        fit = Fit(options=o.to_json(), rows=self.rows, rows_dropped_missing_target=self.dropped, target=o.target,
                  target_type=str(self.target_type))
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
            fit.raw_stats[c] = {"n": m.n, "missing": m.nulls, "mean": m.mean, "std": std, "skew": m.skew,
                                "min": m.min, "max": m.max}
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
        _plan_features(fit, o)
        return fit


def _plan_features(fit: Fit, o: EngineOptions) -> None:
    continuous = [c for c in fit.numeric if c not in fit.booleans]
    non_negative = [c for c in continuous if fit.raw_stats[c]["min"] >= 0]
    # Raw values are ≥ 0 here, and clipping/imputation keep them there: log1p and 1 + b are safe.
    fit.log_columns = [c for c in non_negative if fit.raw_stats[c]["skew"] > o.skew_threshold]
    ratio_base = non_negative[: o.max_ratio_columns]
    fit.ratio_pairs = [[a, b] for i, a in enumerate(ratio_base) for b in ratio_base[i + 1:]]
    if o.time_column:
        t = o.time_column
        fit.time_column = t
        fit.time_features = [f"{t}_{s}" for s in ("hour", "dow", "month", "hour_sin", "hour_cos", "dow_sin", "dow_cos", "days")]
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


# ---------------------------------------------------------------------------------------------
# The four operators


@dataclass
class Block:
    """A chunk between operators: float64 numerics, category codes, timestamps, the target."""

    numeric: dict[str, np.ndarray]
    codes: dict[str, np.ndarray]
    time: np.ndarray | None
    target: pa.ChunkedArray
    rows: int


def _category_codes(column: pa.ChunkedArray, fit: Fit, name: str) -> np.ndarray:
    """Codes into the kept levels: missing → the mode, rarer levels → `__other__`, unseen → -1."""
    levels = fit.categories[name]
    other = len(levels) if fit.category_other[name] else -1
    fill = levels.index(fit.category_fill[name])  # the mode is always a kept level
    value_set = pa.array(levels, pa.string())
    parts = []
    for arr in column.chunks:
        position = pc.index_in(arr.dictionary, value_set=value_set, memory_pool=_POOL.get())
        lookup = np.append(_fill_null(position, other).to_numpy().astype(np.int32), np.int32(fill))
        parts.append(lookup[_fill_null(arr.indices, len(arr.dictionary)).to_numpy()])
    if not parts:
        return np.zeros(0, np.int32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def preprocess(chunk: pa.Table, fit: Fit) -> Block:
    """Cleaning: drop rows without a target, impute missing values, clip outliers to mean ± z·std."""
    task = fit.options["task"]
    if any(not pa.types.is_float64(chunk.schema.field(c).type) for c in fit.numeric) or any(
        not pa.types.is_dictionary(chunk.schema.field(c).type) for c in fit.categorical
    ):
        chunk = _normalize_table(chunk, fit.roles, task)
    chunk, _ = _with_target(chunk, fit.target)
    numeric: dict[str, np.ndarray] = {}
    for c in fit.numeric:
        x = _numpy(chunk[c])
        if fit.raw_stats[c]["missing"] or np.isnan(x).any():
            x = np.where(np.isnan(x), fit.impute[c], x)
            np.clip(x, fit.clip_low[c], fit.clip_high[c], out=x)
        else:
            x = np.clip(x, fit.clip_low[c], fit.clip_high[c])
        numeric[c] = x
    codes = {c: _category_codes(chunk[c], fit, c) for c in fit.categorical}
    time_values = None
    if fit.time_column:
        time_values = chunk[fit.time_column].to_numpy().astype("datetime64[s]")
    target = chunk[fit.target]
    if target.type != fit.target_arrow_type:
        target = pc.cast(target, fit.target_arrow_type, memory_pool=_POOL.get())
    return Block(numeric, codes, time_values, target, chunk.num_rows)


def feature_engineering(block: Block, fit: Fit) -> Block:
    """Derived features: log1p of skewed non-negative columns, ratios a/(1+b), calendar features."""
    out = dict(block.numeric)
    for c in fit.log_columns:
        out[f"log1p_{c}"] = np.log1p(block.numeric[c])
    for a, b in fit.ratio_pairs:
        out[f"{a}_per_{b}"] = block.numeric[a] / (1.0 + block.numeric[b])
    if fit.time_column and block.time is not None:
        t = fit.time_column
        seconds = block.time.astype(np.int64)
        days = np.floor_divide(seconds, 86_400)
        hour = (np.floor_divide(seconds, 3_600) % 24).astype(np.float64)
        dow = ((days + 3) % 7).astype(np.float64)  # 1970-01-01 was a Thursday; Monday is 0
        month = (block.time.astype("datetime64[M]").astype(np.int64) % 12 + 1).astype(np.float64)
        out[f"{t}_hour"] = hour
        out[f"{t}_dow"] = dow
        out[f"{t}_month"] = month
        out[f"{t}_hour_sin"] = np.sin(2 * np.pi * hour / 24)
        out[f"{t}_hour_cos"] = np.cos(2 * np.pi * hour / 24)
        out[f"{t}_dow_sin"] = np.sin(2 * np.pi * dow / 7)
        out[f"{t}_dow_cos"] = np.cos(2 * np.pi * dow / 7)
        out[f"{t}_days"] = seconds / 86_400.0
    return Block({name: out[name] for name in fit.features}, block.codes, block.time, block.target, block.rows)


def feature_selection(block: Block, fit: Fit) -> Block:
    """Keep the features that survived multicollinearity removal (|r| above the threshold)."""
    return Block({name: block.numeric[name] for name in fit.selected}, block.codes, None, block.target, block.rows)


def encode_scale(block: Block, fit: Fit) -> pa.Table:
    """Standard-scale the kept numerics, one-hot encode the categoricals; target last."""
    arrays: list[pa.Array] = []
    for name in fit.selected:
        x = block.numeric[name] - fit.scale_mean[name]
        x /= fit.scale_std[name]
        arrays.append(pa.array(x))
    for c in fit.categorical:
        levels, codes = fit.categories[c], block.codes[c]
        for j in range(len(levels) + (1 if fit.category_other[c] else 0)):
            arrays.append(pa.array((codes == j).view(np.uint8)))
    target = block.target
    arrays.append(target.combine_chunks(memory_pool=_POOL.get()) if isinstance(target, pa.ChunkedArray) else target)
    return pa.Table.from_arrays(arrays, names=fit.output_columns)


def transform_table(table: pa.Table, fit: Fit) -> pa.Table:
    """All four operators on one in-memory table with a given fit (e.g. the test split)."""
    return encode_scale(feature_selection(feature_engineering(preprocess(table, fit), fit), fit), fit)


def output_schema(fit: Fit) -> pa.Schema:
    return pa.schema(
        [pa.field(n, pa.float64()) for n in fit.selected]
        + [pa.field(n, pa.uint8()) for n in fit.onehot_columns]
        + [pa.field(fit.target, fit.target_arrow_type)]
    )


def _feature_columns(block: Block, fit: Fit) -> list[np.ndarray]:
    return [block.numeric[name] for name in fit.features]


