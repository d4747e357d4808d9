"""Split quality measures, shared by the split check and the tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlgraph.core.experiment import ExperimentConfig

ID_MIN_ROWS = 20  # below this a strictly increasing column is as likely chance as a row id
SPLIT_SHARE_TOLERANCE = 0.01
CLASS_RATIO_TOLERANCE = 0.02


@dataclass(frozen=True)
class SplitReport:
    passed: bool
    metadata: dict[str, Any]


def split_report(meta: dict[str, Any], train: pa.Table, test: pa.Table, config: ExperimentConfig) -> SplitReport:
    before = meta["train_rows_before"] + meta["test_rows_before"]
    share = meta["test_rows_before"] / max(before, 1)
    share_err = abs(share - config.split.test_size)
    metadata: dict[str, Any] = {
        "test_share": round(share, 6),
        "test_share_expected": config.split.test_size,
        "test_share_tolerance": SPLIT_SHARE_TOLERANCE,
    }
    passed = share_err <= SPLIT_SHARE_TOLERANCE or before < 100
    if config.task == "classification":
        train_shares, test_shares = meta["train_class_shares"], meta["test_class_shares"]
        gap = max(abs(train_shares.get(k, 0) - test_shares.get(k, 0)) for k in set(train_shares) | set(test_shares))
        # Whole rows cannot match shares more closely than one row per split: small data gets that slack.
        limit = max(CLASS_RATIO_TOLERANCE, 1 / max(meta["test_rows_before"], 1) + 1 / max(meta["train_rows_before"], 1))
        metadata |= {"max_class_share_gap": round(gap, 6), "class_share_gap_limit": round(limit, 6)}
        passed = passed and gap <= limit
    if config.task == "forecasting":
        assert config.time_column is not None
        last_train = pc.max(train[config.time_column]).as_py()
        first_test = pc.min(test[config.time_column]).as_py()
        ordered = last_train < first_test
        metadata |= {"last_train_time": str(last_train), "first_test_time": str(first_test), "chronological": ordered}
        passed = passed and ordered
    return SplitReport(passed=passed, metadata=metadata)


def _integer_values(column: pa.ChunkedArray) -> np.ndarray | None:
    """The column's values when every one is a whole number (ints, integral floats, digit strings)."""
    t = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, t)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        if not pc.all(pc.match_substring_regex(column, r"^\s*[-+]?\d{1,18}\s*$")).as_py():
            return None
        return pc.cast(pc.utf8_trim_whitespace(column), pa.int64()).to_numpy()
    if pa.types.is_integer(t):
        return column.to_numpy().astype(np.int64, copy=False)
    if pa.types.is_floating(t):
        values = column.to_numpy()
        return values if np.all(np.isfinite(values)) and np.all(values == np.round(values)) else None
    return None


def id_like_columns(table: pa.Table, skip: set[str]) -> list[str]:
    """Columns that look like row ids (R's `rownames`, an index column): whole numbers, none missing,
    strictly increasing or decreasing, hence unique per row. A model fed one learns the row order."""
    if table.num_rows < ID_MIN_ROWS:
        return []
    found = []
    for name in table.column_names:
        column = table[name]
        if name in skip or column.null_count:
            continue
        values = _integer_values(column)
        if values is None:
            continue
        steps = np.diff(values)
        if np.all(steps > 0) or np.all(steps < 0):
            found.append(name)
    return found
