"""The sweep's trial queue on the drive (what Slurm worker jobs pull from): every trial is taken by exactly
one worker even when several race for it, a withdrawn trial is never taken, and a worker exits when the
queue is closed and empty or after its idle time. Workers here are real processes on a real directory;
the Slurm path (workers as jobs) is in tests/test_sweep_services.py."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from mlgraph.training.sweep_queue import PENDING, TAKEN, WITHDRAWN, TrialQueue, main, serve


def _record(log_dir: str):
    def run(request: str) -> None:
        # One file per (worker, trial): a trial run twice would leave two.
        (Path(log_dir) / f"{Path(request).name}.{os.getpid()}").write_text("")

    return run


def _worker(root: str, log_dir: str, ready) -> None:
    ready.wait()  # every worker starts pulling at once
    serve(TrialQueue(Path(root)), f"w{os.getpid()}", _record(log_dir), idle_seconds=5.0)


def test_racing_workers_take_every_trial_exactly_once(tmp_path: Path) -> None:
    queue = TrialQueue(tmp_path / "queue").create()
    names = [queue.put(n, f"key{n:03d}", tmp_path / f"request-{n:03d}") for n in range(60)]
    queue.close()  # all queued: workers exit once it is empty
    log_dir = tmp_path / "ran"
    log_dir.mkdir()
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    workers = [context.Process(target=_worker, args=(str(queue.root), str(log_dir), ready)) for _ in range(3)]
    for worker in workers:
        worker.start()
    ready.set()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    ran = sorted(p.name.rsplit(".", 1)[0] for p in log_dir.iterdir())
    assert ran == [f"request-{n:03d}" for n in range(60)]  # each once, none lost
    taken = sorted(os.listdir(queue.root / TAKEN))
    assert [t.split("@")[0] for t in taken] == names
    assert {queue.state(name)[0] for name in names} == {TAKEN}
    # The taker recorded in the entry's name is a worker that ran it.
    takers = {t.split("@")[1] for t in taken}
    assert takers <= {f"w{w.pid}" for w in workers}


def test_a_withdrawn_trial_is_never_taken_and_a_taken_one_cannot_be_withdrawn(tmp_path: Path) -> None:
    queue = TrialQueue(tmp_path / "queue").create()
    first = queue.put(0, "aaa", tmp_path / "a.json")
    second = queue.put(1, "bbb", tmp_path / "b.json")
    assert queue.state(first) == (PENDING, None)
    assert queue.take("job-7") == (first, tmp_path / "a.json")  # the oldest first
    assert queue.state(first) == (TAKEN, "job-7")
    assert not queue.withdraw(first)  # it runs after all
    assert queue.withdraw(second)
    assert queue.state(second) == (WITHDRAWN, None)
    assert queue.take("job-8") is None
    assert queue.state("000009-zzz") == ("missing", None)


def test_a_worker_exits_when_closed_and_empty_or_after_its_idle_time(tmp_path: Path) -> None:
    queue = TrialQueue(tmp_path / "queue").create()
    ran: list[str] = []
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # each look at the queue: one second later
        return now[0]

    queue.put(0, "aaa", tmp_path / "a.json")
    assert serve(queue, "w", ran.append, idle_seconds=3.0, clock=clock) == 1  # never closed: idle exit
    assert ran == [str(tmp_path / "a.json")] and now[0] >= 3.0
    queue.put(1, "bbb", tmp_path / "b.json")
    queue.close()
    now[0] = 0.0
    assert serve(queue, "w", ran.append, idle_seconds=1e9, clock=clock) == 1  # closed: exits once empty
    assert ran[-1] == str(tmp_path / "b.json")


def test_the_worker_command_refuses_a_directory_that_is_not_a_queue(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    assert "a sweep's queue, with pending/" in capsys.readouterr().err


def test_a_planted_entry_is_withdrawn_unread_and_a_bad_request_does_not_stop_the_worker(tmp_path: Path) -> None:
    queue = TrialQueue(tmp_path / "queue").create()
    os.mkfifo(queue.root / PENDING / "000000-fifo")  # would block a plain read forever
    (queue.root / PENDING / "000001-big").write_bytes(b"x" * 10_000)
    good = queue.put(2, "good", tmp_path / "missing-request.json")
    later = queue.put(3, "later", tmp_path / "b.json")
    queue.close()
    ran: list[str] = []

    def run(request: str) -> None:
        if request.endswith("missing-request.json"):
            raise FileNotFoundError(request)  # what reading an unreadable request raises
        ran.append(request)

    assert serve(queue, "w", run, idle_seconds=5.0) == 2
    assert queue.state("000000-fifo") == (WITHDRAWN, None) and queue.state("000001-big") == (WITHDRAWN, None)
    assert queue.state(good) == (TAKEN, "w") and queue.state(later) == (TAKEN, "w")
    assert ran == [str(tmp_path / "b.json")]
