"""One background poller of Slurm shared by every viewer: squeue for the queue, completion records for the rest.

However many pages are open, Slurm is asked at most once per interval (never more often than
MIN_POLL_SECONDS): requests only read the latest snapshot. When squeue is missing, errors or times
out, the snapshot says so ("Slurm unavailable") and keeps the finished-job records it already had.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlgraph.slurm.client import SlurmClient, SlurmError
from mlgraph.slurm.jobs import SlurmJob, base_state, job_from_jobcomp, parse_key_values

# The floor: a page opened by fifty people must not become fifty squeue calls a minute on the controller.
MIN_POLL_SECONDS = 10.0
# squeue fields: the client's own queue() omits submit and start times, which the page shows.
_SQUEUE_FORMAT = "%i|%T|%r|%M|%l|%V|%S|%N|%P|%j"
# The first read of the completion file takes at most its last 16 MiB (it grows forever); later reads only new bytes.
_JOBCOMP_FIRST_READ = 16 << 20
_KEEP_FINISHED = 50_000
# Finished jobs a run refers to that neither squeue nor the completion file knows: sacct lookups per poll.
_SACCT_PER_POLL = 50


@dataclass(frozen=True)
class SlurmSnapshot:
    """What the last poll saw. `queue`: jobs squeue holds; `finished`: completion records by job id."""

    queue: Mapping[str, SlurmJob] = field(default_factory=dict)
    finished: Mapping[str, SlurmJob] = field(default_factory=dict)
    error: str | None = None
    polled_at: float | None = None

    @property
    def available(self) -> bool:
        return self.polled_at is not None and self.error is None

    def job(self, job_id: str | None) -> SlurmJob | None:
        if not job_id:
            return None
        return self.queue.get(job_id) or self.finished.get(job_id)


def _squeue_job(line: str) -> SlurmJob | None:
    parts = line.split("|", 9)
    if len(parts) != 10:
        return None
    job_id, state, reason, elapsed, limit, submit, start, node, partition, name = (p.strip() for p in parts)

    def known(value: str) -> str | None:
        return value if value and value not in ("N/A", "None", "(null)", "Unknown") else None

    return SlurmJob(
        job_id=job_id,
        state=base_state(state),
        source="squeue",
        reason=known(reason),
        elapsed=known(elapsed),
        time_limit=known(limit),
        node=known(node),
        partition=known(partition),
        name=known(name),
        raw={"SubmitTime": known(submit) or "", "StartTime": known(start) or ""},
    )


class SlurmPoller:
    """Polls in a daemon thread (`start`/`stop`); `snapshot` is replaced whole, so readers need no lock."""

    def __init__(
        self,
        interval_seconds: float = 30.0,
        *,
        bin_dir: str | None = None,
        timeout_seconds: float = 10.0,
        jobcomp_file: str | None = None,
    ):
        self.interval = max(float(interval_seconds), MIN_POLL_SECONDS)
        self._bin_dir = bin_dir
        # One retry: a transient controller hiccup is retried once, then the page says unavailable until next poll.
        self._client = SlurmClient(
            runner=self._run,
            jobcomp_file=jobcomp_file,
            retries=1,
            backoff_seconds=0.5,
            command_timeout_seconds=timeout_seconds,
        )
        self.snapshot = SlurmSnapshot()
        self.polls = 0
        self._finished: OrderedDict[str, SlurmJob] = OrderedDict()
        self._jobcomp_offset: tuple[Path, int, int] | None = None
        self._wanted: frozenset[str] = frozenset()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self, args: Sequence[str], timeout: float, env: Mapping[str, str] | None) -> subprocess.CompletedProcess:
        argv = [os.path.join(self._bin_dir, args[0]) if self._bin_dir else args[0], *args[1:]]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)

    def want(self, job_ids: Iterable[str]) -> None:
        """Job ids the page shows: those squeue no longer holds are looked up in the completion records."""
        self._wanted = frozenset(job_ids)

    def poll(self) -> SlurmSnapshot:
        """One poll (the thread calls this; tests may too). Never raises: a failure becomes `error`."""
        self.polls += 1
        error = None
        queue: dict[str, SlurmJob] = {}
        try:
            out = self._client.run(["squeue", "--noheader", "--states=all", f"--format={_SQUEUE_FORMAT}"])
            for line in out.splitlines():
                job = _squeue_job(line)
                if job is not None:
                    queue[job.job_id] = job
        except SlurmError as exc:
            error = str(exc)
        except Exception as exc:
            error = f"squeue: {exc}"
        if error is None:
            self._read_finished(set(self._wanted) - set(queue))
        self.snapshot = SlurmSnapshot(queue=queue, finished=dict(self._finished), error=error, polled_at=time.time())
        return self.snapshot

    def _remember(self, job: SlurmJob) -> None:
        self._finished[job.job_id] = job
        self._finished.move_to_end(job.job_id)
        while len(self._finished) > _KEEP_FINISHED:
            self._finished.popitem(last=False)

    def _read_finished(self, missing: set[str]) -> None:
        try:
            path = self._client.jobcomp_file()
            if path is not None:
                self._follow_jobcomp(path)
            unknown = sorted(missing - set(self._finished))[:_SACCT_PER_POLL]
            for job_id in unknown:
                job = self._client.accounting_record(job_id)
                if job is None:
                    break  # no accounting storage: asking again for the others would answer the same
                self._remember(job)
        except (SlurmError, OSError):
            return  # the queue is still right; finished jobs keep their last known records

    def _follow_jobcomp(self, path: Path) -> None:
        """Read what the completion file gained since the last poll (it is appended to, one line per job)."""
        st = path.stat()
        last = self._jobcomp_offset
        # The same file, not truncated: continue where the last poll stopped; otherwise (first poll, rotation) its tail.
        continuing = last is not None and last[:2] == (path, st.st_ino) and last[2] <= st.st_size
        start = last[2] if continuing else max(st.st_size - _JOBCOMP_FIRST_READ, 0)
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read(st.st_size - start)
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        lines = data[:end].decode("utf-8", "replace").splitlines()
        if start and not continuing:
            lines = lines[1:]  # the first line of a cut read is partial
        for line in lines:
            if line.startswith("JobId="):
                job = job_from_jobcomp(parse_key_values(line))
                if job.job_id:
                    self._remember(job)
        self._jobcomp_offset = (path, st.st_ino, start + end)

    def _loop(self) -> None:
        while True:
            self.poll()
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="slurm-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval)
