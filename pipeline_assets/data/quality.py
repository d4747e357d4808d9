"""Split quality measures, shared by the split check and the tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from core.experiment import ExperimentConfig

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
