"""The prediction log's one writer: a thread fed by a queue, so no request waits on the disk.

Requests `submit` a finished prediction (its rows and outputs, not yet formatted); the thread formats
the records (mlgraph.core.prediction_log) every `drain_interval` (50 ms), appends them in one write, and hands
them to the OS right away (`flush`: a killed process loses nothing the kernel already holds), fsyncs
at least every `sync_interval` seconds while anything is unsynced, and rotates the file by size
(`rotated_name`) so that no file passes `max_bytes` unless one request's lines alone do. `close` drains
the queue, fsyncs and stops: the service calls it after uvicorn has finished every in-flight request.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlgraph.core.prediction_log import INPUTS, MODEL_VERSION, OUTPUT, REQUEST_ID, ROW, TIME, rotated_name

LOG = logging.getLogger("mlgraph.serving.log")
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """One answered request: its rows' inputs and the outputs the response returned, in row order."""

    when: float  # time.time() when the prediction was made
    request_id: str
    model_version: str
    inputs: Sequence[dict[str, Any]]
    outputs: Sequence[dict[str, Any]]


_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=True).encode  # one encoder: json.dumps builds one per call


def format_entry(entry: Entry) -> str:
    """The entry's JSON lines, one per row (keys in mlgraph.core.prediction_log.RECORD_FIELDS order)."""
    stamp = datetime.fromtimestamp(entry.when, UTC).isoformat()
    head = f'{{"{TIME}":{_ENCODE(stamp)},"{REQUEST_ID}":{_ENCODE(entry.request_id)},"{ROW}":'
    version = f',"{MODEL_VERSION}":{_ENCODE(entry.model_version)},"{INPUTS}":'
    return "".join(
        f'{head}{row}{version}{_ENCODE(inputs)},"{OUTPUT}":{_ENCODE(output)}}}\n'
        for row, (inputs, output) in enumerate(zip(entry.inputs, entry.outputs, strict=True))
    )


class PredictionLogWriter:
    """Appends entries to `path` from one background thread (start → submit… → close)."""

    def __init__(
        self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, sync_interval: float = 1.0, drain_interval: float = 0.05
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"prediction log max_bytes must be positive, got {max_bytes}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.sync_interval = sync_interval
        self.records = 0  # lines written (all files)
        self.rotations = 0
        self.failures = 0  # writes that raised (logged; the writer keeps going)
        self.drain_interval = min(drain_interval, sync_interval)
        self._queue: queue.SimpleQueue[Entry] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._file: Any = None
        self._size = 0

    def start(self) -> PredictionLogWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()
        self._thread.start()
        return self

    def submit(self, entry: Entry) -> None:
        """Queue an answered request (never blocks on the disk)."""
        self._queue.put(entry)

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued so far, fsync, and stop the thread (call once no more submits come)."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            LOG.error(
                "prediction log writer did not finish within %.0f s; %d entries pending", timeout, self._queue.qsize()
            )

    # The thread.

    def _open(self) -> None:
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open across writes, closed on rotate/close
        self._size = self._file.tell()

    def _run(self) -> None:
        # The thread wakes every `drain_interval` and takes everything queued, rather than blocking on the
        # queue: a blocked reader would be woken (and take the GIL) on every request's put.
        dirty_since: float | None = None
        while True:
            stopping = self._stop.wait(self.drain_interval)
            batch = []
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
                dirty_since = dirty_since or time.monotonic()
            if dirty_since is not None and (stopping or time.monotonic() - dirty_since >= self.sync_interval):
                self._sync()
                dirty_since = None
            if stopping:
                break
        self._close_file()

    def _write(self, batch: list[Entry]) -> None:
        """Append the batch, rotating first whenever the next entry would take the file past max_bytes."""
        try:
            chunk: list[bytes] = []
            pending = rows = 0
            for entry in batch:
                data = format_entry(entry).encode("utf-8")
                if self._size + pending > 0 and self._size + pending + len(data) > self.max_bytes:
                    self._emit(chunk, pending, rows)
                    chunk, pending, rows = [], 0, 0
                    self._rotate()
                chunk.append(data)
                pending += len(data)
                rows += len(entry.inputs)
            self._emit(chunk, pending, rows)
        except Exception:  # a full disk must not kill the writer; the next batch tries again
            self.failures += 1
            LOG.exception("writing %d prediction log entries to %s failed", len(batch), self.path)

    def _emit(self, chunk: list[bytes], size: int, rows: int) -> None:
        if chunk:
            self._file.write(b"".join(chunk))
            self._file.flush()  # into the kernel: survives the process being killed
            self._size += size
            self.records += rows

    def _sync(self) -> None:
        try:
            os.fsync(self._file.fileno())
        except OSError:
            self.failures += 1
            LOG.exception("fsync of %s failed", self.path)

    def _rotate(self) -> None:
        self._sync()
        self._file.close()
        target = rotated_name(self.path)
        while target.exists():  # two rotations within one microsecond
            target = rotated_name(self.path, datetime.now(UTC))
        os.replace(self.path, target)
        self.rotations += 1
        self._open()

    def _close_file(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
