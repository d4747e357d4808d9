"""The newest N lines of the prediction log, read fast: numeric features as arrays, categories and predictions as counts.

The log (mlgraph/core/prediction_log.py) is read newest first: whole rotated files are skipped once the
window is full, and the file the window starts in is read from its end in blocks, so a report costs
the window, not the log. The window's bytes go to pyarrow's JSON reader (multi-threaded, a schema
from the baseline: numeric features float64, categorical ones strings, the prediction's type from the
first record) about `PARSE_BYTES` at a time. A block it rejects (a torn or garbage line, a value of
another type) is parsed again line by line with `json.loads`: a bad line costs its block's speed and
is counted, never fatal. A last line without its newline is still being written: it is left out.
Blank lines count toward the window but are not records.

The window is bounded in bytes as well as lines (`max_bytes`; the drift report passes
mlgraph.monitoring.drift.window_byte_cap): lines of hostile size cannot make a 5,000-line window
gigabytes. Reading stops once that many bytes were read; the window is then the newest whole lines
within them, and says so (`capped`). Only regular files are read: a symlink or FIFO at a log file's
name is neither followed nor opened (mlgraph.core.untrusted.open_regular).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlgraph.core.prediction_log import INPUTS, OUTPUT, PREDICTION, TIME, log_files
from mlgraph.core.untrusted import open_regular
from mlgraph.monitoring.baseline import label_key

READ_BLOCK = 8 << 20  # bytes read from a file's end per step
PARSE_BYTES = 32 << 20  # bytes per pyarrow call (a bad line re-parses one such block in Python)
ARROW_BLOCK = 1 << 20  # pyarrow's own block size: its unit of parallel parsing


@dataclass
class Window:
    """The newest records: numeric features as float arrays (NaN = missing); categories and predictions as counts."""

    rows: int = 0
    bad_lines: int = 0
    first_time: str | None = None
    last_time: str | None = None
    files: list[str] = field(default_factory=list)
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    categorical: dict[str, Counter] = field(default_factory=dict)  # category → count (None: missing)
    predictions: Counter = field(default_factory=Counter)  # label_key(prediction) → count (None: missing)
    bytes_read: int = 0
    max_bytes: int | None = None
    capped: bool = False  # the byte cap stopped the read before the window had its lines


@dataclass
class Newest:
    """The newest lines of a log: byte blocks (oldest first), the files they came from, and what reading cost."""

    blocks: list[bytes]
    files: list[Path]
    lines: int
    bytes_read: int
    capped: bool  # stopped by the byte budget, with lines still wanted and more bytes before


def _tail(path: Path, wanted: int, budget: int | None) -> tuple[bytes, int, int, bool]:
    """(the last `wanted` complete lines of `path` within `budget` bytes read, their count, bytes read, capped)."""
    with open_regular(path) as handle:
        position = handle.seek(0, os.SEEK_END)
        chunks: list[bytes] = []
        newlines = read = 0
        while position > 0 and newlines <= wanted and (budget is None or read < budget):
            step = min(READ_BLOCK, position, budget - read if budget is not None else READ_BLOCK)
            position -= step
            handle.seek(position)
            chunks.append(handle.read(step))
            read += len(chunks[-1])
            newlines += chunks[-1].count(b"\n")
    data = b"".join(reversed(chunks))
    data = data[: data.rfind(b"\n") + 1]  # a last line without its newline is still being written
    if position > 0:
        data = data[data.find(b"\n") + 1 :]  # the first piece may be the tail of a line begun before `position`
    lines = data.count(b"\n")
    if lines > wanted:
        start = len(data) - 1
        for _ in range(wanted):
            start = data.rfind(b"\n", 0, start)
        data, lines = data[start + 1 :], wanted
    return data, lines, read, position > 0 and lines < wanted


def tail(path: Path, wanted: int, max_bytes: int | None = None) -> tuple[bytes, int]:
    """The last `wanted` complete lines of `path` as bytes (each ending in a newline), and how many lines that is;
    with `max_bytes`, only the whole lines within the last `max_bytes` bytes."""
    data, lines, _, _ = _tail(path, wanted, max_bytes)
    return data, lines


def read_newest(current: Path, wanted: int, max_bytes: int | None = None) -> Newest:
    """The newest `wanted` lines across the log's files, reading at most `max_bytes` bytes in all."""
    picked: list[bytes] = []
    used: list[Path] = []
    remaining, spent, capped = wanted, 0, False
    for path in reversed(log_files(current)):
        if remaining <= 0 or capped:
            break
        budget = None if max_bytes is None else max_bytes - spent
        if budget is not None and budget <= 0:
            capped = True
            break
        try:
            data, lines, read, capped = _tail(path, remaining, budget)
        except FileNotFoundError:  # rotated away (or deleted by retention) between listing and reading
            continue
        spent += read
        if lines:
            picked.append(data)
            used.append(path)
            remaining -= lines
    return Newest(list(reversed(picked)), list(reversed(used)), wanted - remaining, spent, capped)


def newest(current: Path, wanted: int, max_bytes: int | None = None) -> tuple[list[bytes], list[Path]]:
    """Byte blocks holding the newest `wanted` lines across the log's files (oldest first), and those files."""
    found = read_newest(current, wanted, max_bytes)
    return found.blocks, found.files


def _json_type(value: Any):
    import pyarrow as pa

    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int | float):
        return pa.float64()
    return pa.string()


