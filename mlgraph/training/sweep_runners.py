"""Where sweep trials run: who owns a running trial, and the pool of local worker processes.

A runner starts a trial from its request file and says when a trial's owner can no longer write its
record (the worker died, the Slurm job ended). The local runner is a fork-server process pool kept
for the whole sweep, so each worker pays its imports once; the Slurm runner
(mlgraph.launcher.sweep_jobs.SlurmTrialRunner) does the same with a pool of Slurm worker jobs.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mlgraph.core.processes import process_alive, start_time
from mlgraph.training.sweep_trial import TrialRequest


@dataclass
class Owner:
    """Who runs a trial: this machine's process `pid` (local pool), Slurm job `job_id`, or the Slurm worker
    pool whose queue holds `queue_entry` (mlgraph.training.sweep_queue: the worker that takes it runs it)."""

    kind: str  # "local" | "slurm"
    host: str | None = None
    pid: int | None = None
    create_time: float | None = None
    job_id: str | None = None
    queue_entry: str | None = None

    def describe(self) -> str:
        if self.kind != "slurm":
            return f"process {self.pid} on {self.host}"
        return f"Slurm job {self.job_id}" if self.job_id else f"the Slurm workers of queue entry {self.queue_entry}"


class Runner(Protocol):
    """Where trials run. `start` returns the trial's owner; `ended` says whether an owner can no longer write."""

    kind: str
    slots: int

    def start(self, request: TrialRequest, request_path: Path) -> Owner: ...

    def ended(self, owner: Owner, key: str) -> str | None:
        """None while the owner may still write the record; else why it ended (for a trial without one)."""

    def close(self, abandon: bool = False) -> None:
        """After the sweep; `abandon` (the run was interrupted): stop the trials still running."""


def this_process() -> Owner:
    pid = os.getpid()
    return Owner("local", host=socket.gethostname(), pid=pid, create_time=start_time(pid))


def _worker_init() -> None:
    # Fork-server workers start from a clean interpreter; quiet the libraries trials import.
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)


class LocalRunner:
    """A pool of worker processes on this machine, kept for the whole sweep (imports paid once per worker)."""

    kind = "local"

    def __init__(self, slots: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.slots = max(1, slots)
        # A fork server, not fork: the orchestrator is a Dagster run process with threads of its own.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["mlgraph.training.sweep_trial", "mlgraph.training.candidates"])
        self._pool = ProcessPoolExecutor(max_workers=self.slots, mp_context=context, initializer=_worker_init)
        self._futures: dict[str, Any] = {}
        self._owner = this_process()

    def start(self, request: TrialRequest, request_path: Path) -> Owner:
        from mlgraph.training.sweep_trial import run_request_file

        self._futures[request.key] = self._pool.submit(run_request_file, str(request_path))
        return self._owner

    def ended(self, owner: Owner, key: str) -> str | None:
        future = self._futures.get(key)
        if future is not None:
            if not future.done():
                return None
            error = future.exception()
            return f"the worker process died ({type(error).__name__}: {error})" if error else "the worker returned"
        if owner.pid == os.getpid():
            return "an earlier sweep in this process left it unfinished"
        # A claim from another orchestrator (or an earlier one of this machine).
        if owner.host == socket.gethostname() and process_alive(owner.pid or 0, owner.create_time):
            return None
        return f"{owner.describe()} is gone"

    def close(self, abandon: bool = False) -> None:
        if abandon:
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.kill()
        self._pool.shutdown(wait=not abandon, cancel_futures=True)
