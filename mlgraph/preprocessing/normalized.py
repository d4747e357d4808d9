"""The engine's working form ("normalized") and the Arrow memory pool the operators allocate from.

Working form: numeric and boolean columns as float64 with NaN for missing (no validity bitmap, so
numpy reads them without a copy), text as dictionary<int32, string>, the time column as
timestamp[s], the target as given (float64 for regression and forecasting).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlgraph.preprocessing.options import EngineInputError, EngineOptions

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


def operator_pool() -> pa.MemoryPool | None:
    """The pool set by the innermost `arrow_pool` (None: Arrow's default)."""
    return _POOL.get()


def fill_null(values: pa.Array, fill: Any) -> pa.Array:
    # A typed scalar: with a bare Python float pc.fill_null takes a ~500x slower path. coalesce is
    # fill_null's kernel, and unlike the fill_null wrapper it takes a memory pool.
    scalar = fill if isinstance(fill, pa.Scalar) else pa.scalar(fill, values.type)
    return pc.coalesce(values, scalar, memory_pool=_POOL.get())


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
            if (
                options.column_types.get(f.name) == "categorical"
                or pa.types.is_string(t)
                or pa.types.is_large_string(t)
            ):
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


def float_values(column: pa.Array) -> pa.Array:
    """float64 without a validity bitmap: NaN marks missing, so numpy reads it without a copy."""
    if not pa.types.is_float64(column.type):
        column = pc.cast(column, pa.float64(), memory_pool=_POOL.get())
    if column.null_count:
        column = fill_null(column, _NAN)
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
        arrays.append(float_values(batch.column(name)))
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


def normalize_table(table: pa.Table, roles: Roles, task: str) -> pa.Table:
    batches = [normalize(b, roles, task) for b in table.to_batches()]
    if not batches:
        batches = [normalize(pa.RecordBatch.from_pylist([], schema=table.schema), roles, task)]
    return pa.Table.from_batches(batches)


def column_values(column: pa.ChunkedArray) -> np.ndarray:
    """float64 values of a normalized numeric column (one copy at most, to join chunks)."""
    if column.num_chunks == 1:
        return column.chunk(0).to_numpy()
    return column.to_numpy()


def rows_with_target(table: pa.Table, target: str) -> tuple[pa.Table, int]:
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
