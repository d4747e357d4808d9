"""The prediction log's one writer: a thread fed by a bounded queue, so no request waits on the disk.

Requests `submit` a finished prediction (its rows and outputs, not yet formatted); the thread formats
the records (mlgraph.core.prediction_log) every `drain_interval` (50 ms), appends them in one write
straight into the kernel (a killed process loses nothing the kernel already holds), fsyncs at least
every `sync_interval` seconds while anything is unsynced, and rotates the file by size (`rotated_name`)
so that no file passes `max_bytes` unless one request's lines alone do. Rotated files past retention
(`retention_bytes`, `retention_days`; mlgraph.core.prediction_log.prune_rotated) are deleted after each
rotation and once a minute. `close` drains the queue, fsyncs and stops: the service calls it after
uvicorn has finished every in-flight request.

What can go wrong, and what the writer does:
- the file is moved or deleted (an operator's logrotate): before each write batch the path is stat'ed
  and compared (device, inode) with the open file, as `logging.handlers.WatchedFileHandler` does; a
  different or missing file is reopened, so nothing more goes to the old inode;
- the path is a symlink, FIFO, directory or device (planted on the drive), or its directory leads out of
  the drive: it is opened only by `mlgraph.core.untrusted.open_append` (no symlink followed, regular
  files only, the directory inside `within`), so it is refused: an error, counted and retried. The entry
  is not moved aside: the writer deletes or renames only files it rotated itself, and an entry it did
  not make is the operator's to inspect (evidence, or a deliberate link to another disk);
- a write fails (disk full, I/O error, permissions): nothing is dropped. The unwritten records stay at
  the head of the backlog and are retried with exponential backoff (`drain_interval` doubling up to
  `retry_max`); a write cut short continues where it stopped (or, in a reopened file, restarts its line);
- the thread never dies of an exception: each is counted (`write_errors`), the last kept (`last_error`),
  and the writer shows unhealthy (`status().healthy`) until a write succeeds again;
- the queue is bounded (`max_pending_rows` rows, `max_pending_bytes` estimated bytes): past it, `submit`
  raises `LogFull` and counts it (`rejected`); the service answers that request 503, never a 200 whose
  prediction is silently not logged. One request is always accepted into an empty queue.

`flush(timeout)` waits until everything submitted before the call has been written (the service's
monitoring endpoints call it, so a report counts every prediction answered before it was asked for).

Why this module is long: one thread owns the file through all of the above (queue, backlog, partial
writes, rotation, reopening, retention, backoff, flush); they share one state (the open descriptor, its
identity and size, the backlog's first unwritten byte), which split across modules would be harder to
keep right.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from mlgraph.core.prediction_log import (
    DEFAULT_RETENTION_BYTES,
    DEFAULT_RETENTION_DAYS,
    INPUTS,
    MODEL_VERSION,
    OUTPUT,
    REQUEST_ID,
    ROW,
    TIME,
    prune_rotated,
    rotated_name,
)
from mlgraph.core.untrusted import Unusable, open_append, printable

LOG = logging.getLogger("mlgraph.serving.log")
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# About 20 s of the service's peak rate (5,000 predictions/s) queued while the disk fails, then 503s.
DEFAULT_MAX_PENDING_ROWS = 100_000
DEFAULT_MAX_PENDING_BYTES = 128 * 1024 * 1024
DEFAULT_FLUSH_SECONDS = 5.0  # how long a monitoring endpoint waits for the log to catch up
RETRY_MAX_SECONDS = 5.0
RETENTION_CHECK_SECONDS = 60.0
ROW_OVERHEAD = 256  # a record's bytes besides its inputs: time, ids, version, output
WRITE_CHUNK = 4 << 20  # bytes per write call (a backlog after an outage is written in pieces)


@dataclass(frozen=True)
class Entry:
    """One answered request: its rows' inputs and the outputs the response returned, in row order."""

    when: float  # time.time() when the prediction was made
    request_id: str
    model_version: str
    inputs: Sequence[dict[str, Any]]
    outputs: Sequence[dict[str, Any]]
    body_bytes: int = 0  # the request body's size: what the queue's byte bound estimates the lines by

    @property
    def cost(self) -> int:
        """Estimated bytes of the entry's lines (what it holds of the queue's byte bound)."""
        return self.body_bytes + ROW_OVERHEAD * len(self.inputs)


