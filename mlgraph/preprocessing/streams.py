"""Chunks in and out: record batches re-cut into chunks, read ahead in a thread, the spool, the output file."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlgraph.core.atomic import atomic_path

OUTPUT_ROW_GROUP = 65_536  # fixed, so output bytes do not depend on how rows were chunked


class RowStream:
    """Record batches re-cut into chunks of exactly the requested number of rows."""

    def __init__(self, batches: Iterable[pa.RecordBatch]):
        self._batches = iter(batches)
        self._buffer: deque[pa.RecordBatch] = deque()
        self._buffered = 0
        self._schema: pa.Schema | None = None
        self.rows_read = 0

    def _fill(self, n: int) -> None:
        while self._buffered < n:
            try:
                batch = next(self._batches)
            except StopIteration:
                return
            if self._schema is None:
                self._schema = batch.schema
            if batch.num_rows:
                self._buffer.append(batch)
                self._buffered += batch.num_rows
                self.rows_read += batch.num_rows

    def take(self, n: int) -> pa.Table | None:
        self._fill(n)
        if self._buffered == 0:
            return None
        parts: list[pa.RecordBatch] = []
        need = n
        while need and self._buffer:
            head = self._buffer.popleft()
            if head.num_rows <= need:
                parts.append(head)
                need -= head.num_rows
            else:
                parts.append(head.slice(0, need))
                self._buffer.appendleft(head.slice(need))
                need = 0
        taken = n - need
        self._buffered -= taken
        return pa.Table.from_batches(parts, schema=self._schema)

    def push_front(self, table: pa.Table) -> None:
        """Give rows back (a chunk being retried at a smaller size)."""
        for batch in reversed(table.to_batches()):
            if batch.num_rows:
                self._buffer.appendleft(batch)
                self._buffered += batch.num_rows

    def skip(self, n: int) -> None:
        while n > 0:
            table = self.take(min(n, 1 << 20))
            if table is None:
                return
            n -= table.num_rows


class OutputWriter:
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


def spool_batches(path: Path) -> Iterator[pa.RecordBatch]:
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
