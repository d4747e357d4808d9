"""The passes: statistics and fit (streaming, from the source then the spool), transform, and batch.

1. statistics: reads the source, normalizes it and spools it to an Arrow IPC file, merging
   per-chunk moments and category counts of the rows that have a target.
2. fit: preprocess + feature_engineering per chunk from the spool, summing the features'
   cross-products; they fix feature selection (|r| above the threshold) and scaling.
3. transform: the four operators per chunk from the spool; with a spill directory each chunk is
   written there and the manifest rewritten after it, so an interrupted run resumes.

batch: the same statistics and operators on the whole table as one chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa

from mlgraph.preprocessing.fitting import Fit, GramAccumulator, StatisticsAccumulator, finish_selection
from mlgraph.preprocessing.governor import Attempt, RunState, guarded_chunks
from mlgraph.preprocessing.memory import MemoryProbe
from mlgraph.preprocessing.normalized import Roles, normalize, normalize_table
from mlgraph.preprocessing.operators import (
    Block,
    encode_scale,
    feature_columns,
    feature_engineering,
    feature_selection,
    output_schema,
    preprocess,
)
from mlgraph.preprocessing.options import EngineInputError, EngineOptions
from mlgraph.preprocessing.records import ChunkRecord
from mlgraph.preprocessing.sources import csv_reader_reserve_mb
from mlgraph.preprocessing.spill import Manifest, SpillDir
from mlgraph.preprocessing.streams import OutputWriter, RowStream, prefetched, spool_batches


def clean_and_derive(chunk: pa.Table, fit: Fit, probe: MemoryProbe, seconds: dict[str, float]) -> Block:
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


def _target_type(schema: pa.Schema, options: EngineOptions, where: object) -> pa.DataType:
    """The target's working type; a regression or forecasting target must be numeric."""
    t = schema.field(options.target).type
    if options.task == "classification":
        return t
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)):
        raise EngineInputError(
            f"{where}: target {options.target!r} has type {t} but a {options.task} target must be numeric. "
            "Fix: clean the column or use task: classification."
        )
    return pa.float64()


