"""Checks on preprocessing outputs as plain functions (the asset checks and the report call them)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mlgraph.preprocessing.engine import compare_features

TOLERANCE = 1e-9


def features_agree(streaming: Path, batch: Path, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Streaming vs batch feature files: same columns, same rows, values within `tolerance`."""
    missing = [str(p) for p in (streaming, batch) if not p.exists()]
    if missing:
        return {"passed": False, "missing_files": missing, "tolerance": tolerance}
    return compare_features(pq.read_table(streaming), pq.read_table(batch), tolerance)


def memory_compliance(records: Iterable[Mapping[str, Any]], limit_mb: float) -> dict[str, Any]:
    """Every accepted chunk (any pass) within the limit; attempts over it are counted, not failed."""
    accepted = [r for r in records if not r["memory_exceeded"]]
    over = [r for r in accepted if r["memory_mb"] > limit_mb]
    attempts = [r for r in records if r["memory_exceeded"]]
    return {
        "passed": bool(accepted) and not over,
        "accepted_chunks": len(accepted),
        "accepted_over_limit": len(over),
        "attempts_over_limit": len(attempts),
        "max_accepted_memory_mb": max((r["memory_mb"] for r in accepted), default=0.0),
        "memory_limit_mb": limit_mb,
        "smallest_chunk_size_used": min((r["chunk_size_used"] for r in accepted), default=0),
    }
