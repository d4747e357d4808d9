"""The four operators (preprocess, feature_engineering, feature_selection, encode_scale) on the working form."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlgraph.preprocessing.fitting import Fit
from mlgraph.preprocessing.normalized import (
    column_values,
    fill_null,
    normalize_table,
    operator_pool,
    rows_with_target,
)

OPERATORS = ("preprocess", "feature_engineering", "feature_selection", "encode_scale")


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
        position = pc.index_in(arr.dictionary, value_set=value_set, memory_pool=operator_pool())
        lookup = np.append(fill_null(position, other).to_numpy().astype(np.int32), np.int32(fill))
        parts.append(lookup[fill_null(arr.indices, len(arr.dictionary)).to_numpy()])
    if not parts:
        return np.zeros(0, np.int32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def preprocess(chunk: pa.Table, fit: Fit) -> Block:
    """Cleaning: drop rows without a target, impute missing values, clip outliers to mean ± z·std."""
    task = fit.options["task"]
    if any(not pa.types.is_float64(chunk.schema.field(c).type) for c in fit.numeric) or any(
        not pa.types.is_dictionary(chunk.schema.field(c).type) for c in fit.categorical
    ):
        chunk = normalize_table(chunk, fit.roles, task)
    chunk, _ = rows_with_target(chunk, fit.target)
    numeric: dict[str, np.ndarray] = {}
    for c in fit.numeric:
        x = column_values(chunk[c])
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
        target = pc.cast(target, fit.target_arrow_type, memory_pool=operator_pool())
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
    arrays.append(target.combine_chunks(memory_pool=operator_pool()) if isinstance(target, pa.ChunkedArray) else target)
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


def feature_columns(block: Block, fit: Fit) -> list[np.ndarray]:
    return [block.numeric[name] for name in fit.features]
