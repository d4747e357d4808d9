"""A small Slurm client: sbatch, squeue, scontrol, sstat, completion records (jobcomp/sacct), scancel.

Every command runs through one injectable `runner`, so tests can drive any answer the
controller might give; transient failures (controller not responding, socket timeouts) are
retried with bounded exponential backoff (`mlgraph.core.retry`), anything else raises `SlurmError` at once.
"""

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from mlgraph.core.retry import Retry
from mlgraph.slurm.jobs import (
    SlurmJob,
    base_state,
    int_or_none,
    job_from_jobcomp,
    job_from_scontrol,
    larger_size,
    parse_key_values,
)

# (argv, timeout seconds, environment) -> finished process; subprocess.run in production.
Runner = Callable[[Sequence[str], float, Mapping[str, str] | None], subprocess.CompletedProcess]

# stderr fragments Slurm prints when the controller is briefly unreachable or overloaded.
TRANSIENT_MARKERS = (
    "socket timed out",
    "unable to contact slurm controller",
    "zero bytes were transmitted or received",
    "communication connection failure",
    "resource temporarily unavailable",
    "connection refused",
    "slurm backup controller in standby mode",
    "transport endpoint is not connected",
    "slurmctld not responding",
)

_JOB_ID = re.compile(r"^\d+(_\d+)?(\+\d+)?$")


class SlurmError(RuntimeError):
    """A Slurm command failed; carries the command line and its stderr."""

    def __init__(self, command: Sequence[str], returncode: int | None, stderr: str, transient: bool = False):
        self.command = list(command)
        self.returncode = returncode
        self.stderr = (stderr or "").strip()
        self.transient = transient
        status = "timed out" if returncode is None else f"exit {returncode}"
        super().__init__(f"`{' '.join(self.command)}` failed ({status}): {self.stderr or '(no stderr)'}")


def _default_runner(args: Sequence[str], timeout: float, env: Mapping[str, str] | None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env, check=False)


