"""The streaming preprocessing engine: CSV or parquet in, features out, one chunk at a time.

Three streaming passes, each touching one chunk of `chunk_size` rows at a time:

1. statistics: reads the source (pyarrow's streaming CSV reader / ParquetFile.iter_batches),
   normalizes it (operators.normalize) and spools it to an Arrow IPC file, merging per-chunk
   moments (count, mean, M2, M3, min, max) and category counts of the rows that have a target;
   they fix imputation values, clip bounds, category sets and which features to derive.
2. fit: preprocess + feature_engineering per chunk from the spool, summing the features'
   cross-products; they fix feature selection (|r| above the threshold) and scaling.
3. transform: the four operators per chunk from the spool; with a spill directory each chunk
   is written there and a manifest rewritten after it, so an interrupted run resumes.

Every statistic is a whole-data statistic, so the features do not depend on the chunk size:
batch mode runs the same operators on the whole table as one chunk and matches streaming to
rounding (1e-9). The source is parsed once: the later passes read the spool (parsing is the
expensive part of a CSV pass).

Memory: a chunk's working memory is its input's Arrow size + the peak of Python/numpy
allocations during the chunk (tracemalloc; numpy reports its buffers to it) + the operators'
own Arrow allocations (a proxy pool, sampled between operators). With a limit, each pass first
times two dry runs (1,024 and 2,048 rows) to fit memory ≈ fixed + per_row × rows; a chunk
predicted to exceed is recorded with `memory_exceeded: true, predicted: true`, halved and
re-predicted; a chunk that exceeds when measured is recorded, halved and rerun. The smaller size
is kept for the rest of the run; below `min_chunk_size` the run fails with MemoryLimitError.
While the CSV reader runs (pass 1) its read-ahead is budgeted too (reading.csv_reader_reserve_mb).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import math
import queue
import shutil
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_assets.preprocessing.compute import compute_cap
from pipeline_assets.preprocessing.operators import (
    OPERATORS,
    OTHER,
    Fit,
    GramAccumulator,
    Moments,
    Roles,
    StatisticsAccumulator,
    _feature_columns,
    _float_values,
    _normalize_table,
    arrow_pool,
    encode_scale,
    feature_engineering,
    feature_selection,
    finish_selection,
    normalize,
    output_schema,
    preprocess,
    transform_table,
)
from pipeline_assets.preprocessing.reading import (
    MB,
    EngineInputError,
    EngineOptions,
    MemoryLimitError,
    RowStream,
    Source,
    csv_block_bytes,
    csv_reader_reserve_mb,
)
from core.atomic import atomic_path, atomic_write_json

__all__ = [
    "OPERATORS", "OTHER", "STAGES", "EngineInputError", "EngineOptions", "Fit", "GramAccumulator",
    "MemoryLimitError", "Moments", "RowStream", "RunResult", "Source", "compare_features", "encode_scale",
    "feature_engineering", "feature_selection", "normalize", "operator_profile_rows", "preprocess",
    "run_batch", "run_streaming", "transform_table",
]

STAGES = ("statistics", "fit", "transform")
OUTPUT_ROW_GROUP = 65_536  # fixed, so output bytes do not depend on how rows were chunked
MANIFEST = "manifest.json"
FIT_FILE = "fit.json"
SPOOL_FILE = "spool.arrow"
# The spool is written once and read twice. In a spill directory (the shared drive, maybe a network
# mount) lz4 cuts the bytes by ~2.5x; in a local temporary directory plain is faster (~10%, measured).
SPILL_SPOOL_COMPRESSION = "lz4"
LOCAL_SPOOL_COMPRESSION = None
_CHUNK_FILE = "chunk_{:06d}.parquet"
_CHUNK_GLOB = "chunk_*.parquet"


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Memory guard


@functools.cache
def _operator_pool() -> pa.MemoryPool:
    # One for the process, never freed: buffers allocated from a proxy pool point at it, and
    # outputs (features tables) outlive any single run.
    return pa.proxy_memory_pool(pa.default_memory_pool())


class MemoryProbe:
    """Working memory of one chunk: input bytes + tracemalloc peak + the operators' Arrow allocations.

    The operators allocate from `pool`, a proxy of Arrow's default pool with its own counter, so a
    reader filling the default pool in another thread does not count against the chunk.
    """

    def __init__(self) -> None:
        self._started = False
        self.pool = _operator_pool()

    def __enter__(self) -> MemoryProbe:
        if not tracemalloc.is_tracing():
            tracemalloc.start()
            self._started = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            tracemalloc.stop()

    def begin(self, input_bytes: int) -> None:
        self.input_bytes = input_bytes
        tracemalloc.reset_peak()
        self._py0 = tracemalloc.get_traced_memory()[0]
        self._arrow0 = self.pool.bytes_allocated()
        self._arrow_peak = self._arrow0

    def sample(self) -> None:
        self._arrow_peak = max(self._arrow_peak, self.pool.bytes_allocated())

    def end(self) -> float:
        self.sample()
        python_peak = tracemalloc.get_traced_memory()[1] - self._py0
        return (self.input_bytes + max(python_peak, 0) + (self._arrow_peak - self._arrow0)) / MB


@dataclass
class _Attempt:
    table: pa.Table | None
    seconds: dict[str, float]
    extra: Any = None


CALIBRATION_ROWS = 1024


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return None


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024


@contextlib.contextmanager
def reused_heap() -> Iterator[None]:
    """Keep freed numpy buffers in glibc's heap for the next chunk instead of unmapping them.

    By default arrays above glibc's (adaptive) mmap threshold get fresh pages every chunk: on the
    5M-row benchmark that was ~430k page faults and 1.5 s of system time (35k faults, 0.7 s with
    this). Process-wide, so it is undone afterwards: glibc's initial thresholds, then a trim.
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 128 * MB)
    libc.mallopt(_M_TRIM_THRESHOLD, 512 * MB)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.malloc_trim(0)


def release_memory() -> None:
    """Hand freed memory back to the OS between chunks.

    Without it RSS keeps the high-water mark of every earlier chunk: glibc keeps freed heap
    (numpy buffers under its adaptive mmap threshold) and Arrow's mimalloc pool keeps freed pages.
    """
    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@dataclass
class MemoryModel:
    """Working memory ≈ fixed + per_row × rows: two dry runs fit it, every accepted chunk can raise it."""

    fixed_mb: float
    per_row_mb: float

    def predict(self, rows: int) -> float:
        return self.fixed_mb + self.per_row_mb * rows

    def update(self, rows: int, measured_mb: float) -> None:
        if rows:
            self.per_row_mb = max(self.per_row_mb, (measured_mb - self.fixed_mb) / rows)


def _calibrate(stream: RowStream, work: Callable[[pa.Table, MemoryProbe], _Attempt], probe: MemoryProbe,
               rows: int = CALIBRATION_ROWS) -> MemoryModel | None:
    """Measure the stage's work on the next `rows` and `2 × rows` rows (results discarded, rows given back)."""
    sample = stream.take(2 * rows)
    if sample is None:
        return None
    stream.push_front(sample)
    if sample.num_rows < 2 * rows:
        return None  # the whole rest is smaller than the calibration: nothing to predict
    measured = []
    for n in (rows, 2 * rows):
        part = sample.slice(0, n)
        probe.begin(part.nbytes)
        with arrow_pool(probe.pool):
            work(part, probe)
        measured.append(probe.end())
    per_row = (measured[1] - measured[0]) / rows
    if per_row <= 0:  # noise at this size: fall back to the average, which overestimates
        per_row = measured[1] / (2 * rows)
    return MemoryModel(max(measured[0] - per_row * rows, 0.0), per_row)


def _guarded_chunks(
    stream: RowStream,
    state: dict[str, Any],
    stage: str,
    work: Callable[[pa.Table, MemoryProbe], _Attempt],
    probe: MemoryProbe,
    limit_mb: float | None,
    floor: int,
    records: list[dict[str, Any]],
    where: Any,
    first_chunk_id: int = 0,
    retries_so_far: int = 0,
    reserve_mb: float = 0.0,
) -> Iterator[tuple[int, _Attempt, dict[str, Any]]]:
    """Yield accepted (chunk_id, result, record); oversized attempts are recorded and halved.

    Callers drop the result before asking for the next chunk, so no two chunks are alive at once.

    `state["chunk_size"]` is shared by every pass: once halved it stays halved for the run.
    `reserve_mb` is memory the stage holds outside its chunks (the CSV reader's read-ahead); the
    chunks' budget is the limit less that (at least a quarter of the limit).
    """
    budget_mb = max(limit_mb - reserve_mb, 0.25 * limit_mb) if limit_mb is not None else None
    limit_mb, configured_mb = budget_mb, limit_mb
    chunk_id = first_chunk_id
    retries = retries_so_far
    # With a limit, chunks that would exceed it are halved before they are read; the reactive
    # check after each chunk stays as the safety net for what the model underestimates.
    model = _calibrate(stream, work, probe) if limit_mb is not None and state["chunk_size"] > 2 * CALIBRATION_ROWS else None
    while True:
        size = state["chunk_size"]
        while model is not None and size > floor and model.predict(size) > limit_mb:
            records.append({
                "stage": stage, "chunk_id": chunk_id, "row_start": state["row"], "rows": size, "input_bytes": 0,
                "chunk_size_used": size, "read_s": 0.0, **{f"{op}_s": 0.0 for op in OPERATORS}, "statistics_s": 0.0,
                "memory_mb": round(model.predict(size), 4), "memory_limit_mb": configured_mb,
                "memory_budget_mb": budget_mb, "memory_exceeded": True,
                "predicted": True, "retries": retries, "spilled": False,
            })
            size = max(floor, size // 2)
            state["chunk_size"] = size
            retries += 1
        t0 = time.perf_counter()
        chunk = stream.take(size)
        read_s = time.perf_counter() - t0
        if chunk is None:
            return
        probe.begin(chunk.nbytes)
        with arrow_pool(probe.pool):
            result = work(chunk, probe)
        memory_mb = probe.end()
        exceeded = limit_mb is not None and memory_mb > limit_mb
        record = {
            "stage": stage,
            "chunk_id": chunk_id,
            "row_start": state["row"],
            "rows": chunk.num_rows,
            "input_bytes": chunk.nbytes,
            "chunk_size_used": size,
            "read_s": read_s,
            **{f"{op}_s": result.seconds.get(op, 0.0) for op in OPERATORS},
            "statistics_s": result.seconds.get("statistics", 0.0),
            "memory_mb": round(memory_mb, 4),
            "memory_limit_mb": configured_mb,
            "memory_budget_mb": budget_mb,
            "memory_exceeded": exceeded,
            "predicted": False,
            "retries": retries,
            "spilled": False,
        }
        records.append(record)
        chunk_rows = chunk.num_rows
        if exceeded:
            if chunk.num_rows <= floor:
                raise MemoryLimitError(
                    f"{where}: {stage} chunk {chunk_id} of {chunk.num_rows} rows needs {memory_mb:.3g} MB of working "
                    f"memory, above its {limit_mb:g} MB budget (limit {configured_mb:g} MB) even at the {floor}-row "
                    "minimum chunk size. Fix: raise "
                    "the memory limit, or reduce the columns/categories per row."
                )
            del result
            state["chunk_size"] = max(floor, chunk.num_rows // 2)
            stream.push_front(chunk)
            retries += 1
            continue
        if model is not None:
            model.update(chunk.num_rows, memory_mb)
        del chunk
        yield chunk_id, result, record
        del result
        # Trimming costs ~1.5 ms; it matters when a chunk is a sizable share of the budget.
        if limit_mb is not None and memory_mb > 0.1 * limit_mb:
            release_memory()
        state["row"] += chunk_rows
        chunk_id += 1
        retries = 0


# ---------------------------------------------------------------------------------------------
# Runs


@dataclass
class RunResult:
    """What a streaming or batch run did: the fit, per-chunk records, timings and memory."""

    mode: str
    fit: Fit
    records: list[dict[str, Any]]
    rows_in: int
    rows_out: int
    latency_s: float
    stage_seconds: dict[str, float]
    peak_memory_mb: float
    threads: int
    chunk_size: int
    final_chunk_size: int
    memory_limit_mb: float | None
    compute_limit: float
    resumed_chunks: int = 0
    output: Path | None = None
    table: pa.Table | None = None

    @property
    def transform_records(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["stage"] == "transform"]

    @property
    def chunks(self) -> int:
        return sum(1 for r in self.transform_records if not r["memory_exceeded"])

    @property
    def retries(self) -> int:
        return sum(1 for r in self.records if r["memory_exceeded"])

    @property
    def throughput_rows_s(self) -> float:
        return self.rows_in / self.latency_s if self.latency_s > 0 else float("inf")

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_dropped_missing_target": self.fit.rows_dropped_missing_target,
            "columns_out": len(self.fit.output_columns),
            "chunks": self.chunks,
            "attempts_over_limit": self.retries,
            "resumed_chunks": self.resumed_chunks,
            "chunk_size": self.chunk_size,
            "final_chunk_size": self.final_chunk_size,
            "memory_limit_mb": self.memory_limit_mb,
            "compute_limit": self.compute_limit,
            "threads": self.threads,
            "latency_s": self.latency_s,
            "throughput_rows_s": self.throughput_rows_s,
            "peak_memory_mb": self.peak_memory_mb,
            "stage_seconds": self.stage_seconds,
            "fit_id": self.fit.fit_id,
        }


class _OutputWriter:
    """Parquet writer cutting fixed-size row groups, so the bytes do not depend on chunking."""

    def __init__(self, path: Path, schema: pa.Schema):
        self._target = atomic_path(path)
        tmp = self._target.__enter__()
        self._writer = pq.ParquetWriter(tmp, schema, compression="zstd")
        self._pending: list[pa.Table] = []
        self._rows = 0
        self.schema = schema

    def write(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._rows += table.num_rows
        if self._rows >= OUTPUT_ROW_GROUP:
            combined = pa.concat_tables(self._pending)
            whole = (self._rows // OUTPUT_ROW_GROUP) * OUTPUT_ROW_GROUP
            for start in range(0, whole, OUTPUT_ROW_GROUP):
                self._writer.write_table(combined.slice(start, OUTPUT_ROW_GROUP), row_group_size=OUTPUT_ROW_GROUP)
            rest = combined.slice(whole)
            self._pending, self._rows = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        """Flush and publish atomically."""
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=OUTPUT_ROW_GROUP)
        self._writer.close()
        self._target.__exit__(None, None, None)

    def abort(self) -> None:
        """Drop the partial file: nothing half-written is left looking complete."""
        self._writer.close()
        error = RuntimeError("output aborted")
        self._target.__exit__(RuntimeError, error, None)  # atomic_path removes its temporary file


def _spool_batches(path: Path) -> Iterator[pa.RecordBatch]:
    # OSFile, not a memory map: mapped pages would count in RSS as the file is read.
    with pa.OSFile(str(path)) as fh:
        yield from pa.ipc.open_stream(fh)


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


def prefetched(items: Iterable[Any], threads: int, depth: int = 2) -> Iterator[Any]:
    """`items` produced `depth` ahead by a background thread when the compute cap allows a second one.

    Reading, decompressing and parsing release the GIL, so they overlap the operators' numpy work.
    """
    if threads < 2:
        yield from items
        return
    queue_: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                queue_.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:  # handed to the consumer, which re-raises it
            put(_Failed(error))

    worker = threading.Thread(target=produce, name="mlgraph-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = queue_.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join(timeout=30)


def _clear_spill(spill_dir: Path) -> None:
    for p in spill_dir.glob(_CHUNK_GLOB):
        p.unlink()
    for name in (MANIFEST, FIT_FILE, SPOOL_FILE, SPOOL_FILE + ".partial"):
        (spill_dir / name).unlink(missing_ok=True)


def _load_resume(spill_dir: Path, identity: dict[str, Any], settings: dict[str, Any]) -> tuple[Fit, dict[str, Any], list] | None:
    """An interrupted run's fit and manifest when they match this run; else None (start afresh)."""
    manifest_path, fit_path = spill_dir / MANIFEST, spill_dir / FIT_FILE
    if not manifest_path.exists() or not fit_path.exists() or not (spill_dir / SPOOL_FILE).exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        saved = json.loads(fit_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("complete") or saved.get("source") != identity or saved.get("settings") != settings:
        return None
    fit = Fit.from_json(saved["fit"])
    if manifest.get("fit_id") != fit.fit_id:
        return None
    good = []
    for entry in manifest["chunks"]:
        path = spill_dir / entry["file"]
        if not path.exists() or sha256_file(path) != entry["sha256"]:
            break
        good.append(entry)
    manifest["chunks"] = good
    return fit, manifest, saved.get("records", [])


def run_streaming(
    source: str | Path,
    options: EngineOptions,
    chunk_size: int,
    memory_limit_mb: float | None = None,
    compute_limit: float = 1.0,
    spill_dir: str | Path | None = None,
    output: str | Path | None = None,
    collect: bool = False,
    min_chunk_size: int = 64,
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Stream `source` through the three passes under the given chunk size, memory and compute limits.

    spill_dir: transformed chunks are written there (one parquet each, plus a manifest rewritten
    atomically after each), and a run interrupted earlier with the same source and settings
    resumes from it. output: the features as one parquet file. collect: also return them.
    on_chunk: called with each accepted transform record once its chunk is durable.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    start = time.perf_counter()
    src = Source(source, options, block_bytes=csv_block_bytes(memory_limit_mb))
    floor = max(1, min(min_chunk_size, chunk_size))
    spill = Path(spill_dir) if spill_dir is not None else None
    settings = {"chunk_size": chunk_size, "memory_limit_mb": memory_limit_mb, "min_chunk_size": floor,
                "options": options.to_json()}
    records: list[dict[str, Any]] = []
    stage_seconds = {s: 0.0 for s in STAGES}
    state = {"chunk_size": chunk_size, "row": 0}
    work_dir = spill if spill is not None else Path(tempfile.mkdtemp(prefix="mlgraph-spool-"))
    spool_path = work_dir / SPOOL_FILE
    with compute_cap(compute_limit) as threads, MemoryProbe() as probe, reused_heap():
        state["threads"] = threads
        state["spool_compression"] = SPILL_SPOOL_COMPRESSION if spill is not None else LOCAL_SPOOL_COMPRESSION
        try:
            resume = None
            if spill is not None:
                spill.mkdir(parents=True, exist_ok=True)
                resume = _load_resume(spill, src.identity, settings)
                if resume is None:
                    _clear_spill(spill)
            if resume is not None:
                fit, manifest, fit_records = resume
                records = list(fit_records) + [
                    r for r in manifest.get("records", []) if r["chunk_id"] < len(manifest["chunks"])
                ]
                done = manifest["chunks"]
                state["chunk_size"] = done[-1]["next_chunk_size"] if done else manifest["start_chunk_size"]
            else:
                fit = _fit_passes(src, options, state, probe, memory_limit_mb, floor, records, stage_seconds, spool_path)
                manifest = {"fit_id": fit.fit_id, "complete": False, "chunks": [], "records": [],
                            "start_chunk_size": state["chunk_size"]}
                if spill is not None:
                    atomic_write_json(spill / FIT_FILE, {"fit": fit.to_json(), "source": src.identity,
                                                         "settings": settings, "records": records})
                    atomic_write_json(spill / MANIFEST, manifest)
            table, rows_out, resumed = _transform_pass(
                src, fit, state, probe, memory_limit_mb, floor, records, stage_seconds, spill, manifest,
                Path(output) if output else None, collect, on_chunk, spool_path,
            )
            # The spool is a raw copy of the input: worth keeping only while a resume may need it.
            spool_path.unlink(missing_ok=True)
        finally:
            if spill is None:
                shutil.rmtree(work_dir, ignore_errors=True)
    peak = max((r["memory_mb"] for r in records), default=0.0)
    return RunResult(
        mode="streaming", fit=fit, records=records, rows_in=fit.rows + fit.rows_dropped_missing_target,
        rows_out=rows_out, latency_s=time.perf_counter() - start, stage_seconds=stage_seconds,
        peak_memory_mb=peak, threads=threads, chunk_size=chunk_size, final_chunk_size=state["chunk_size"],
        memory_limit_mb=memory_limit_mb, compute_limit=compute_limit, resumed_chunks=resumed,
        output=Path(output) if output else None, table=table,
    )


def _clean_and_derive(chunk: pa.Table, fit: Fit, probe: MemoryProbe, seconds: dict[str, float]) -> pa.Table:
    """preprocess then feature_engineering, each timed into `seconds`, with a memory sample after each."""
    s = time.perf_counter()
    block = preprocess(chunk, fit)
    seconds["preprocess"] = time.perf_counter() - s
    probe.sample()
    s = time.perf_counter()
    block = feature_engineering(block, fit)
    seconds["feature_engineering"] = time.perf_counter() - s
    probe.sample()
    return block


def _fit_passes(src: Source, options: EngineOptions, state: dict[str, Any], probe: MemoryProbe,
                limit_mb: float | None, floor: int, records: list, stage_seconds: dict[str, float],
                spool_path: Path) -> Fit:
    """Passes 1 and 2: statistics (spooling the normalized input on the way), then selection."""
    t0 = time.perf_counter()
    schema = src._stream_schema()
    roles = Roles.of(schema, options, src.path)
    target_type = pa.float64() if options.task != "classification" else schema.field(options.target).type
    if options.task != "classification":
        t = schema.field(options.target).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)):
            raise EngineInputError(
                f"{src.path}: target {options.target!r} has type {t} but a {options.task} target must be numeric. "
                "Fix: clean the column or use task: classification."
            )
    stats = StatisticsAccumulator(roles, options, target_type, src.path)
    partial = spool_path.with_name(spool_path.name + ".partial")
    sink = pa.OSFile(str(partial), "wb")
    writer: pa.ipc.RecordBatchStreamWriter | None = None

    def normalized(it: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        nonlocal writer
        for batch in it:
            batch = normalize(batch, roles, options.task)
            if writer is None:
                writer = pa.ipc.new_stream(sink, batch.schema, options=pa.ipc.IpcWriteOptions(compression=state["spool_compression"]))
            writer.write_batch(batch)
            yield batch

    def statistics_work(chunk: pa.Table, probe: MemoryProbe) -> _Attempt:
        # An attempt over the limit is redone in smaller pieces: only accepted chunks are merged.
        s0 = time.perf_counter()
        part = StatisticsAccumulator(roles, options, target_type, src.path)
        part.add(chunk, row_offset=state["row"])
        return _Attempt(None, {"statistics": time.perf_counter() - s0}, part)

    state["row"] = 0
    try:
        stream = RowStream(prefetched(normalized(src.batches(state["chunk_size"])), state["threads"]))
        # The CSV reader runs only in this pass (the later ones read the spool); budget for its read-ahead.
        reserve = csv_reader_reserve_mb(src.block_bytes) if src.kind == "csv" else 0.0
        for _, attempt, _ in _guarded_chunks(stream, state, "statistics", statistics_work, probe, limit_mb, floor,
                                             records, src.path, reserve_mb=reserve):
            stats.merge(attempt.extra)
            del attempt
        if writer is None:  # no rows at all: keep an empty spool so the later passes see a stream
            writer = pa.ipc.new_stream(sink, normalize(pa.RecordBatch.from_pylist([], schema=schema), roles,
                                                       options.task).schema)
        writer.close()
        sink.close()
    except BaseException:
        sink.close()
        partial.unlink(missing_ok=True)
        raise
    fit = stats.finish()
    partial.replace(spool_path)
    stage_seconds["statistics"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    gram = GramAccumulator(len(fit.features))

    def fit_work(chunk: pa.Table, probe: MemoryProbe) -> _Attempt:
        seconds: dict[str, float] = {}
        block = _clean_and_derive(chunk, fit, probe, seconds)
        s = time.perf_counter()
        part = GramAccumulator(len(fit.features))
        part.shift = gram.shift
        part.add(_feature_columns(block, fit))
        seconds["feature_selection"] = time.perf_counter() - s
        return _Attempt(None, seconds, part)

    state["row"] = 0
    stream = RowStream(prefetched(_spool_batches(spool_path), state["threads"]))
    for _, attempt, _ in _guarded_chunks(stream, state, "fit", fit_work, probe, limit_mb, floor, records, src.path):
        gram.merge(attempt.extra)
        del attempt
    finish_selection(fit, gram)
    stage_seconds["fit"] = time.perf_counter() - t1
    return fit


def _transform_pass(src: Source, fit: Fit, state: dict[str, Any], probe: MemoryProbe, limit_mb: float | None,
                    floor: int, records: list, stage_seconds: dict[str, float], spill: Path | None,
                    manifest: dict[str, Any], output: Path | None, collect: bool,
                    on_chunk: Callable[[dict[str, Any]], None] | None,
                    spool_path: Path) -> tuple[pa.Table | None, int, int]:
    """Pass 3: the four operators per chunk; spill + manifest per chunk; assemble the output."""
    t0 = time.perf_counter()
    schema = output_schema(fit)
    done = manifest["chunks"]
    resumed = len(done)
    state["row"] = sum(e["rows"] for e in done)
    stream = RowStream(prefetched(_spool_batches(spool_path), state["threads"]))
    stream.skip(state["row"])
    collected: list[pa.Table] = []
    writer = _OutputWriter(output, schema) if output is not None and spill is None else None

    def transform_work(chunk: pa.Table, probe: MemoryProbe) -> _Attempt:
        seconds: dict[str, float] = {}
        block = _clean_and_derive(chunk, fit, probe, seconds)
        s = time.perf_counter()
        block = feature_selection(block, fit)
        seconds["feature_selection"] = time.perf_counter() - s
        s = time.perf_counter()
        table = encode_scale(block, fit)
        seconds["encode_scale"] = time.perf_counter() - s
        return _Attempt(table, seconds)

    rows_out = sum(e["rows_out"] for e in done)
    try:
        for chunk_id, attempt, record in _guarded_chunks(stream, state, "transform", transform_work, probe, limit_mb,
                                                         floor, records, src.path, first_chunk_id=len(done)):
            table = attempt.table
            rows_out += table.num_rows
            if spill is not None:
                name = _CHUNK_FILE.format(chunk_id)
                with atomic_path(spill / name) as tmp:
                    pq.write_table(table, tmp, compression="zstd")
                record["spilled"] = True
                done.append({"chunk_id": chunk_id, "row_start": record["row_start"], "rows": record["rows"],
                             "rows_out": table.num_rows, "file": name, "sha256": sha256_file(spill / name),
                             "next_chunk_size": state["chunk_size"]})
                manifest["records"] = [r for r in records if r["stage"] == "transform"]
                atomic_write_json(spill / MANIFEST, manifest)
            elif writer is not None:
                writer.write(table)
            if collect:
                collected.append(table)
            if on_chunk is not None:
                on_chunk(record)
            del attempt, table
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    if spill is not None:
        if output is not None or collect:
            writer = _OutputWriter(output, schema) if output is not None else None
            collected = []
            for entry in done:
                table = pq.read_table(spill / entry["file"])
                if writer is not None:
                    writer.write(table)
                if collect:
                    collected.append(table)
            if writer is not None:
                writer.close()
        manifest["complete"] = True
        atomic_write_json(spill / MANIFEST, manifest)
    stage_seconds["transform"] = time.perf_counter() - t0
    table = (pa.concat_tables(collected) if collected else schema.empty_table()) if collect else None
    return table, rows_out, resumed


def run_batch(
    source: str | Path | pa.Table,
    options: EngineOptions,
    compute_limit: float = 1.0,
    output: str | Path | None = None,
    collect: bool = True,
) -> RunResult:
    """The same operators on the whole table in memory: one chunk, the same statistics code."""
    start = time.perf_counter()
    stage_seconds = {s: 0.0 for s in STAGES}
    with compute_cap(compute_limit) as threads, MemoryProbe() as probe, arrow_pool(probe.pool):
        t0 = time.perf_counter()
        if isinstance(source, pa.Table):
            raw, where = source, "table"
        else:
            src = Source(source, options)
            raw, where = src.read_all(), src.path
        read_s = time.perf_counter() - t0
        probe.begin(raw.nbytes)
        roles = Roles.of(raw.schema, options, where)
        target_type = pa.float64() if options.task != "classification" else raw.schema.field(options.target).type
        table = _normalize_table(raw, roles, options.task)
        s = time.perf_counter()
        stats = StatisticsAccumulator(roles, options, target_type, where)
        stats.add(table)
        fit = stats.finish()
        stage_seconds["statistics"] = time.perf_counter() - t0
        seconds: dict[str, float] = {"statistics": time.perf_counter() - s}
        t1 = time.perf_counter()
        block = _clean_and_derive(table, fit, probe, seconds)
        s = time.perf_counter()
        gram = GramAccumulator(len(fit.features))
        gram.add(_feature_columns(block, fit))
        finish_selection(fit, gram)
        block = feature_selection(block, fit)
        seconds["feature_selection"] = time.perf_counter() - s
        stage_seconds["fit"] = time.perf_counter() - t1
        s = time.perf_counter()
        features = encode_scale(block, fit)
        seconds["encode_scale"] = time.perf_counter() - s
        stage_seconds["transform"] = seconds["encode_scale"]
        memory_mb = probe.end()
        record = {
            "stage": "batch", "chunk_id": 0, "row_start": 0, "rows": raw.num_rows, "input_bytes": raw.nbytes,
            "chunk_size_used": raw.num_rows, "read_s": read_s,
            **{f"{op}_s": seconds.get(op, 0.0) for op in OPERATORS}, "statistics_s": seconds["statistics"],
            "memory_mb": round(memory_mb, 4), "memory_limit_mb": None, "memory_exceeded": False, "retries": 0,
            "spilled": False,
        }
        if output is not None:
            writer = _OutputWriter(Path(output), output_schema(fit))
            writer.write(features)
            writer.close()
    return RunResult(
        mode="batch", fit=fit, records=[record], rows_in=raw.num_rows, rows_out=features.num_rows,
        latency_s=time.perf_counter() - start, stage_seconds=stage_seconds, peak_memory_mb=memory_mb,
        threads=threads, chunk_size=raw.num_rows, final_chunk_size=raw.num_rows, memory_limit_mb=None,
        compute_limit=compute_limit, output=Path(output) if output else None,
        table=features if collect else None,
    )


def compare_features(a: pa.Table, b: pa.Table, tolerance: float = 1e-9) -> dict[str, Any]:
    """Columns, rows and values of two feature tables: what differs, and by how much."""
    same_columns = a.column_names == b.column_names
    same_rows = a.num_rows == b.num_rows
    max_diff = 0.0
    mismatched: list[str] = []
    if same_columns and same_rows:
        for name in a.column_names:
            x, y = a[name], b[name]
            if pa.types.is_floating(x.type) or pa.types.is_integer(x.type):
                xv = _float_values(x.combine_chunks()).to_numpy()
                yv = _float_values(y.combine_chunks()).to_numpy()
                both_nan = np.isnan(xv) & np.isnan(yv)
                diff = np.where(both_nan, 0.0, np.abs(xv - yv)) if xv.size else np.zeros(0)
                worst = float(np.nanmax(diff)) if diff.size else 0.0
                if np.isnan(diff).any():
                    worst = math.inf
                max_diff = max(max_diff, worst)
                if worst > tolerance:
                    mismatched.append(name)
            elif not x.equals(y):
                mismatched.append(name)
                max_diff = math.inf
    only_a = [c for c in a.column_names if c not in b.column_names]
    only_b = [c for c in b.column_names if c not in a.column_names]
    return {
        "same_columns": same_columns,
        "same_rows": same_rows,
        "rows": [a.num_rows, b.num_rows],
        "columns_only_in_first": only_a,
        "columns_only_in_second": only_b,
        "max_abs_diff": max_diff,
        "tolerance": tolerance,
        "mismatched_columns": mismatched,
        "passed": same_columns and same_rows and max_diff <= tolerance and not mismatched,
    }


def operator_profile_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """operator_profile.csv rows: accepted transform chunks, seconds per operator, input bandwidth."""
    rows = []
    for r in records:
        if r["stage"] != "transform" or r["memory_exceeded"]:
            continue
        busy = r["read_s"] + sum(r[f"{op}_s"] for op in OPERATORS)
        rows.append({
            "chunk_id": r["chunk_id"],
            **{f"{op}_s": r[f"{op}_s"] for op in OPERATORS},
            # Input bytes over the chunk's read + operator time: the input rate this pipeline sustains.
            "estimated_input_bandwidth_mb_s": (r["input_bytes"] / MB) / busy if busy > 0 else 0.0,
            "input_bytes": r["input_bytes"],
        })
    return rows
