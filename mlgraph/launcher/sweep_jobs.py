"""Sweep trials as Slurm jobs: under the Slurm launcher, each trial of a sweep is its own batch job.

The runner submits `python -m mlgraph.training.sweep_trial REQUEST` with the run's environment (the
launcher's exports), one CPU per trial (trials are single-threaded by design) and the run's memory and
time limits. The orchestrator (mlgraph.training.sweeps) reads the trial's record from the drive; this
runner only says when a job can no longer write one, and why (Slurm's state and the end of its stderr).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

from dagster._core.storage.dagster_run import DagsterRun

from mlgraph.launcher.slurm_launcher import SlurmRunLauncher
from mlgraph.slurm.client import SlurmError
from mlgraph.slurm.figures import stderr_hints
from mlgraph.slurm.jobs import ACTIVE_STATES, PENDING_STATES
from mlgraph.training.sweep_runners import Owner
from mlgraph.training.sweep_trial import TrialRequest

# A job the controller, the completion records and sacct all forget for this long is taken as gone.
UNKNOWN_GRACE_SECONDS = 120.0
POLL_CONTROLLER_SECONDS = 2.0


class SlurmTrialRunner:
    kind = "slurm"

    def __init__(self, launcher: SlurmRunLauncher, run: DagsterRun, slots: int):
        self.launcher = launcher
        self.run = run
        self.slots = max(1, slots)
        self.resources = dataclasses.replace(launcher.resources_for(run), cpus=1)
        self.python = launcher.python_for(run)
        self._jobs: dict[str, str] = {}  # trial key → job id, for cancelling on interruption
        self._unknown_since: dict[str, float] = {}
        self._asked: dict[str, float] = {}

    def start(self, request: TrialRequest, request_path: Path) -> Owner:
        command = [self.python, "-m", "mlgraph.training.sweep_trial", str(request_path)]
        job_name = f"mlgraph-trial-{request.key[:8]}"
        job_id = self.launcher.submit_command(
            self.run, job_name, command, self.resources, request_path.parent / "trial.sbatch"
        )
        self._jobs[request.key] = job_id
        return Owner("slurm", job_id=job_id)

    def ended(self, owner: Owner, key: str) -> str | None:
        if owner.kind != "slurm" or not owner.job_id:
            return f"{owner.describe()} is not a Slurm job this runner can follow"
        # The record on the drive is read every poll; the controller is asked at most every few seconds.
        now = time.monotonic()
        if now - self._asked.get(owner.job_id, -POLL_CONTROLLER_SECONDS) < POLL_CONTROLLER_SECONDS:
            return None
        self._asked[owner.job_id] = now
        try:
            job = self.launcher.client.job(owner.job_id)
        except SlurmError:
            return None  # the controller did not answer: ask again next time
        if job is None:
            first = self._unknown_since.setdefault(owner.job_id, time.monotonic())
            if time.monotonic() - first < UNKNOWN_GRACE_SECONDS:
                return None
            return f"Slurm no longer knows job {owner.job_id}"
        if job.state in PENDING_STATES or job.state in ACTIVE_STATES:
            return None
        hints = "; ".join(stderr_hints(job.stderr, limit=3)) if job.stderr else ""
        return job.describe() + (f"; stderr: {hints}" if hints else "")

    def close(self, abandon: bool = False) -> None:
        if not abandon:
            return
        for job_id in self._jobs.values():
            with contextlib.suppress(SlurmError):  # already ended
                self.launcher.client.cancel(job_id)