class LogFull(Exception):
    """The writer's queue is at its bound: the prediction cannot be logged now (the service answers 503)."""


def _plain(value: Any) -> Any:
    # numpy scalars and anything else a model may return: their Python value, else their text.
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


# One encoder (json.dumps builds one per call); `default` only runs for values JSON has no type for.
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=True, default=_plain).encode


def format_entry(entry: Entry) -> bytes:
    """The entry's JSON lines, one per row (keys in mlgraph.core.prediction_log.RECORD_FIELDS order), UTF-8.

    Encoded by pydantic-core (already the service's parser): one-row entries take ~3 µs against the json
    module's ~20 µs, and the writer thread holds the GIL, which the event loop needs, for every microsecond
    of it. A value it cannot encode (a lone surrogate in a string) falls back to the json module, which
    escapes it."""
    stamp = datetime.fromtimestamp(entry.when, UTC).isoformat()
    rows = [
        {
            TIME: stamp,
            REQUEST_ID: entry.request_id,
            ROW: row,
            MODEL_VERSION: entry.model_version,
            INPUTS: inputs,
            OUTPUT: output,
        }
        for row, (inputs, output) in enumerate(zip(entry.inputs, entry.outputs, strict=True))
    ]
    try:
        return b"".join(to_json(r, inf_nan_mode="constants", fallback=_plain) + b"\n" for r in rows)
    except ValueError:  # pydantic_core.PydanticSerializationError is one
        return "".join(f"{_ENCODE(r)}\n" for r in rows).encode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class WriterStatus:
    """What /health, /ready and /metrics say of the writer."""

    path: str
    healthy: bool  # running, and the last write (or open) succeeded
    records: int  # lines written (all files)
    pending: int  # rows accepted, not yet written
    pending_bytes: int  # their estimated bytes
    max_pending_rows: int
    max_pending_bytes: int
    write_errors: int  # opens, writes, fsyncs and rotations that failed (each retried)
    rejected: int  # requests refused because the queue was full
    dropped: int  # rows never written: unencodable, or still queued when close gave up (each logged)
    rotations: int
    reopens: int  # the path changed under the open file (moved, deleted, replaced)
    removed_files: int  # rotated files deleted by retention
    last_error: str | None
    last_error_at: str | None  # UTC ISO time
    consecutive_errors: int
    running: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Pending:
    data: bytes  # the entry's formatted lines (empty: it could not be encoded, already counted as dropped)
    rows: int
    cost: int


@dataclass
class _Counters:
    records: int = 0
    write_errors: int = 0
    rejected: int = 0
    dropped: int = 0
    rotations: int = 0
    reopens: int = 0
    removed_files: int = 0
    consecutive_errors: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    log_next_error: int = 1  # consecutive-error count at which the next failure is logged in full


