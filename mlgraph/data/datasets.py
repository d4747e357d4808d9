"""The dataset files on the drive: parquet written with fixed options, and the fingerprint document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlgraph.core.atomic import atomic_path
from mlgraph.core.hashing import sha256_file, sha256_text
from mlgraph.data.loading import schema_hash


def write_parquet(table: pa.Table, path: Path) -> str:
    """Write atomically with fixed writer options (same table → same bytes); return the SHA-256."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)
    return sha256_file(path)


def build_fingerprint(
    experiment: str, raw_path: Path, source_file: Path | None, generator: str | None
) -> dict[str, Any]:
    """SHA-256 of the source and of raw.parquet, schema hash, shape, and one hash over all of them."""
    schema = pq.read_schema(raw_path)
    raw_sha = sha256_file(raw_path)
    fingerprint: dict[str, Any] = {
        "experiment": experiment,
        "source": str(source_file) if source_file else f"generator:{generator}",
        # Generated data has no file of its own: its canonical bytes are raw.parquet.
        "source_sha256": sha256_file(source_file) if source_file else raw_sha,
        "raw_parquet_sha256": raw_sha,
        "schema_hash": schema_hash(schema),
        "rows": pq.read_metadata(raw_path).num_rows,
        "columns": len(schema.names),
    }
    fingerprint["fingerprint"] = sha256_text(json.dumps(fingerprint, sort_keys=True))
    return fingerprint


def splits_version(train_sha256: str, test_sha256: str) -> str:
    """The split's data version: one hash over both files' hashes."""
    return sha256_text(train_sha256 + test_sha256)
