"""mlgraph.core.retry: the one retry policy, its exact waits through an injected sleep, transient vs permanent."""

import time

import pytest

from mlgraph.core.retry import Retry, jittered


class Flaky:
    """Raises each error of `errors` in turn, then returns "ok"; counts its calls."""

    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, *args, **kwargs) -> str:
        self.calls += 1
        self.args, self.kwargs = args, kwargs
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def policy(**kwargs) -> tuple[Retry, list[float]]:
    sleeps: list[float] = []
    kwargs.setdefault("transient", OSError)
    return Retry(sleep=sleeps.append, **kwargs), sleeps


def test_transient_errors_are_retried_with_exponential_backoff():
    retry, sleeps = policy(attempts=5, delay=0.5)
    fn = Flaky(OSError("eio"), OSError("eio"), OSError("eio"))
    assert retry.call(fn, 1, key="v") == "ok"
    assert fn.calls == 4 and fn.args == (1,) and fn.kwargs == {"key": "v"}
    assert sleeps == [0.5, 1.0, 2.0]


def test_backoff_is_capped_and_a_factor_of_one_waits_evenly():
    retry, sleeps = policy(attempts=6, delay=1.0, max_delay=3.0)
    assert retry.delays() == [1.0, 2.0, 3.0, 3.0, 3.0]
    with pytest.raises(OSError):
        retry.call(Flaky(*[OSError()] * 6))
    assert sleeps == [1.0, 2.0, 3.0, 3.0, 3.0]

    even, sleeps = policy(attempts=3, delay=0.25, factor=1)
    with pytest.raises(OSError):
        even.call(Flaky(*[OSError()] * 3))
    assert sleeps == [0.25, 0.25] == even.delays()


def test_the_last_error_is_raised_as_it_was_after_the_attempts():
    retry, sleeps = policy(attempts=3, delay=0.1)
    last = OSError("third")
    fn = Flaky(OSError("first"), OSError("second"), last, OSError("never reached"))
    with pytest.raises(OSError) as caught:
        retry.call(fn)
    assert caught.value is last and fn.calls == 3 and sleeps == [0.1, 0.2]


def test_a_permanent_error_is_raised_at_once():
    retry, sleeps = policy(attempts=5, delay=0.1)
    permanent = ValueError("bad input")
    fn = Flaky(OSError("eio"), permanent)
    with pytest.raises(ValueError) as caught:
        retry.call(fn)
    assert caught.value is permanent and fn.calls == 2 and sleeps == [0.1]


def test_a_predicate_decides_what_is_transient():
    retry, sleeps = policy(attempts=4, delay=1.0, transient=lambda exc: "locked" in str(exc))
    assert retry.call(Flaky(RuntimeError("database is locked"))) == "ok" and sleeps == [1.0]
    with pytest.raises(RuntimeError, match="no such table"):
        retry.call(Flaky(RuntimeError("no such table"), RuntimeError("database is locked")))
    assert sleeps == [1.0]


def test_an_interrupt_is_never_transient():
    retry, sleeps = policy(attempts=3, delay=0.1, transient=lambda exc: True)
    fn = Flaky(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        retry.call(fn)
    assert fn.calls == 1 and sleeps == []


def test_on_retry_sees_each_attempt_its_error_and_the_wait():
    seen = []
    retry, sleeps = policy(attempts=3, delay=0.5, on_retry=lambda n, exc, delay: seen.append((n, str(exc), delay)))
    assert retry.call(Flaky(OSError("a"), OSError("b"))) == "ok"
    assert seen == [(1, "a", 0.5), (2, "b", 1.0)] and sleeps == [0.5, 1.0]


def test_jitter_shapes_the_wait_that_is_slept_and_reported():
    seen = []
    retry, sleeps = policy(
        attempts=3, delay=1.0, max_delay=1.5, jitter=lambda d: d + 0.01, on_retry=lambda n, e, d: seen.append(d)
    )
    assert retry.call(Flaky(OSError(), OSError())) == "ok"
    assert sleeps == seen == [1.01, 1.51]
    assert all(0.5 <= jittered(2.0) / 2.0 < 1.5 for _ in range(200))


def test_a_block_is_retried_and_can_act_between_tries():
    retry, sleeps = policy(attempts=4, delay=0.5)
    fn = Flaky(OSError(), OSError())
    between = []
    for attempt in retry:
        if attempt.number > 1:
            between.append(attempt.number)  # runs after the wait, before the next try
        with attempt:
            result = fn()
    assert result == "ok" and between == [2, 3] and sleeps == [0.5, 1.0]

    def always_failing() -> None:
        for attempt in retry:
            with attempt:
                raise OSError("always")

    with pytest.raises(OSError, match="always"):
        always_failing()
    assert sleeps == [0.5, 1.0, 0.5, 1.0, 2.0]


def test_the_default_sleep_is_time_sleep_at_call_time(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    assert Retry(attempts=2, delay=0.3, transient=OSError).call(Flaky(OSError())) == "ok"
    assert waits == [0.3]


def test_at_least_one_attempt():
    with pytest.raises(ValueError, match="at least one attempt"):
        Retry(attempts=0, delay=1.0)
