"""The streaming preprocessing engine: CSV or parquet in, features out, one chunk at a time.

This module is the engine's API (options in, RunResult out); the work lives beside it:

- passes.py: three streaming passes (statistics → spool, fit, transform) and the batch pass;
- governor.py: hands each pass its chunks under the memory limit (calibrate, halve, retry);
- memory.py: what a chunk's working memory is, and giving memory back between chunks;
- streams.py: chunking, read-ahead thread, spool and output files; sources.py: the reader;
- spill.py: spilled chunks and the manifest an interrupted run resumes from;
- normalized.py, fitting.py, operators.py: the working form, the statistics, the four operators.

Every statistic is a whole-data statistic, so the features do not depend on the chunk size:
batch mode runs the same operators on the whole table as one chunk and matches streaming to
rounding (1e-9). The source is parsed once: the later passes read the spool (parsing is the
expensive part of a CSV pass). While the CSV reader runs (pass 1) its read-ahead is budgeted
too (sources.csv_reader_reserve_mb).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mlgraph.preprocessing.compute import compute_cap
from mlgraph.preprocessing.fitting import Fit
from mlgraph.preprocessing.governor import RunState
from mlgraph.preprocessing.memory import MemoryProbe, reused_heap
from mlgraph.preprocessing.normalized import arrow_pool, float_values
from mlgraph.preprocessing.operators import OPERATORS, output_schema, transform_table
from mlgraph.preprocessing.options import EngineInputError, EngineOptions, MemoryLimitError
from mlgraph.preprocessing.passes import batch_pass, fit_passes, transform_pass
from mlgraph.preprocessing.records import STAGES, ChunkRecord, operator_profile_rows
from mlgraph.preprocessing.sources import Source, csv_block_bytes
from mlgraph.preprocessing.spill import (
    LOCAL_SPOOL_COMPRESSION,
    SPILL_SPOOL_COMPRESSION,
    SPOOL_FILE,
    Manifest,
    ResumeState,
    SpillDir,
)
from mlgraph.preprocessing.streams import OutputWriter

__all__ = [
    "OPERATORS",
    "STAGES",
    "ChunkRecord",
    "EngineInputError",
    "EngineOptions",
    "Fit",
    "MemoryLimitError",
    "RunResult",
    "compare_features",
    "operator_profile_rows",
    "run_batch",
    "run_streaming",
    "transform_table",
]

log = logging.getLogger(__name__)
NO_SPILL = "off (no spill directory)"


@dataclass
class RunResult:
    """What a streaming or batch run did: the fit, per-chunk records, timings and memory."""

    mode: str
    fit: Fit
    records: list[ChunkRecord]
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
    resume: str = NO_SPILL  # how the spill directory was used: fresh, resumed, or why it started over
    started_over: bool = False  # an interrupted run's spill was found but could not be used

    @property
    def transform_records(self) -> list[ChunkRecord]:
        return [r for r in self.records if r.stage == "transform"]

    @property
    def chunks(self) -> int:
        return sum(1 for r in self.transform_records if not r.memory_exceeded)

    @property
    def retries(self) -> int:
        return sum(1 for r in self.records if r.memory_exceeded)

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
    on_chunk: Callable[[ChunkRecord], None] | None = None,
) -> RunResult:
    """Stream `source` through the three passes under the given chunk size, memory and compute limits.

    spill_dir: transformed chunks are written there (one parquet each, plus a manifest rewritten
    atomically after each), and a run interrupted earlier with the same source and settings
    resumes from it; an unusable earlier spill is reported in `RunResult.resume` and the run
    starts over. output: the features as one parquet file. collect: also return them.
    on_chunk: called with each accepted transform record once its chunk is durable.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    start = time.perf_counter()
    src = Source(source, options, block_bytes=csv_block_bytes(memory_limit_mb))
    floor = max(1, min(min_chunk_size, chunk_size))
    spill = SpillDir(Path(spill_dir)) if spill_dir is not None else None
    settings = {
        "chunk_size": chunk_size,
        "memory_limit_mb": memory_limit_mb,
        "min_chunk_size": floor,
        "options": options.to_json(),
    }
    work_dir = spill.path if spill is not None else Path(tempfile.mkdtemp(prefix="mlgraph-spool-"))
    output_path = Path(output) if output else None
    with compute_cap(compute_limit) as threads, MemoryProbe() as probe, reused_heap():
        run = RunState(
            source=src,
            options=options,
            probe=probe,
            chunk_size=chunk_size,
            min_chunk_size=floor,
            memory_limit_mb=memory_limit_mb,
            threads=threads,
            spool=work_dir / SPOOL_FILE,
            spool_compression=SPILL_SPOOL_COMPRESSION if spill is not None else LOCAL_SPOOL_COMPRESSION,
        )
        try:
            resume = ResumeState(NO_SPILL)
            if spill is not None:
                spill.path.mkdir(parents=True, exist_ok=True)
                resume = spill.load_resume(src.identity, settings)
                if resume.started_over:
                    log.warning("%s: %s", spill.path, resume.status)
                if resume.manifest is None:
                    spill.clear()
            if resume.manifest is not None and resume.fit is not None:
                fit, manifest = resume.fit, resume.manifest
                run.records = resume.fit_records + [r for r in manifest.records if r.chunk_id < len(manifest.chunks)]
                done = manifest.chunks
                run.chunk_size = done[-1].next_chunk_size if done else manifest.start_chunk_size
            else:
                fit = fit_passes(run)
                manifest = Manifest(fit_id=fit.fit_id, start_chunk_size=run.chunk_size)
                if spill is not None:
                    spill.save_fit(fit, src.identity, settings, run.records)
                    spill.save_manifest(manifest)
            resumed = len(manifest.chunks)
            table, rows_out = transform_pass(run, fit, manifest, spill, output_path, collect, on_chunk)
            # The spool is a raw copy of the input: worth keeping only while a resume may need it.
            run.spool.unlink(missing_ok=True)
        finally:
            if spill is None:
                shutil.rmtree(work_dir, ignore_errors=True)
    peak = max((r.memory_mb for r in run.records), default=0.0)
    return RunResult(
        mode="streaming",
        fit=fit,
        records=run.records,
        rows_in=fit.rows + fit.rows_dropped_missing_target,
        rows_out=rows_out,
        latency_s=time.perf_counter() - start,
        stage_seconds=run.stage_seconds,
        peak_memory_mb=peak,
        threads=threads,
        chunk_size=chunk_size,
        final_chunk_size=run.chunk_size,
        memory_limit_mb=memory_limit_mb,
        compute_limit=compute_limit,
        resumed_chunks=resumed,
        output=output_path,
        table=table,
        resume=resume.status,
        started_over=resume.started_over,
    )


