"""The chunk governor: hands each pass its chunks, measures them, and halves the chunk size at the limit.

With a memory limit, each pass first times two dry runs (1,024 and 2,048 rows) to fit
memory ≈ fixed + per_row × rows; a chunk predicted to exceed is recorded with
`memory_exceeded: true, predicted: true`, halved and re-predicted; a chunk that exceeds when
measured is recorded, halved and rerun. The smaller size is kept for the rest of the run; below
the minimum chunk size the run fails with MemoryLimitError.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from mlgraph.preprocessing.memory import MemoryModel, MemoryProbe, release_memory
from mlgraph.preprocessing.normalized import arrow_pool
from mlgraph.preprocessing.options import EngineOptions, MemoryLimitError
from mlgraph.preprocessing.records import STAGES, ChunkRecord
from mlgraph.preprocessing.sources import Source
from mlgraph.preprocessing.streams import RowStream

CALIBRATION_ROWS = 1024


@dataclass
class Attempt:
    """One chunk's result: the transformed table (transform pass) or a partial statistic, and timings."""

    table: pa.Table | None
    seconds: dict[str, float]
    extra: Any = None


Work = Callable[[pa.Table, MemoryProbe], Attempt]


@dataclass
class RunState:
    """What the passes of one streaming run share: the source, the limits, where the run stands."""

    source: Source
    options: EngineOptions
    probe: MemoryProbe
    chunk_size: int  # shared by every pass: once halved it stays halved for the run
    min_chunk_size: int
    memory_limit_mb: float | None
    threads: int
    spool: Path  # the normalized input, written by the statistics pass, read by the others
    spool_compression: str | None
    row: int = 0  # first row of the next chunk in the current pass
    records: list[ChunkRecord] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


def calibrate(stream: RowStream, work: Work, probe: MemoryProbe, rows: int = CALIBRATION_ROWS) -> MemoryModel | None:
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
    return MemoryModel.from_dry_runs(rows, measured[0], measured[1])


def guarded_chunks(
    stream: RowStream,
    run: RunState,
    stage: str,
    work: Work,
    first_chunk_id: int = 0,
    reserve_mb: float = 0.0,
) -> Iterator[tuple[int, Attempt, ChunkRecord]]:
    """Yield accepted (chunk_id, result, record); oversized attempts are recorded in `run.records` and halved.

    Callers drop the result before asking for the next chunk, so no two chunks are alive at once.
    `reserve_mb` is memory the stage holds outside its chunks (the CSV reader's read-ahead); the
    chunks' budget is the limit less that (at least a quarter of the limit).
    """
    configured_mb = run.memory_limit_mb
    budget_mb = max(configured_mb - reserve_mb, 0.25 * configured_mb) if configured_mb is not None else None
    floor, probe = run.min_chunk_size, run.probe
    chunk_id = first_chunk_id
    retries = 0
    # With a limit, chunks that would exceed it are halved before they are read; the reactive
    # check after each chunk stays as the safety net for what the model underestimates.
    model = calibrate(stream, work, probe) if budget_mb is not None and run.chunk_size > 2 * CALIBRATION_ROWS else None

    def record(
        rows: int,
        size: int,
        read_s: float,
        seconds: dict[str, float],
        memory_mb: float,
        exceeded: bool,
        input_bytes: int,
        predicted: bool = False,
    ) -> ChunkRecord:
        return ChunkRecord.of(
            stage,
            chunk_id,
            run.row,
            rows,
            input_bytes=input_bytes,
            chunk_size_used=size,
            read_s=read_s,
            seconds=seconds,
            memory_mb=memory_mb,
            memory_limit_mb=configured_mb,
            memory_budget_mb=budget_mb,
            memory_exceeded=exceeded,
            predicted=predicted,
            retries=retries,
        )

    while True:
        size = run.chunk_size
        while model is not None and size > floor and model.predict(size) > budget_mb:
            run.records.append(record(size, size, 0.0, {}, model.predict(size), True, input_bytes=0, predicted=True))
            size = max(floor, size // 2)
            run.chunk_size = size
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
        exceeded = budget_mb is not None and memory_mb > budget_mb
        attempt = record(chunk.num_rows, size, read_s, result.seconds, memory_mb, exceeded, input_bytes=chunk.nbytes)
        run.records.append(attempt)
        chunk_rows = chunk.num_rows
        if exceeded:
            if chunk.num_rows <= floor:
                raise MemoryLimitError(
                    f"{run.source.path}: {stage} chunk {chunk_id} of {chunk.num_rows} rows needs {memory_mb:.3g} MB "
                    f"of working memory, above its {budget_mb:g} MB budget (limit {configured_mb:g} MB) even at the "
                    f"{floor}-row minimum chunk size. Fix: raise the memory limit, or reduce the columns/categories "
                    "per row."
                )
            del result
            run.chunk_size = max(floor, chunk.num_rows // 2)
            stream.push_front(chunk)
            retries += 1
            continue
        if model is not None:
            model.update(chunk.num_rows, memory_mb)
        del chunk
        yield chunk_id, result, attempt
        del result
        # Trimming costs ~1.5 ms; it matters when a chunk is a sizable share of the budget.
        if budget_mb is not None and memory_mb > 0.1 * budget_mb:
            release_memory()
        run.row += chunk_rows
        chunk_id += 1
        retries = 0
