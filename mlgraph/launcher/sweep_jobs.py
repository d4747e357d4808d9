"""Sweep trials on Slurm: a pool of worker jobs that each run trial after trial from the sweep's queue.

A fresh interpreter per trial would cost seconds before any fitting (torch's import, Slurm's start), so
the runner queues each trial on the drive (mlgraph.training.sweep_queue) and submits worker jobs —
`python -m mlgraph.training.sweep_queue QUEUE_DIR`, one CPU each (trials are single-threaded by design),
the run's memory, time limit and environment (the launcher's exports) — up to the sweep's slots, one
more each time a trial is queued while fewer are alive. A 9-trial sweep without `max_parallel` thus runs
9 workers of one trial each; with `max_parallel: 2`, two workers run the nine.

The orchestrator (mlgraph.training.sweeps) reads each trial's record from the drive; this runner only
says when no one can write it any more, and why: the worker that took it ended (Slurm's state and the end
of its stderr), or every worker of the pool ended before one took it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import time
from pathlib import Path

from dagster._core.storage.dagster_run import DagsterRun

from mlgraph.launcher.slurm_launcher import SlurmRunLauncher
from mlgraph.slurm.client import SlurmError
from mlgraph.slurm.figures import stderr_hints
from mlgraph.slurm.jobs import ACTIVE_STATES, PENDING_STATES
from mlgraph.training.sweep_queue import PENDING, TAKEN, WITHDRAWN, TrialQueue
from mlgraph.training.sweep_runners import Owner
from mlgraph.training.sweep_trial import TrialRequest

# A job the controller, the completion records and sacct all forget for this long is taken as gone.
UNKNOWN_GRACE_SECONDS = 120.0
POLL_CONTROLLER_SECONDS = 2.0
QUEUE_DIR = "queue"
# Workers that end in failure (not an idle exit) are replaced, up to this many beyond the pool's slots: a
# worker that cannot start at all (a broken environment) must fail the sweep's trials, not loop.
SPARE_WORKERS = 2


class SlurmTrialRunner:
    kind = "slurm"

    def __init__(self, launcher: SlurmRunLauncher, run: DagsterRun, slots: int):
        self.launcher = launcher
        self.run = run
        self.slots = max(1, slots)
        self.resources = dataclasses.replace(launcher.resources_for(run), cpus=1)
        self.python = launcher.python_for(run)
        self.queue: TrialQueue | None = None  # this runner's pool, made at the first trial
        self.workers: list[str] = []  # its worker jobs, in submission order
        self._gone: dict[str, str] = {}  # job id → why it can no longer run anything
        self._broken: list[str] = []  # workers that ended in failure (not COMPLETED)
        self._unknown_since: dict[str, float] = {}
        self._asked: dict[str, float] = {}

    def _pool(self, request: TrialRequest) -> TrialQueue:
        if self.queue is None:
            # One queue per runner (per run and sweep): a later run's workers never pick up this one's trials.
            sweep_dir = Path(request.trial_dir).parent.parent
            pool = f"{self.run.run_id[:8]}-{secrets.token_hex(3)}"
            self.queue = TrialQueue(sweep_dir / QUEUE_DIR / pool).create()
        return self.queue

    def _submit_worker(self, queue: TrialQueue) -> None:
        index = len(self.workers)
        command = [self.python, "-m", "mlgraph.training.sweep_queue", str(queue.root)]
        job_id = self.launcher.submit_command(
            self.run, f"mlgraph-sweep-w{index}", command, self.resources, queue.root / f"worker-{index}.sbatch"
        )
        queue.add_worker(job_id)
        self.workers.append(job_id)

    def start(self, request: TrialRequest, request_path: Path) -> Owner:
        queue = self._pool(request)
        name = queue.put(request.number, request.key, request_path)
        # The orchestrator runs at most `slots` trials at once, so workers beyond the live ones are not needed.
        if len([w for w in self.workers if w not in self._gone]) < self.slots and self._can_replace():
            self._submit_worker(queue)
        return Owner("slurm", queue_entry=str(queue.root / PENDING / name))

    def ended(self, owner: Owner, key: str) -> str | None:
        if owner.kind != "slurm":
            return f"{owner.describe()} is not a Slurm job this runner can follow"
        if owner.queue_entry is None:  # a claim of one job per trial (sweeps before worker pools)
            return self._job_ended(owner.job_id) if owner.job_id else "a Slurm claim without a job id"
        entry = Path(owner.queue_entry)
        queue, name = TrialQueue(entry.parent.parent), entry.name
        state, worker = queue.state(name)
        if state == TAKEN:
            return self._job_ended(worker or "")
        if state == WITHDRAWN:
            return "withdrawn from the sweep's queue before any worker took it"
        if state != PENDING:
            return f"its queue entry {entry} is gone"
        workers = queue.workers()
        if any(self._job_ended(w) is None for w in workers):
            return None  # a worker is alive (or was asked about moments ago): it will take the trial
        if self.queue is not None and queue.root == self.queue.root and self._can_replace():
            self._submit_worker(queue)  # our own workers all ended (idle, time limit, node failure): a fresh one
            return None
        if queue.withdraw(name):  # an earlier run's pool, or ours broken: the trial is given up (and rerun later)
            last = self._gone.get(workers[-1], "") if workers else ""
            return f"every worker of its sweep's queue ({', '.join(workers) or 'none'}) ended before one took it" + (
                f"; the last: {last}" if last else ""
            )
        return None  # a worker took it meanwhile: its job is followed from the next look

    def _can_replace(self) -> bool:
        return len(self._broken) < self.slots + SPARE_WORKERS

    def _job_ended(self, job_id: str) -> str | None:
        """None while the job may still run (asked at most every few seconds), else why it ended."""
        if job_id in self._gone:
            return self._gone[job_id]
        now = time.monotonic()
        if now - self._asked.get(job_id, -POLL_CONTROLLER_SECONDS) < POLL_CONTROLLER_SECONDS:
            return None
        self._asked[job_id] = now
        try:
            job = self.launcher.client.job(job_id)
        except SlurmError:
            return None  # the controller did not answer: ask again next time
        if job is None:
            first = self._unknown_since.setdefault(job_id, now)
            if now - first < UNKNOWN_GRACE_SECONDS:
                return None
            why = f"Slurm no longer knows job {job_id}"
        elif job.state in PENDING_STATES or job.state in ACTIVE_STATES:
            return None
        else:
            hints = "; ".join(stderr_hints(job.stderr, limit=3)) if job.stderr else ""
            why = job.describe() + (f"; stderr: {hints}" if hints else "")
        if job is None or job.state != "COMPLETED":
            self._broken.append(why)
        self._gone[job_id] = why
        return why

    def close(self, abandon: bool = False) -> None:
        if self.queue is not None:
            self.queue.close()  # idle workers exit at once
        if not abandon:
            return
        for job_id in self.workers:
            with contextlib.suppress(SlurmError):  # already ended
                self.launcher.client.cancel(job_id)
