"""The memory guard: what one chunk's working memory is, how it is predicted, and how it is given back.

A chunk's working memory is its input's Arrow size + the peak of Python/numpy allocations during
the chunk (tracemalloc; numpy reports its buffers to it) + the operators' own Arrow allocations
(a proxy pool, sampled between operators). It is not an RSS delta: that would count the reader's
read-ahead and allocator caching, and it would not be deterministic.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mlgraph.preprocessing.options import MB


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
class MemoryModel:
    """Working memory ≈ fixed + per_row × rows: two dry runs fit it, every accepted chunk can raise it."""

    fixed_mb: float
    per_row_mb: float

    def predict(self, rows: int) -> float:
        return self.fixed_mb + self.per_row_mb * rows

    def update(self, rows: int, measured_mb: float) -> None:
        if rows:
            self.per_row_mb = max(self.per_row_mb, (measured_mb - self.fixed_mb) / rows)

    @classmethod
    def from_dry_runs(cls, rows: int, small_mb: float, double_mb: float) -> MemoryModel:
        """From the memory measured on `rows` and on `2 × rows` rows."""
        per_row = (double_mb - small_mb) / rows
        if per_row <= 0:  # noise at this size: fall back to the average, which overestimates
            per_row = double_mb / (2 * rows)
        return cls(max(small_mb - per_row * rows, 0.0), per_row)


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
