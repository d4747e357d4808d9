"""Whether a process recorded earlier (by pid and start time) is still the same, living process.

Pids are reused, so a pid alone says nothing after a while: a process is identified by its pid and its
start time (within a second, the resolution some systems give), and a zombie — exited, not yet reaped —
counts as gone. Used for claims on the drive (a sweep's local trials) and for run workers started warm.
"""

from __future__ import annotations


def start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None when there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def process_alive(pid: int, started: float | None) -> bool:
    """Process `pid` is running, is the one that started at `started` (None: any), and has not exited."""
    import psutil

    try:
        process = psutil.Process(pid)
        same = started is None or abs(process.create_time() - started) < 1.0
        return same and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
