"""Reading a CSV or parquet source as a stream of record batches, with errors a user can act on."""

from __future__ import annotations

import contextlib
import csv
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlgraph.preprocessing.options import MB, EngineInputError, EngineOptions

CSV_BLOCK_BYTES = 4 * MB  # measured best for the streaming CSV reader on this machine class
CSV_BLOCK_CHOICES = (128 * 1024, 256 * 1024, 512 * 1024, 1 * MB, 2 * MB, 4 * MB)
SCHEMA_SAMPLE_BYTES = 1 * MB  # type inference reads this much of the file's head, whatever the block size


def csv_reader_reserve_mb(block_bytes: int) -> float:
    """RSS the streaming CSV reader holds besides the batches it hands out.

    pyarrow reads up to 32 blocks ahead in background threads. Measured (5M-row salary CSV, 2 cores):
    128 KiB blocks 37 MB, 256 KiB 49, 512 KiB 61, 1 MiB 83, 2 MiB 161, 4 MiB 237; 30 + 52 per MiB
    of block fits those within ~25%.
    """
    return 30.0 + 52.0 * block_bytes / MB


def csv_block_bytes(memory_limit_mb: float | None) -> int:
    """The largest block whose reader reserve stays within 40% of the memory limit (4 MiB unlimited)."""
    if memory_limit_mb is None:
        return CSV_BLOCK_BYTES
    fitting = [b for b in CSV_BLOCK_CHOICES if csv_reader_reserve_mb(b) <= 0.4 * memory_limit_mb]
    return max(fitting) if fitting else CSV_BLOCK_CHOICES[0]


# pyarrow's default CSV null markers, plus the empty string.
_NULL_MARKERS = frozenset(pacsv.ConvertOptions().null_values) | {""}