def fit_passes(run: RunState) -> Fit:
    """Passes 1 and 2: statistics (spooling the normalized input on the way), then selection."""
    t0 = time.perf_counter()
    src, options = run.source, run.options
    schema = src.stream_schema()
    roles = Roles.of(schema, options, src.path)
    target_type = _target_type(schema, options, src.path)
    stats = StatisticsAccumulator(roles, options, target_type, src.path)
    partial = run.spool.with_name(run.spool.name + ".partial")
    sink = pa.OSFile(str(partial), "wb")
    writer: pa.ipc.RecordBatchStreamWriter | None = None

    def normalized(it: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        nonlocal writer
        for batch in it:
            batch = normalize(batch, roles, options.task)
            if writer is None:
                writer = pa.ipc.new_stream(
                    sink, batch.schema, options=pa.ipc.IpcWriteOptions(compression=run.spool_compression)
                )
            writer.write_batch(batch)
            yield batch

    def statistics_work(chunk: pa.Table, probe: MemoryProbe) -> Attempt:
        # An attempt over the limit is redone in smaller pieces: only accepted chunks are merged.
        s0 = time.perf_counter()
        part = StatisticsAccumulator(roles, options, target_type, src.path)
        part.add(chunk, row_offset=run.row)
        return Attempt(None, {"statistics": time.perf_counter() - s0}, part)

    run.row = 0
    try:
        stream = RowStream(prefetched(normalized(src.batches(run.chunk_size)), run.threads))
        # The CSV reader runs only in this pass (the later ones read the spool); budget for its read-ahead.
        reserve = csv_reader_reserve_mb(src.block_bytes) if src.kind == "csv" else 0.0
        for _, attempt, _ in guarded_chunks(stream, run, "statistics", statistics_work, reserve_mb=reserve):
            stats.merge(attempt.extra)
            del attempt
        if writer is None:  # no rows at all: keep an empty spool so the later passes see a stream
            writer = pa.ipc.new_stream(
                sink, normalize(pa.RecordBatch.from_pylist([], schema=schema), roles, options.task).schema
            )
        writer.close()
        sink.close()
    except BaseException:
        sink.close()
        partial.unlink(missing_ok=True)
        raise
    fit = stats.finish()
    partial.replace(run.spool)
    run.stage_seconds["statistics"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    gram = GramAccumulator(len(fit.features))

    def fit_work(chunk: pa.Table, probe: MemoryProbe) -> Attempt:
        seconds: dict[str, float] = {}
        block = clean_and_derive(chunk, fit, probe, seconds)
        s = time.perf_counter()
        part = GramAccumulator(len(fit.features))
        part.shift = gram.shift
        part.add(feature_columns(block, fit))
        seconds["feature_selection"] = time.perf_counter() - s
        return Attempt(None, seconds, part)

    run.row = 0
    stream = RowStream(prefetched(spool_batches(run.spool), run.threads))
    for _, attempt, _ in guarded_chunks(stream, run, "fit", fit_work):
        gram.merge(attempt.extra)
        del attempt
    finish_selection(fit, gram)
    run.stage_seconds["fit"] = time.perf_counter() - t1
    return fit


def transform_pass(
    run: RunState,
    fit: Fit,
    manifest: Manifest,
    spill: SpillDir | None,
    output: Path | None,
    collect: bool,
    on_chunk: Callable[[ChunkRecord], None] | None,
) -> tuple[pa.Table | None, int]:
    """Pass 3: the four operators per chunk after the manifest's durable ones; spill + manifest per chunk.

    Returns the features (when `collect`) and the rows out, resumed chunks included.
    """
    t0 = time.perf_counter()
    schema = output_schema(fit)
    done = manifest.chunks
    run.row = sum(e.rows for e in done)
    stream = RowStream(prefetched(spool_batches(run.spool), run.threads))
    stream.skip(run.row)
    collected: list[pa.Table] = []
    writer = OutputWriter(output, schema) if output is not None and spill is None else None

    def transform_work(chunk: pa.Table, probe: MemoryProbe) -> Attempt:
        seconds: dict[str, float] = {}
        block = clean_and_derive(chunk, fit, probe, seconds)
        s = time.perf_counter()
        block = feature_selection(block, fit)
        seconds["feature_selection"] = time.perf_counter() - s
        s = time.perf_counter()
        table = encode_scale(block, fit)
        seconds["encode_scale"] = time.perf_counter() - s
        return Attempt(table, seconds)

    rows_out = sum(e.rows_out for e in done)
    try:
        for chunk_id, attempt, record in guarded_chunks(
            stream, run, "transform", transform_work, first_chunk_id=len(done)
        ):
            table = attempt.table
            rows_out += table.num_rows
            if spill is not None:
                entry = spill.write_chunk(chunk_id, table, record, next_chunk_size=run.chunk_size)
                record.spilled = True
                done.append(entry)
                manifest.records = [r for r in run.records if r.stage == "transform"]
                spill.save_manifest(manifest)
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
            writer = OutputWriter(output, schema) if output is not None else None
            collected = []
            for entry in done:
                table = spill.read_chunk(entry)
                if writer is not None:
                    writer.write(table)
                if collect:
                    collected.append(table)
            if writer is not None:
                writer.close()
        manifest.complete = True
        spill.save_manifest(manifest)
    run.stage_seconds["transform"] = time.perf_counter() - t0
    table = (pa.concat_tables(collected) if collected else schema.empty_table()) if collect else None
    return table, rows_out


def batch_pass(
    raw: pa.Table,
    where: object,
    options: EngineOptions,
    probe: MemoryProbe,
    started: float,
    stage_seconds: dict[str, float],
) -> tuple[Fit, pa.Table, dict[str, float]]:
    """Statistics, fit and transform of the whole table as one chunk: (fit, features, seconds per operator).

    `started` is when reading began: the statistics stage counts the read, as the streaming one does.
    """
    roles = Roles.of(raw.schema, options, where)
    target_type = pa.float64() if options.task != "classification" else raw.schema.field(options.target).type
    table = normalize_table(raw, roles, options.task)
    s = time.perf_counter()
    stats = StatisticsAccumulator(roles, options, target_type, where)
    stats.add(table)
    fit = stats.finish()
    stage_seconds["statistics"] = time.perf_counter() - started
    seconds: dict[str, float] = {"statistics": time.perf_counter() - s}
    t1 = time.perf_counter()
    block = clean_and_derive(table, fit, probe, seconds)
    s = time.perf_counter()
    gram = GramAccumulator(len(fit.features))
    gram.add(feature_columns(block, fit))
    finish_selection(fit, gram)
    block = feature_selection(block, fit)
    seconds["feature_selection"] = time.perf_counter() - s
    stage_seconds["fit"] = time.perf_counter() - t1
    s = time.perf_counter()
    features = encode_scale(block, fit)
    seconds["encode_scale"] = time.perf_counter() - s
    stage_seconds["transform"] = seconds["encode_scale"]
    return fit, features, seconds