def _reverse_lines(path: Path, block_size: int = 1 << 16) -> Iterator[str]:
    """Lines of `path` from the last to the first, reading blocks from the end (jobcomp files grow forever)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        position = fh.tell()
        tail = b""
        while position > 0:
            step = min(block_size, position)
            position -= step
            fh.seek(position)
            block = fh.read(step) + tail
            lines = block.split(b"\n")
            tail = lines.pop(0)
            for line in reversed(lines):
                if line.strip():
                    yield line.decode("utf-8", "replace")
        if tail.strip():
            yield tail.decode("utf-8", "replace")


class SlurmClient:
    """sbatch / squeue / scontrol / sstat / sacct / scancel with bounded retries on transient errors.

    `runner` executes one command (injectable for tests); `slurm_conf` sets SLURM_CONF for every
    command (an existing cluster whose config is not /etc/slurm/slurm.conf); `jobcomp_file`
    overrides the completion-record file read from `scontrol show config`.
    """

    def __init__(
        self,
        *,
        runner: Runner | None = None,
        slurm_conf: str | None = None,
        jobcomp_file: str | None = None,
        retries: int = 3,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 8.0,
        command_timeout_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._runner = runner or _default_runner
        self._slurm_conf = slurm_conf
        self._jobcomp_file = jobcomp_file
        self._timeout = command_timeout_seconds
        self._retry = Retry(
            attempts=retries + 1,
            delay=backoff_seconds,
            max_delay=max_backoff_seconds,
            transient=lambda error: isinstance(error, SlurmError) and error.transient,
            sleep=sleep,
        )
        self._config: dict[str, str] | None = None

    @staticmethod
    def available() -> bool:
        """Whether the Slurm client commands are on PATH."""
        return shutil.which("sbatch") is not None

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str] | None:
        if not self._slurm_conf and not extra:
            return None
        env = dict(os.environ)
        if self._slurm_conf:
            env["SLURM_CONF"] = self._slurm_conf
        env.update(extra or {})
        return env

    def run(self, args: Sequence[str], *, env: Mapping[str, str] | None = None, retry: bool = True) -> str:
        """Run one command; return stdout. Transient failures are retried with exponential backoff."""
        if not retry:
            return self._run_once(args, env)
        return self._retry.call(self._run_once, args, env)

    def _run_once(self, args: Sequence[str], env: Mapping[str, str] | None) -> str:
        try:
            proc = self._runner(args, self._timeout, self._env(env))
        except subprocess.TimeoutExpired:
            raise SlurmError(args, None, f"no answer within {self._timeout:g}s", transient=True) from None
        except FileNotFoundError as exc:
            raise SlurmError(args, 127, f"{args[0]} not found on PATH ({exc})") from exc
        if proc.returncode == 0:
            return proc.stdout
        stderr = (proc.stderr or "") + ("" if proc.stderr else proc.stdout or "")
        raise SlurmError(args, proc.returncode, stderr, transient=is_transient(stderr))

    def submit(
        self,
        script: str | os.PathLike[str],
        *,
        job_name: str | None = None,
        export: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> str:
        """`sbatch --parsable`; returns the job id.

        sbatch is not blindly retried: a timed-out submission may have reached the controller,
        so before resubmitting, a job already queued under `job_name` is taken as the result.
        """
        args = ["sbatch", "--parsable"]
        if export:
            args.append("--export=" + ",".join(export))
        args += [*extra_args, os.fspath(script)]
        for attempt in self._retry:
            if attempt.number > 1 and job_name:
                # The failed submission may have reached the controller: a job queued under its name is the result.
                queued = self.queue(name=job_name)
                if queued:
                    return queued[0].job_id
            with attempt:
                out = self.run(args, env=env, retry=False)
                job_id = out.strip().split(";")[0]
                if not _JOB_ID.match(job_id):
                    raise SlurmError(args, 0, f"unexpected sbatch output {out.strip()!r}")
                return job_id
        raise AssertionError("unreachable")

    def queue(self, *, job_ids: Sequence[str] = (), name: str | None = None) -> list[SlurmJob]:
        """`squeue` for the given jobs or job name (jobs the controller still holds)."""
        args = ["squeue", "--noheader", "--states=all", "--format=%i|%T|%r|%M|%l|%C|%m|%N|%P|%j"]
        if job_ids:
            args.append("--jobs=" + ",".join(job_ids))
        if name:
            args.append("--name=" + name)
        try:
            out = self.run(args)
        except SlurmError as error:
            if "invalid job id" in error.stderr.lower():
                return []
            raise
        jobs = []
        for line in out.splitlines():
            parts = line.split("|", 9)
            if len(parts) != 10:
                continue
            job_id, state, reason, elapsed, limit, cpus, mem, node, partition, job_name = parts
            jobs.append(
                SlurmJob(
                    job_id=job_id.strip(),
                    state=base_state(state),
                    source="squeue",
                    reason=reason or None,
                    elapsed=elapsed or None,
                    time_limit=limit or None,
                    cpus=int_or_none(cpus),
                    mem=mem or None,
                    node=node or None,
                    partition=partition or None,
                    name=job_name or None,
                )
            )
        return jobs

    def show_job(self, job_id: str) -> SlurmJob | None:
        """`scontrol show job`; None once the controller has purged the job (MinJobAge)."""
        try:
            out = self.run(["scontrol", "--oneliner", "show", "job", str(job_id)])
        except SlurmError as error:
            if "invalid job id" in error.stderr.lower():
                return None
            raise
        for line in out.splitlines():
            fields = parse_key_values(line)
            if fields.get("JobId") == str(job_id):
                return job_from_scontrol(fields)
        return None

    def config(self) -> dict[str, str]:
        """`scontrol show config` as a dict (cached)."""
        if self._config is None:
            out = self.run(["scontrol", "show", "config"])
            config = {}
            for line in out.splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    config[key.strip()] = value.strip()
            self._config = config
        return self._config

    def jobcomp_file(self) -> Path | None:
        """The jobcomp/filetxt completion-record file, when the cluster keeps one."""
        if self._jobcomp_file:
            return Path(self._jobcomp_file)
        config = self.config()
        if config.get("JobCompType") == "jobcomp/filetxt" and config.get("JobCompLoc"):
            return Path(config["JobCompLoc"])
        return None

    def completion_record(self, job_id: str) -> SlurmJob | None:
        """The job's record in the jobcomp file (the latest one if it was requeued), or None."""
        path = self.jobcomp_file()
        if path is None or not path.exists():
            return None
        prefix = f"JobId={job_id} "
        for line in _reverse_lines(path):
            if line.startswith(prefix):
                return job_from_jobcomp(parse_key_values(line))
        return None

    def accounting_record(self, job_id: str) -> SlurmJob | None:
        """The job's `sacct` record when the cluster has accounting storage (slurmdbd), else None."""
        if self.config().get("AccountingStorageType", "accounting_storage/none") == "accounting_storage/none":
            return None
        out = self.run(
            [
                "sacct",
                "--noheader",
                "--parsable2",
                "--jobs=" + str(job_id),
                "--format=JobID,State,ExitCode,Elapsed,Timelimit,AllocCPUS,ReqMem,MaxRSS,NodeList,Partition,JobName",
            ]
        )
        job: SlurmJob | None = None
        max_rss: str | None = None
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) < 11:
                continue
            step_id = parts[0]
            if step_id == str(job_id):
                job = SlurmJob(
                    job_id=step_id,
                    state=base_state(parts[1]),
                    source="sacct",
                    exit_code=parts[2] or None,
                    elapsed=parts[3] or None,
                    time_limit=parts[4] or None,
                    cpus=int_or_none(parts[5]),
                    mem=parts[6] or None,
                    node=parts[8] or None,
                    partition=parts[9] or None,
                    name=parts[10] or None,
                )
            elif parts[7]:
                # MaxRSS is reported per step; the job's peak is the largest step peak.
                max_rss = larger_size(max_rss, parts[7])
        if job is not None and max_rss:
            job = SlurmJob(**{**job.__dict__, "max_rss": max_rss})
        return job

    def job(self, job_id: str) -> SlurmJob | None:
        """Best available view of a job: the controller, then jobcomp, then sacct; None if unknown."""
        return self.show_job(job_id) or self.completion_record(job_id) or self.accounting_record(job_id)

    def step_max_rss(self, job_id: str, step: str = "batch") -> str | None:
        """Peak RSS of a running step as sampled by jobacct_gather (`sstat`); None when unavailable."""
        try:
            out = self.run(
                ["sstat", "--noheader", "--parsable2", f"--jobs={job_id}.{step}", "--format=MaxRSS"], retry=False
            )
        except SlurmError:
            return None
        values = [v.strip() for v in out.splitlines() if v.strip()]
        return values[0] if values else None

    def cancel(self, job_id: str, *, signal: str | None = None, full: bool = False) -> None:
        """`scancel`; cancelling a job that already ended is not an error."""
        args = ["scancel"]
        if signal:
            args.append("--signal=" + signal)
        if full:
            args.append("--full")
        args.append(str(job_id))
        try:
            self.run(args)
        except SlurmError as error:
            if "already completing or completed" in error.stderr.lower():
                return
            raise


def is_transient(stderr: str) -> bool:
    text = stderr.lower()
    return any(marker in text for marker in TRANSIENT_MARKERS)