def run_batch(
    source: str | Path | pa.Table,
    options: EngineOptions,
    compute_limit: float = 1.0,
    output: str | Path | None = None,
    collect: bool = True,
) -> RunResult:
    """The same operators on the whole table in memory: one chunk, the same statistics code."""
    start = time.perf_counter()
    stage_seconds = dict.fromkeys(STAGES, 0.0)
    with compute_cap(compute_limit) as threads, MemoryProbe() as probe, arrow_pool(probe.pool):
        t0 = time.perf_counter()
        if isinstance(source, pa.Table):
            raw, where = source, "table"
        else:
            src = Source(source, options)
            raw, where = src.read_all(), src.path
        read_s = time.perf_counter() - t0
        probe.begin(raw.nbytes)
        fit, features, seconds = batch_pass(raw, where, options, probe, t0, stage_seconds)
        memory_mb = probe.end()
        record = ChunkRecord.of(
            "batch",
            0,
            0,
            raw.num_rows,
            input_bytes=raw.nbytes,
            chunk_size_used=raw.num_rows,
            read_s=read_s,
            seconds=seconds,
            memory_mb=memory_mb,
            memory_limit_mb=None,
            memory_budget_mb=None,
            memory_exceeded=False,
        )
        if output is not None:
            writer = OutputWriter(Path(output), output_schema(fit))
            writer.write(features)
            writer.close()
    return RunResult(
        mode="batch",
        fit=fit,
        records=[record],
        rows_in=raw.num_rows,
        rows_out=features.num_rows,
        latency_s=time.perf_counter() - start,
        stage_seconds=stage_seconds,
        peak_memory_mb=memory_mb,
        threads=threads,
        chunk_size=raw.num_rows,
        final_chunk_size=raw.num_rows,
        memory_limit_mb=None,
        compute_limit=compute_limit,
        output=Path(output) if output else None,
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
                xv = float_values(x.combine_chunks()).to_numpy()
                yv = float_values(y.combine_chunks()).to_numpy()
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