class Source:
    """A CSV or parquet file read as a stream of record batches with one fixed schema."""

    def __init__(self, path: str | Path, options: EngineOptions, block_bytes: int = CSV_BLOCK_BYTES):
        self.path = Path(path)
        self.options = options
        self.block_bytes = block_bytes
        if not self.path.exists():
            raise EngineInputError(f"{self.path}: file not found. Fix: check the path (train split or dataset.path).")
        if self.path.stat().st_size == 0:
            raise EngineInputError(f"{self.path}: the file is empty. Fix: give a file with a header row and data rows.")
        suffix = self.path.suffix.lower()
        if suffix == ".csv":
            self.kind = "csv"
            self.header = self._csv_header()
            self.schema = self._csv_schema()
        elif suffix in {".parquet", ".pq"}:
            self.kind = "parquet"
            try:
                self.schema = pq.read_schema(self.path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise EngineInputError(
                    f"{self.path}: not a readable parquet file ({exc}). Fix: rewrite it as parquet."
                ) from None
            self.header = self.schema.names
        else:
            raise EngineInputError(f"{self.path}: unsupported file type {suffix!r}. Fix: use a .csv or .parquet file.")
        self._check_columns()

    @property
    def identity(self) -> dict[str, Any]:
        """Cheap identity for resume decisions (hashing a file larger than memory costs a pass)."""
        stat = self.path.stat()
        return {"path": str(self.path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def _csv_header(self) -> list[str]:
        with open(self.path, newline="", encoding="utf-8", errors="replace") as fh:
            header = next(csv.reader(fh), [])
        if not header or all(not h.strip() for h in header):
            raise EngineInputError(f"{self.path}: no header row. Fix: the first line must name the columns.")
        return header

    def _csv_schema(self) -> pa.Schema:
        """Types inferred from the file's first MiB, widened so later blocks parse: ints become float64.

        Text columns are dictionary-encoded by the parser itself (in its threads). The head is read
        here rather than through a streaming reader, which would start its 32-block read-ahead.
        """
        with open(self.path, "rb") as fh:
            head = fh.read(SCHEMA_SAMPLE_BYTES)
            rest = fh.read(1)
            while rest and b"\n" not in head:  # a header longer than the sample
                head += rest + fh.read(SCHEMA_SAMPLE_BYTES)
                rest = fh.read(1)
        if rest:  # more follows: keep whole lines only
            head = head[: head.rfind(b"\n") + 1]
        try:
            first = pacsv.read_csv(pa.py_buffer(head), read_options=pacsv.ReadOptions(use_threads=False))
        except pa.ArrowInvalid as exc:
            raise EngineInputError(_diagnose_csv(self.path, exc, self.header, {})) from None
        inferred = first.schema
        if first.num_rows:
            self._reject_mostly_numeric_text(first.combine_chunks().to_batches()[0])
        fields = []
        for f in inferred:
            wanted = self._wanted_type(f.name, f.type)
            if pa.types.is_string(wanted) and f.name != self.options.target:
                wanted = pa.dictionary(pa.int32(), pa.string())
            fields.append(pa.field(f.name, wanted))
        return pa.schema(fields)

    def _reject_mostly_numeric_text(self, batch: pa.RecordBatch) -> None:
        """A column of numbers with a stray word is inferred as text; say so instead of one-hot encoding it."""
        for name in batch.schema.names:
            column = batch.column(name)
            if (
                not pa.types.is_string(column.type)
                or name in self.options.column_types
                or column.null_count == len(column)
            ):
                continue
            numeric = pc.match_substring_regex(column, r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
            share = (pc.sum(numeric).as_py() or 0) / (len(column) - column.null_count)
            if 0.9 <= share < 1.0:
                bad = pc.index(pc.fill_null(numeric, True), False).as_py()
                raise EngineInputError(
                    f"{self.path}: line {bad + 2}, column {name!r}: {column[bad].as_py()!r} is not a number, but "
                    f"{share:.0%} of the column's first {len(column)} values are. Fix: correct or blank the value, "
                    f"or declare {name!r} as categorical under `columns:` if it really is text."
                )

    def _wanted_type(self, name: str, inferred: pa.DataType) -> pa.DataType:
        declared = self.options.column_types.get(name)
        if name == self.options.target and self.options.task == "classification":
            return (
                pa.string()
                if declared == "categorical"
                else inferred
                if not pa.types.is_null(inferred)
                else pa.string()
            )
        if declared in {"numeric", "integer"}:
            return pa.float64()
        if declared == "categorical":
            return pa.string()
        if declared == "boolean":
            return pa.bool_()
        if declared == "datetime" or name == self.options.time_column:
            return pa.timestamp("s") if not pa.types.is_timestamp(inferred) else inferred
        if pa.types.is_integer(inferred) or pa.types.is_floating(inferred) or pa.types.is_null(inferred):
            return pa.float64()
        return inferred

    def _check_columns(self) -> None:
        names = list(self.schema.names)
        seen: set[str] = set()
        dupes = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
        if dupes:
            raise EngineInputError(f"{self.path}: duplicate column name(s) {dupes}. Fix: make column names unique.")
        if self.options.target not in names:
            raise EngineInputError(
                f"{self.path}: target column {self.options.target!r} not found (columns: {', '.join(names)}). "
                "Fix: set `target` to one of these columns or add the column to the file."
            )
        if self.options.time_column and self.options.time_column not in names:
            raise EngineInputError(
                f"{self.path}: time column {self.options.time_column!r} not found. Fix: set `time_column` to a "
                "timestamp column of the file."
            )

    def batches(self, rows_hint: int) -> Iterator[pa.RecordBatch]:
        """The file's record batches, parse errors turned into EngineInputError naming the line."""
        if self.kind == "parquet":
            yield from self._parquet_batches(rows_hint)
            return
        options = pacsv.ConvertOptions(column_types=self.schema, strings_can_be_null=True)
        try:
            reader = pacsv.open_csv(
                self.path, read_options=pacsv.ReadOptions(block_size=self.block_bytes), convert_options=options
            )
            with contextlib.closing(reader):
                while True:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        return
                    yield batch
        except pa.ArrowInvalid as exc:
            raise EngineInputError(
                _diagnose_csv(self.path, exc, self.header, dict(zip(self.schema.names, self.schema.types, strict=True)))
            ) from None

    def _parquet_batches(self, rows_hint: int) -> Iterator[pa.RecordBatch]:
        casts = self._parquet_casts()
        offset = 0
        with pq.ParquetFile(self.path) as pf:
            for batch in pf.iter_batches(batch_size=max(1024, rows_hint)):
                for name, target_type in casts.items():
                    i = batch.schema.get_field_index(name)
                    batch = batch.set_column(
                        i, name, _cast_or_explain(batch.column(i), target_type, self.path, name, offset)
                    )
                offset += batch.num_rows
                yield batch

    def _parquet_casts(self) -> dict[str, pa.DataType]:
        casts: dict[str, pa.DataType] = {}
        for f in self.schema:
            wanted = self._wanted_type(f.name, f.type)
            if f.name == self.options.target and self.options.task == "classification":
                continue
            if pa.types.is_integer(f.type) and pa.types.is_floating(wanted):
                continue  # ints are read as floats by the operators anyway
            if wanted != f.type and not (pa.types.is_timestamp(f.type) and pa.types.is_timestamp(wanted)):
                if pa.types.is_floating(wanted) and pa.types.is_floating(f.type):
                    continue
                casts[f.name] = wanted
        return casts

    def read_all(self) -> pa.Table:
        """The whole file in memory (batch mode)."""
        batches = list(self.batches(1 << 20))
        return pa.Table.from_batches(batches) if batches else self.stream_schema().empty_table()

    def stream_schema(self) -> pa.Schema:
        if self.kind == "csv":
            return self.schema
        casts = self._parquet_casts()
        return pa.schema([pa.field(f.name, casts.get(f.name, f.type)) for f in self.schema])


def _cast_or_explain(arr: pa.Array, target_type: pa.DataType, path: Path, column: str, offset: int) -> pa.Array:
    try:
        return pc.cast(arr, target_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = arr.to_pylist()
        for i, value in enumerate(values):
            if value is None:
                continue
            try:
                pc.cast(pa.array([value]), target_type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise EngineInputError(
                    f"{path}: column {column!r}, data row {offset + i + 1}: {value!r} is not a valid {target_type}. "
                    "Fix: correct or blank the value, or declare the column's type under `columns:`."
                ) from None
        raise


def _diagnose_csv(path: Path, exc: Exception, header: list[str], types: Mapping[str, pa.DataType]) -> str:
    """Find the line behind a pyarrow CSV error (pyarrow names neither line nor column name)."""
    message = str(exc)
    column_match = re.search(r"column #(\d+)", message)
    column = int(column_match[1]) if column_match else None
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                return (
                    f"{path}: line {reader.line_num}: expected {len(header)} fields ({', '.join(header)}), "
                    f"found {len(row)}. Fix: give every row the header's {len(header)} fields (quote values "
                    "that contain commas)."
                )
            if column is None or column >= len(row):
                continue
            value = row[column]
            if value in _NULL_MARKERS:
                continue
            wanted = types.get(header[column])
            if wanted is None or pa.types.is_floating(wanted) or pa.types.is_integer(wanted):
                try:
                    float(value)
                    continue
                except ValueError:
                    kind = "a number"
            else:
                try:
                    pc.cast(pa.array([value]), wanted)
                    continue
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    kind = f"a valid {wanted}"
            return (
                f"{path}: line {reader.line_num}, column {header[column]!r}: {value!r} is not {kind}. Fix: correct "
                f"or blank the value, or declare {header[column]!r} as categorical under `columns:` if it is text."
            )
    return f"{path}: cannot parse as CSV: {message}. Fix: every row needs the header's {len(header)} fields and each column one type."