def _schema(numeric: list[str], categorical: list[str], prediction_sample: Any):
    import pyarrow as pa

    inputs = [pa.field(n, pa.float64()) for n in numeric] + [pa.field(c, pa.string()) for c in categorical]
    return pa.schema(
        [
            pa.field(TIME, pa.string()),
            pa.field(INPUTS, pa.struct(inputs)),
            pa.field(OUTPUT, pa.struct([pa.field(PREDICTION, _json_type(prediction_sample))])),
        ]
    )


def parse_record(line: bytes) -> dict | None:
    """One line as a record with `inputs` and `output` objects, or None when it is not one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get(INPUTS), dict)
        or not isinstance(record.get(OUTPUT), dict)
    ):
        return None
    return record


def _first_prediction(blocks: list[bytes]) -> Any:
    for block in blocks:
        for line in block.split(b"\n", 64)[:64]:
            record = parse_record(line)
            if record is not None:
                return record[OUTPUT].get(PREDICTION)
    return None


def _number(value: Any) -> float:
    if isinstance(value, bool | int | float):
        return float(value)
    return math.nan  # missing, or not a number (counted as missing by the report)


class _Gather:
    """Columns and counts gathered block by block."""

    def __init__(self, numeric: list[str], categorical: list[str]):
        self.numeric: dict[str, list[np.ndarray]] = {n: [] for n in numeric}
        self.categorical: dict[str, Counter] = {c: Counter() for c in categorical}
        self.predictions: Counter = Counter()
        self.times: list[str] = []
        self.rows = 0

    def add_table(self, table) -> None:
        import pyarrow.compute as pc

        inputs, output = table.column(INPUTS).combine_chunks(), table.column(OUTPUT).combine_chunks()
        for name in self.numeric:
            self.numeric[name].append(inputs.field(name).to_numpy(zero_copy_only=False).astype(np.float64, copy=False))
        for name, counts in self.categorical.items():
            _count(counts, pc.value_counts(inputs.field(name)))
        _count(self.predictions, pc.value_counts(output.field(PREDICTION)), label_key)
        bounds = pc.min_max(table.column(TIME))
        self.times += [t for t in (bounds["min"].as_py(), bounds["max"].as_py()) if t is not None]
        self.rows += table.num_rows

    def add_records(self, records: list[dict]) -> None:
        for name in self.numeric:
            self.numeric[name].append(np.array([_number(r[INPUTS].get(name)) for r in records], dtype=np.float64))
        for name, counts in self.categorical.items():
            counts.update(None if r[INPUTS].get(name) is None else label_key(r[INPUTS][name]) for r in records)
        self.predictions.update(
            None if r[OUTPUT].get(PREDICTION) is None else label_key(r[OUTPUT][PREDICTION]) for r in records
        )
        self.times += [r[TIME] for r in records if isinstance(r.get(TIME), str)]
        self.rows += len(records)


def _count(counts: Counter, value_counts, key=None) -> None:
    for item in value_counts.to_pylist():
        value = item["values"]
        counts[None if value is None else (key(value) if key else value)] += item["counts"]


def _parse_block(block: bytes, schema, gather: _Gather) -> int:
    """Add a block's records to `gather`; returns how many non-blank lines were not records."""
    import pyarrow as pa
    from pyarrow import json as pa_json

    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    lines = block.count(b"\n")
    try:
        table = pa_json.read_json(
            pa.BufferReader(pa.py_buffer(block)),
            parse_options=options,
            read_options=pa_json.ReadOptions(block_size=ARROW_BLOCK),
        )
        complete = table.column(INPUTS).null_count == 0 and table.column(OUTPUT).null_count == 0
        if complete and table.num_rows == lines:
            gather.add_table(table)
            return 0
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    candidates = [line for line in block.split(b"\n") if line.strip()]
    records = [r for r in map(parse_record, candidates) if r is not None]
    gather.add_records(records)
    return len(candidates) - len(records)


def _split(data: bytes, size: int) -> list[bytes]:
    """`data` in pieces of about `size` bytes, cut after a newline."""
    pieces, start = [], 0
    while start < len(data):
        end = data.find(b"\n", min(start + size, len(data)) - 1) + 1 or len(data)
        pieces.append(data[start:end])
        start = end
    return pieces


def read_window(
    current: Path, size: int, numeric: list[str], categorical: list[str], max_bytes: int | None = None
) -> Window:
    """The newest `size` lines of the log at `current` (within `max_bytes` bytes read), parsed into a Window
    (the baseline names the features)."""
    found = read_newest(current, size, max_bytes)
    blocks = found.blocks
    window = Window(
        files=[str(p) for p in found.files], bytes_read=found.bytes_read, max_bytes=max_bytes, capped=found.capped
    )
    if not blocks:
        return window
    schema = _schema(numeric, categorical, _first_prediction(blocks))
    gather = _Gather(numeric, categorical)
    for block in blocks:
        for piece in _split(block, PARSE_BYTES):
            window.bad_lines += _parse_block(piece, schema, gather)
    window.rows = gather.rows
    window.numeric = {n: np.concatenate(parts) if parts else np.array([]) for n, parts in gather.numeric.items()}
    window.categorical, window.predictions = gather.categorical, gather.predictions
    if gather.times:
        window.first_time, window.last_time = min(gather.times), max(gather.times)
    return window
