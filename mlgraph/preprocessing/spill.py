"""Spill and resume: the transform pass's chunks on disk, the manifest that makes them resumable.

A spill directory holds `spool.arrow` (the normalized input, read by the fit and transform
passes), `fit.json` (the statistics, the source's identity and the run's settings, the records of
the first two passes), one `chunk_NNNNNN.parquet` per transformed chunk and `manifest.json`,
rewritten atomically after each chunk. A later run with the same source and settings resumes
after the last chunk whose file still has its recorded SHA-256. Anything it cannot use is
reported (`ResumeState.status`) and the run starts over; it is never silently discarded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlgraph.core.atomic import atomic_path, atomic_write_json
from mlgraph.core.hashing import sha256_file
from mlgraph.preprocessing.fitting import Fit
from mlgraph.preprocessing.records import ChunkRecord

MANIFEST = "manifest.json"
FIT_FILE = "fit.json"
SPOOL_FILE = "spool.arrow"
CHUNK_FILE = "chunk_{:06d}.parquet"
CHUNK_GLOB = "chunk_*.parquet"
# The spool is written once and read twice. In a spill directory (the shared drive, maybe a network
# mount) lz4 cuts the bytes by ~2.5x; in a local temporary directory plain is faster (~10%, measured).
SPILL_SPOOL_COMPRESSION = "lz4"
LOCAL_SPOOL_COMPRESSION = None


class CorruptSpill(ValueError):
    """A spill file that cannot be what the engine wrote: the message says which and why."""


@dataclass
class SpilledChunk:
    """A durable transformed chunk, as listed in the manifest."""

    chunk_id: int
    row_start: int
    rows: int
    rows_out: int
    file: str
    sha256: str
    next_chunk_size: int  # the chunk size to continue with (halvings so far kept)


@dataclass
class Manifest:
    """manifest.json: the durable chunks of the transform pass and its records so far."""

    fit_id: str
    start_chunk_size: int
    complete: bool = False
    chunks: list[SpilledChunk] = field(default_factory=list)
    records: list[ChunkRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """CorruptSpill naming the key or entry when `data` is not a manifest this engine wrote."""
        if not isinstance(data, dict):
            raise CorruptSpill(f"{MANIFEST} holds {type(data).__name__}, not an object")
        _require_keys(data, {f.name for f in fields(cls)}, MANIFEST)
        if (
            not isinstance(data["fit_id"], str)
            or not isinstance(data["complete"], bool)
            or not isinstance(data["start_chunk_size"], int)
            or data["start_chunk_size"] < 1
        ):
            raise CorruptSpill(f"{MANIFEST}: fit_id, complete or start_chunk_size has the wrong type")
        try:
            chunks = [SpilledChunk(**entry) for entry in data["chunks"]]
            records = [ChunkRecord.from_json(r) for r in data["records"]]
        except (TypeError, ValueError) as exc:
            raise CorruptSpill(f"{MANIFEST}: a chunk entry or record is malformed ({exc})") from None
        return cls(data["fit_id"], data["start_chunk_size"], data["complete"], chunks, records)


def _require_keys(data: dict[str, Any], keys: set[str], name: str) -> None:
    missing = sorted(keys - set(data))
    if missing:
        raise CorruptSpill(f"{name}: missing {', '.join(missing)}")


@dataclass
class ResumeState:
    """What a run starts from: an interrupted run's fit and durable chunks, or nothing (and why)."""

    status: str  # for logs and metadata: "fresh", "resumed after N chunk(s)", "... started over"
    started_over: bool = False  # an earlier run's spill was found but could not be used
    fit: Fit | None = None
    manifest: Manifest | None = None
    fit_records: list[ChunkRecord] = field(default_factory=list)  # the statistics and fit passes'


class SpillDir:
    """A run's spill directory: the spool, fit.json, the transformed chunks and the manifest."""

    def __init__(self, path: Path):
        self.path = path
        self.spool = path / SPOOL_FILE

    def load_resume(self, identity: dict[str, Any], settings: dict[str, Any]) -> ResumeState:
        """An interrupted run's state when it matches this source and settings; else why not."""
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            return ResumeState("fresh")
        try:
            manifest = Manifest.from_json(_read_json(manifest_path))
            if manifest.complete:
                return ResumeState("fresh")  # the earlier run finished: nothing to resume
            saved = _read_json(self.path / FIT_FILE) if (self.path / FIT_FILE).exists() else None
            if saved is None or not self.spool.exists():
                missing = FIT_FILE if saved is None else SPOOL_FILE
                return ResumeState(f"started over ({missing} of the interrupted run is missing)", started_over=True)
            if not isinstance(saved, dict):
                raise CorruptSpill(f"{FIT_FILE} holds {type(saved).__name__}, not an object")
            _require_keys(saved, {"fit", "source", "settings", "records"}, FIT_FILE)
            if saved["source"] != identity or saved["settings"] != settings:
                return ResumeState(
                    "started over (the source or the settings changed since the interrupted run)", started_over=True
                )
            try:
                fit = Fit.from_json(saved["fit"])
                fit_records = [ChunkRecord.from_json(r) for r in saved["records"]]
            except (TypeError, ValueError) as exc:
                raise CorruptSpill(f"{FIT_FILE}: the fit or a record is malformed ({exc})") from None
            if manifest.fit_id != fit.fit_id:
                raise CorruptSpill(f"{MANIFEST} names fit {manifest.fit_id[:12]}, {FIT_FILE} holds {fit.fit_id[:12]}")
        except CorruptSpill as exc:
            return ResumeState(f"manifest corrupt ({exc}), started over", started_over=True)
        good = []
        for entry in manifest.chunks:
            path = self.path / entry.file
            if not path.exists() or sha256_file(path) != entry.sha256:
                break  # a chunk lost or rewritten since: redo it and everything after it
            good.append(entry)
        manifest.chunks = good
        return ResumeState(f"resumed after {len(good)} chunk(s)", fit=fit, manifest=manifest, fit_records=fit_records)

    def clear(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for p in self.path.glob(CHUNK_GLOB):
            p.unlink()
        for name in (MANIFEST, FIT_FILE, SPOOL_FILE, SPOOL_FILE + ".partial"):
            (self.path / name).unlink(missing_ok=True)

    def save_fit(
        self, fit: Fit, identity: dict[str, Any], settings: dict[str, Any], records: list[ChunkRecord]
    ) -> None:
        atomic_write_json(
            self.path / FIT_FILE,
            {"fit": fit.to_json(), "source": identity, "settings": settings, "records": [r.to_json() for r in records]},
        )

    def save_manifest(self, manifest: Manifest) -> None:
        atomic_write_json(self.path / MANIFEST, manifest.to_json())

    def write_chunk(self, chunk_id: int, table: pa.Table, record: ChunkRecord, next_chunk_size: int) -> SpilledChunk:
        """The chunk's parquet file, written atomically; the manifest entry that vouches for it."""
        name = CHUNK_FILE.format(chunk_id)
        with atomic_path(self.path / name) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return SpilledChunk(
            chunk_id,
            record.row_start,
            record.rows,
            table.num_rows,
            name,
            sha256_file(self.path / name),
            next_chunk_size,
        )

    def read_chunk(self, entry: SpilledChunk) -> pa.Table:
        return pq.read_table(self.path / entry.file)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptSpill(f"{path.name} is not readable JSON ({exc})") from None
