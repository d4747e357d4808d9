"""A sweep's trial queue on the drive, and the pull worker that serves it (what a Slurm worker job runs).

Starting a fresh interpreter per trial costs seconds (torch alone imports in about 2 s, Slurm's start
adds 1–2 s more), so under Slurm a sweep submits up to `max_parallel` long-lived workers and queues its
trials; each worker runs trial after trial in one interpreter. The queue is a directory, and every
transition is one atomic rename, so it works across machines sharing the drive without locks:

    queue/{pool}/
        pending/{number:06d}-{key}       the trial's request path (written by the orchestrator)
        taken/{number:06d}-{key}@{worker} taken by that worker (its Slurm job id): only one rename wins
        withdrawn/{number:06d}-{key}     given up before any worker took it (its workers all ended)
        workers/{worker}                 the pool's workers, one empty file each
        closed                           the orchestrator needs no more trials: idle workers exit

The trial itself is run exactly as a local worker runs it (mlgraph.training.sweep_trial), so its record
on the drive is the only result; the worker's job id is in that record.

    python -m mlgraph.training.sweep_queue QUEUE_DIR     (what a worker job runs)
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mlgraph.core.atomic import atomic_write_text
from mlgraph.core.untrusted import Unusable, read_regular_file

PENDING, TAKEN, WITHDRAWN, WORKERS, CLOSED = "pending", "taken", "withdrawn", "workers", "closed"
POLL_SECONDS = 0.2
MAX_ENTRY_BYTES = 4096  # an entry holds one request path
# A worker with nothing to do for this long exits even if the queue was never closed (its orchestrator
# crashed): the next run starts a pool of its own, and an idle job should not hold a cluster's CPU.
IDLE_SECONDS = 30.0


class TrialQueue:
    """One pool's queue directory: the orchestrator puts and withdraws, workers take."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def create(self) -> TrialQueue:
        for name in (PENDING, TAKEN, WITHDRAWN, WORKERS):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        return self

    @staticmethod
    def entry_name(number: int, key: str) -> str:
        return f"{number:06d}-{key}"

    def put(self, number: int, key: str, request_path: Path) -> str:
        name = self.entry_name(number, key)
        atomic_write_text(self.root / PENDING / name, str(request_path))
        return name

    def take(self, worker: str) -> tuple[str, Path] | None:
        """The oldest pending trial, now this worker's; None when none is pending."""
        for name in sorted(os.listdir(self.root / PENDING)):
            if name.startswith("."):
                continue  # an atomic write still in progress
            source = self.root / PENDING / name
            try:
                # The drive is writable by anyone: a regular file of a path's length, nothing else is read.
                request = read_regular_file(source, MAX_ENTRY_BYTES, within=self.root).decode("utf-8").strip()
            except (Unusable, UnicodeDecodeError):
                with contextlib.suppress(FileNotFoundError):  # gone meanwhile: another worker was first
                    os.rename(source, self.root / WITHDRAWN / name)  # not an entry the orchestrator wrote
                continue
            try:
                os.rename(source, self.root / TAKEN / f"{name}@{worker}")
            except FileNotFoundError:
                continue  # another worker (or a withdrawal) was first
            return name, Path(request)
        return None

    def withdraw(self, name: str) -> bool:
        """Give up a trial no worker took; False if one took it first (it runs after all)."""
        try:
            os.rename(self.root / PENDING / name, self.root / WITHDRAWN / name)
        except FileNotFoundError:
            return False
        return True

    def state(self, name: str) -> tuple[str, str | None]:
        """(pending | taken | withdrawn | missing, the worker that took it)."""
        if (self.root / PENDING / name).exists():
            return PENDING, None
        # Not pending: the rename already happened, so the entry is in one of the other two places.
        for path in (self.root / TAKEN).glob(f"{name}@*"):
            return TAKEN, path.name.split("@", 1)[1]
        if (self.root / WITHDRAWN / name).exists():
            return WITHDRAWN, None
        return "missing", None

    def add_worker(self, worker: str) -> None:
        (self.root / WORKERS / worker).touch()

    def workers(self) -> list[str]:
        directory = self.root / WORKERS
        return sorted(os.listdir(directory)) if directory.is_dir() else []

    def close(self) -> None:
        atomic_write_text(self.root / CLOSED, "")

    def closed(self) -> bool:
        return (self.root / CLOSED).exists()


def serve(
    queue: TrialQueue,
    worker: str,
    run: Callable[[str], object],
    idle_seconds: float = IDLE_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run trials from `queue` until it is closed and empty, or nothing came for `idle_seconds`; how many ran."""
    ran, idle_since = 0, clock()
    while True:
        taken = queue.take(worker)
        if taken is not None:
            try:
                run(str(taken[1]))  # a trial's own failure is its record; this is a request that cannot be read
            except Exception as exc:
                print(f"worker {worker}: {taken[0]}: {type(exc).__name__}: {exc}", file=sys.stderr)
            ran, idle_since = ran + 1, clock()
            continue
        if queue.closed() or clock() - idle_since >= idle_seconds:
            return ran
        time.sleep(POLL_SECONDS)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not (Path(args[0]) / PENDING).is_dir():
        print(
            "usage: python -m mlgraph.training.sweep_queue QUEUE_DIR (a sweep's queue, with pending/)", file=sys.stderr
        )
        return 2
    import warnings

    from mlgraph.training.sweep_trial import run_request_file

    warnings.filterwarnings("ignore", category=UserWarning)  # as the local pool's workers
    worker = os.environ.get("SLURM_JOB_ID") or f"pid{os.getpid()}"
    ran = serve(TrialQueue(Path(args[0])), worker, run_request_file)
    print(f"worker {worker}: ran {ran} trial(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