class PredictionLogWriter:
    """Appends entries to `path` from one background thread (start → submit… → close)."""

    def __init__(
        self,
        path: Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        sync_interval: float = 1.0,
        drain_interval: float = 0.05,
        *,
        within: str | Path | None = None,
        max_pending_rows: int = DEFAULT_MAX_PENDING_ROWS,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        retention_bytes: int | None = DEFAULT_RETENTION_BYTES,
        retention_days: float | None = DEFAULT_RETENTION_DAYS,
        flush_timeout: float = DEFAULT_FLUSH_SECONDS,
        retry_max: float = RETRY_MAX_SECONDS,
    ) -> None:
        for name, value in (
            ("max_bytes", max_bytes),
            ("max_pending_rows", max_pending_rows),
            ("max_pending_bytes", max_pending_bytes),
        ):
            if value <= 0:
                raise ValueError(f"prediction log {name} must be positive, got {value}")
        self.path = Path(path)
        self.within = within
        self.max_bytes = max_bytes
        self.sync_interval = sync_interval
        self.drain_interval = min(drain_interval, sync_interval)
        self.max_pending_rows, self.max_pending_bytes = max_pending_rows, max_pending_bytes
        self.retention_bytes, self.retention_days = retention_bytes, retention_days
        self.flush_timeout, self.retry_max = flush_timeout, retry_max
        self._n = _Counters()
        self._queue: queue.SimpleQueue[tuple[Entry, int]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._written = threading.Condition(self._lock)
        self._accepted = self._done = 0  # entries accepted by submit / finished by the thread (in order)
        self._pending_rows = self._pending_bytes = 0
        self._backlog: deque[_Pending] = deque()  # formatted, not yet (wholly) written; oldest first
        self._partial = 0  # bytes of the backlog's first entry already in the open file
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._size = 0
        self._retry_at = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._close_by = float("inf")
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)

    # Counters (read by tests and by status()).

    @property
    def records(self) -> int:
        return self._n.records

    @property
    def rotations(self) -> int:
        return self._n.rotations

    @property
    def write_errors(self) -> int:
        return self._n.write_errors

    def start(self) -> PredictionLogWriter:
        """Open the file and start the thread. A file that cannot be opened is an error the thread retries:
        the service starts, unhealthy and not ready, and recovers when the file can be written."""
        try:
            self._open()
        except Exception as exc:
            self._failed(exc, "opening")
        self._thread.start()
        return self

    def submit(self, entry: Entry) -> None:
        """Queue an answered request (never blocks on the disk); LogFull when the queue is at its bound."""
        rows, cost = len(entry.inputs), entry.cost
        with self._lock:
            if self._pending_rows and (
                self._pending_rows + rows > self.max_pending_rows or self._pending_bytes + cost > self.max_pending_bytes
            ):
                self._n.rejected += 1
                why = "it cannot be written" if self._n.consecutive_errors else "the disk is slower than the requests"
                raise LogFull(  # the client sees this: the reason, not the server's paths (/health has them)
                    f"the prediction log is {self._pending_rows} rows behind (limit {self.max_pending_rows} rows, "
                    f"{self.max_pending_bytes} bytes): {why}"
                )
            self._pending_rows += rows
            self._pending_bytes += cost
            self._accepted += 1
            self._queue.put((entry, cost))

    def pending(self) -> int:
        """Rows accepted and not yet written."""
        return self._pending_rows

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every entry submitted before the call is written (or `timeout`, default `flush_timeout`,
        passes: False)."""
        with self._lock:
            target = self._accepted
        self._wake.set()
        with self._written:
            return self._written.wait_for(
                lambda: self._done >= target, self.flush_timeout if timeout is None else timeout
            )

    def status(self) -> WriterStatus:
        n = self._n
        running = self._thread.is_alive()
        stopped_cleanly = self._stop.is_set() and not running
        return WriterStatus(
            path=str(self.path),
            healthy=n.consecutive_errors == 0 and (running or stopped_cleanly),
            records=n.records,
            pending=self._pending_rows,
            pending_bytes=self._pending_bytes,
            max_pending_rows=self.max_pending_rows,
            max_pending_bytes=self.max_pending_bytes,
            write_errors=n.write_errors,
            rejected=n.rejected,
            dropped=n.dropped,
            rotations=n.rotations,
            reopens=n.reopens,
            removed_files=n.removed_files,
            last_error=n.last_error,
            last_error_at=None if n.last_error_at is None else datetime.fromtimestamp(n.last_error_at, UTC).isoformat(),
            consecutive_errors=n.consecutive_errors,
            running=running,
        )

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued so far, fsync, and stop the thread (call once no more submits come). What
        cannot be written within `timeout` (a failing disk) is logged as lost, with its row count."""
        if not self._thread.is_alive():
            return
        self._close_by = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout + 5.0)
        if self._thread.is_alive():
            LOG.error(
                "prediction log writer did not finish within %.0f s; %d rows pending", timeout, self._pending_rows
            )

    # The thread.

    def _run(self) -> None:
        # The thread wakes every `drain_interval` and takes everything queued, rather than blocking on the
        # queue: a blocked reader would be woken (and take the GIL) on every request's put.
        dirty_since: float | None = None
        prune_at = 0.0
        while True:
            try:
                self._wake.clear()  # before taking: a flush that sets it from here on is seen by the wait below
                stopping = self._stop.is_set()
                self._take()
                now = time.monotonic()
                retry = now >= self._retry_at and (self._backlog or self._n.consecutive_errors)
                if retry and self._write_backlog():
                    dirty_since = dirty_since or now
                due = dirty_since is not None and (stopping or now - dirty_since >= self.sync_interval)
                if due and self._sync():
                    dirty_since = None
                if now >= prune_at:
                    prune_at = now + RETENTION_CHECK_SECONDS
                    self._prune()
                if stopping:
                    if not self._backlog and self._queue.empty():
                        break
                    if time.monotonic() >= self._close_by:
                        self._give_up()
                        break
                    # Backing off a failing disk while closing: sleep until the retry, within the close deadline.
                    time.sleep(max(0.001, min(self._retry_at, self._close_by) - time.monotonic()))
                    continue
                self._wake.wait(self.drain_interval)
            except Exception as exc:  # a bug must not end the thread: the queue would grow, the log stop
                self._failed(exc, "the writer loop")
                if self._stop.is_set() and time.monotonic() >= self._close_by:
                    self._give_up()
                    break
                time.sleep(min(self.retry_max, 0.5))  # backoff in this thread; nothing waits on it
        self._close_file()

    def _take(self) -> None:
        """Everything queued, formatted, onto the backlog (an entry that cannot be encoded is logged and counted)."""
        while True:
            try:
                entry, cost = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                data = format_entry(entry)
            except Exception:
                data = b""
                self._n.dropped += len(entry.inputs)
                LOG.exception(
                    "prediction log: request %s could not be encoded; its %d rows are not logged",
                    printable(str(entry.request_id))[:100],
                    len(entry.inputs),
                )
            self._backlog.append(_Pending(data, len(entry.inputs), cost))

    def _write_backlog(self) -> bool:
        """Write the backlog in order, rotating by size; True when anything was written. A failure keeps
        what is unwritten for the next try (after backoff)."""
        wrote = False
        try:
            self._ensure_open()
            while self._backlog:
                first = self._backlog[0]
                if self._partial == 0 and self._size > 0 and self._size + len(first.data) > self.max_bytes:
                    self._rotate()
                parts: list[bytes] = []
                total = 0
                for index, item in enumerate(self._backlog):
                    piece = item.data[self._partial :] if index == 0 else item.data
                    if index and (self._size + total + len(piece) > self.max_bytes or total + len(piece) > WRITE_CHUNK):
                        break
                    parts.append(piece)
                    total += len(piece)
                buffer = memoryview(b"".join(parts))
                written = 0
                try:
                    while written < len(buffer):
                        count = os.write(self._fd, buffer[written:])
                        if count <= 0:
                            raise OSError(errno.EIO, "write accepted no bytes")
                        written += count
                finally:
                    self._advance(written)
                wrote = wrote or written > 0
            self._recovered()
        except Exception as exc:
            self._failed(exc, "writing")
        return wrote

    def _advance(self, written: int) -> None:
        """`written` more bytes of the backlog are in the file: retire the entries they complete."""
        if written > 0:
            # Healthy again before flush() waiters wake: one who then reads status() sees the recovery.
            self._recovered()
        self._size += written
        entries = rows = lines = cost = 0
        while self._backlog:
            first = self._backlog[0]
            remaining = len(first.data) - self._partial
            if written < remaining:
                self._partial += written
                break
            written -= remaining
            self._backlog.popleft()
            self._partial = 0
            entries, rows, cost = entries + 1, rows + first.rows, cost + first.cost
            lines += first.rows if first.data else 0
        if entries:
            self._n.records += lines
            with self._written:
                self._done += entries
                self._pending_rows -= rows
                self._pending_bytes -= cost
                self._written.notify_all()

    def _ensure_open(self) -> None:
        """The file at the path, open: reopened when the path no longer names the open file (WatchedFileHandler's rule)."""
        if self._fd is not None:
            try:
                now = os.stat(self.path, follow_symlinks=False)
                same = (now.st_dev, now.st_ino) == self._identity
            except FileNotFoundError:
                same = False
            if same:
                self._size = now.st_size  # truncated in place (copytruncate): rotate by what the file holds
                return
            LOG.warning("prediction log %s was moved, deleted or replaced; reopening it", self.path)
            self._n.reopens += 1
            self._close_fd()
            self._partial = 0  # the old file keeps a torn last line (readers skip it); the new one gets it whole
        self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)  # an operator may have removed the directory
        try:
            fd = open_append(self.path, within=self.within)
        except Unusable as exc:
            raise OSError(errno.EPERM, f"{self.path} {exc}") from None
        opened = os.fstat(fd)
        self._fd, self._identity, self._size = fd, (opened.st_dev, opened.st_ino), opened.st_size

    def _rotate(self) -> None:
        self._close_fd()
        target = rotated_name(self.path)
        while os.path.lexists(target):  # two rotations within one microsecond
            target = rotated_name(self.path, datetime.now(UTC))
        os.replace(self.path, target)
        self._n.rotations += 1
        self._prune()
        self._open()

    def _prune(self) -> None:
        if self.retention_bytes is None and self.retention_days is None:
            return
        try:
            removed = prune_rotated(self.path, self.retention_bytes, self.retention_days)
        except OSError as exc:  # the log itself is unharmed; the next check tries again
            LOG.warning("prediction log retention: cannot delete an old file next to %s: %s", self.path, exc)
            return
        self._n.removed_files += len(removed)
        for path in removed:
            LOG.info("prediction log retention: deleted %s", path.name)

    def _sync(self) -> bool:
        if self._fd is None:
            return False
        try:
            os.fsync(self._fd)
            return True
        except OSError as exc:
            self._failed(exc, "fsync")
            return False

    def _close_fd(self) -> None:
        fd, self._fd, self._identity = self._fd, None, None
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            self._failed(exc, "fsync before closing")
        finally:
            os.close(fd)

    def _failed(self, exc: BaseException, doing: str) -> None:
        n = self._n
        n.write_errors += 1
        n.consecutive_errors += 1
        n.last_error = printable(f"{doing}: {type(exc).__name__}: {exc}")[:500]
        n.last_error_at = time.time()
        delay = min(self.retry_max, self.drain_interval * 2 ** min(n.consecutive_errors - 1, 16))
        self._retry_at = time.monotonic() + delay
        if n.consecutive_errors >= n.log_next_error:  # 1, 2, 4, 8, ...: loud, without a line per retry
            n.log_next_error = n.consecutive_errors * 2
            LOG.error(
                "prediction log %s: %s (error %d in a row, %d rows pending; retrying in %.2f s)",
                self.path,
                n.last_error,
                n.consecutive_errors,
                self._pending_rows,
                delay,
                exc_info=(type(exc), exc, exc.__traceback__),
            )

    def _recovered(self) -> None:
        n = self._n
        if n.consecutive_errors:
            LOG.warning("prediction log %s writes again after %d failed attempts", self.path, n.consecutive_errors)
        n.consecutive_errors, n.log_next_error, self._retry_at = 0, 1, 0.0

    def _give_up(self) -> None:
        lost = self._pending_rows
        LOG.error(
            "prediction log %s: closing with %d rows that could not be written (last error: %s); they are lost",
            self.path,
            lost,
            self._n.last_error,
        )
        self._n.dropped += lost

    def _close_file(self) -> None:
        try:
            self._close_fd()
        except Exception as exc:
            self._failed(exc, "closing")
