"""The one way a test waits: poll a condition until it holds, with a deadline, and fail naming what it waited for."""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.2,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate()` every `interval` seconds until it returns something truthy, and return that.

    After `timeout` seconds raise TimeoutError("timed out after {timeout}s waiting for {what}"), followed by
    what `on_timeout()` returns (logs, states: whatever explains the wait). The predicate is always asked
    at least once, and once more after the deadline; an exception it raises (a process that died, say)
    ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}" + (f"\n{detail}" if detail else ""))
        time.sleep(interval)
