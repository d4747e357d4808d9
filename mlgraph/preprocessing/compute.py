"""The compute cap: a share of the machine's cores turned into thread-pool sizes, restored afterwards.

The cap sizes the thread pools this process owns (Arrow, BLAS/OpenMP through threadpoolctl,
torch when it is loaded, joblib's default n_jobs). It does not throttle CPU time: see
docs/preprocessing.md for exactly what it does and does not control.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator

import pyarrow as pa


def available_cores() -> int:
    """Cores this process may run on (CPU affinity, e.g. a Slurm allocation), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_for(compute_limit: float, cores: int | None = None) -> int:
    """floor(limit × cores), at least one thread: 0.5 of 2 cores is 1 thread, 1.0 is 2."""
    if not 0 < compute_limit <= 1:
        raise ValueError(f"compute_limit must be in (0, 1], got {compute_limit}")
    cores = cores or available_cores()
    # The epsilon keeps 0.3 × 10 (2.9999999999999996) from flooring to 2.
    return max(1, math.floor(compute_limit * cores + 1e-9))


@contextlib.contextmanager
def compute_cap(compute_limit: float, cores: int | None = None) -> Iterator[int]:
    """Cap this process's thread pools to `compute_limit` of the cores; yield the thread count.

    Process-global while active: another thread of the same process running at the same
    time shares the cap (Dagster's in-process executor runs one step at a time).
    """
    from joblib import parallel_config
    from threadpoolctl import threadpool_limits

    threads = threads_for(compute_limit, cores)
    previous_cpu, previous_io = pa.cpu_count(), pa.io_thread_count()
    torch = sys.modules.get("torch")  # only when already loaded: importing torch costs ~1.6 s
    previous_torch = torch.get_num_threads() if torch is not None else None
    pa.set_cpu_count(threads)
    pa.set_io_thread_count(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads), parallel_config(n_jobs=threads):
            yield threads
    finally:
        pa.set_cpu_count(previous_cpu)
        pa.set_io_thread_count(previous_io)
        if torch is not None and previous_torch is not None:
            torch.set_num_threads(previous_torch)
