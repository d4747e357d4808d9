"""Retrying a transient failure, written once: bounded attempts, exponential backoff with a cap.

    policy = Retry(attempts=4, delay=0.5, max_delay=8.0, transient=is_transient, sleep=sleep)
    stdout = policy.call(run_once, args)          # a call, retried
    for attempt in policy:                        # or a block, when something runs between two tries
        with attempt:
            ...

Attempt n (1-based) that fails with a transient error is followed by a wait of
`min(max_delay, delay * factor ** (n - 1))` (passed through `jitter` when one is given), then by
attempt n + 1. After `attempts` tries, or at the first error that is not transient, that error is
raised as it was, so each caller keeps its own messages. An interrupt (an exception that is not an
`Exception`) is never transient. `sleep` is injectable, so tests assert the exact waits without
waiting; `on_retry(attempt, error, delay)` runs before each wait (for logging).

The loop is tenacity's (stop after N attempts, a retry predicate, a custom wait, before_sleep,
reraise); this module fixes the project's vocabulary on top of it, so callers never build tenacity
objects themselves. Plain Python: the trainer kit imports it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity

T = TypeVar("T")

# Which errors are worth another try: exception types, or a predicate over the error.
Transient = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def jittered(delay: float) -> float:
    """`delay` scaled by a uniform factor in [0.5, 1.5), drawn from a private RNG (the global one is seeded)."""
    return delay * (0.5 + random.Random().random())


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # looked up at call time, so a patched time.sleep is honoured


class Attempt:
    """One try of `for attempt in policy: with attempt: ...`; an error inside the block ends the try."""

    def __init__(self, manager: tenacity.AttemptManager):
        self._manager = manager

    @property
    def number(self) -> int:
        """1 for the first try, 2 for the first retry, ..."""
        return self._manager.retry_state.attempt_number

    def __enter__(self) -> Attempt:
        self._manager.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> bool | None:
        return self._manager.__exit__(*exc_info)


@dataclass(frozen=True)
class Retry:
    """A retry policy: `attempts` tries in all (the first included), the waits between them, what is transient."""

    attempts: int
    delay: float
    factor: float = 2.0
    max_delay: float = math.inf
    transient: Transient = Exception
    jitter: Callable[[float], float] | None = None
    sleep: Callable[[float], None] | None = None  # None: time.sleep
    on_retry: Callable[[int, BaseException, float], None] | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"Retry needs at least one attempt, got attempts={self.attempts}")

    def wait(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (1-based), before jitter."""
        try:
            return min(self.max_delay, self.delay * self.factor ** (attempt - 1))
        except OverflowError:
            return self.max_delay

    def delays(self) -> list[float]:
        """Every wait the policy may ask for, in order (before jitter): one fewer than the attempts."""
        return [self.wait(n) for n in range(1, self.attempts)]

    def is_transient(self, error: BaseException) -> bool:
        if not isinstance(error, Exception):
            return False
        if isinstance(self.transient, type | tuple):
            return isinstance(error, self.transient)
        return bool(self.transient(error))

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, retried under this policy; its result, or the last error raised as it was."""
        return self._retrying()(fn, *args, **kwargs)

    def __iter__(self) -> Iterator[Attempt]:
        for manager in self._retrying():
            yield Attempt(manager)

    def _retrying(self) -> tenacity.Retrying:
        jitter = self.jitter

        def wait(state: tenacity.RetryCallState) -> float:
            delay = self.wait(state.attempt_number)
            return jitter(delay) if jitter else delay

        before_sleep = None
        if self.on_retry is not None:
            on_retry = self.on_retry

            def before_sleep(state: tenacity.RetryCallState) -> None:
                on_retry(state.attempt_number, state.outcome.exception(), state.upcoming_sleep)

        return tenacity.Retrying(
            sleep=self.sleep or _sleep,
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=wait,
            retry=tenacity.retry_if_exception(self.is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )
