"""One progress line per stage for `mlgraph demo`: a live bar on a terminal, one plain line otherwise.

No Dagster here: the staging code tells a `Progress` when a stage starts for an experiment (with the
number of asset materializations it will make, over all its partitions), which partition runs now,
when each asset is done and when the stage ends. On a terminal (`isatty`) the bar is redrawn in place,
a few times a second so the elapsed time moves while a long asset computes; in a pipe or a file each
stage gives exactly one line, written when it ends, so CI logs stay short and greppable.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import TextIO

BAR_WIDTH = 24
REDRAW_SECONDS = 0.25


def stage_line(stage: str, partition: str, done: int, total: int, seconds: float, status: str, note: str) -> str:
    """The line a finished stage leaves behind (both modes), e.g. `[experiment] salary: 13/13 asset(s) ok in 4.2s`."""
    return f"[{stage}] {partition}: {done}/{total} asset(s) {status} in {seconds:.1f}s" + (f" ({note})" if note else "")


class Progress:
    """Progress of the demo's stages, one at a time, written to `stream` (stdout by default)."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.live = _isatty(self.stream) if live is None else live
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._drawn = False
        self._stage = self._partition = self._current = ""
        self._done = self._total = 0
        self._start = 0.0

    def start(self, stage: str, partition: str, total: int) -> None:
        """`stage` starts for `partition` (an experiment): `total` asset materializations to come."""
        with self._lock:
            self._stage, self._partition, self._current, self._done, self._total = stage, partition, "", 0, total
            self._start = time.perf_counter()
        if self.live:
            self._redraw()
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="mlgraph-progress", daemon=True)
            self._ticker.start()

    def running(self, partition: str) -> None:
        """The stage's run for `partition` (one of several, e.g. a constraint) starts; the bar names it."""
        with self._lock:
            self._current = partition
        if self.live:
            self._redraw()

    def advance(self, count: int = 1) -> None:
        """`count` more assets of the current stage are materialized."""
        with self._lock:
            self._done = min(self._total, self._done + count)
        if self.live:
            self._redraw()

    def finish(self, ok: bool, note: str = "") -> str:
        """The stage ended: leave its one line (replacing the bar) and return it."""
        self._stop_ticker()
        with self._lock:
            line = stage_line(
                self._stage,
                self._partition,
                self._done,
                self._total,
                time.perf_counter() - self._start,
                "ok" if ok else "FAILED",
                note,
            )
        self.echo(line)
        return line

    def echo(self, line: str, stream: TextIO | None = None) -> None:
        """Write a whole line (to `stream`, default the progress stream), clearing a drawn bar first."""
        with self._lock:
            self._clear()
            print(line, file=stream if stream is not None else self.stream, flush=True)

    def close(self) -> None:
        """Stop redrawing and clear the bar (after an exception, say)."""
        self._stop_ticker()
        with self._lock:
            self._clear()

    def _tick(self) -> None:
        while not self._stop.wait(REDRAW_SECONDS):
            self._redraw()

    def _stop_ticker(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None

    def _redraw(self) -> None:
        with self._lock:
            filled = BAR_WIDTH * self._done // self._total if self._total else BAR_WIDTH
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            elapsed = time.perf_counter() - self._start
            where = f"{self._partition} {self._current}" if self._current else self._partition
            text = f"[{self._stage}] {where} [{bar}] {self._done}/{self._total} assets {elapsed:.1f}s"
            # A bar wider than the terminal wraps, and "\r" would then only clear its last row.
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r\x1b[2K" + text[:width])
            self.stream.flush()
            self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._drawn = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
