"""The end of a Slurm job: Slurm's figures for the job attached to its Dagster run.

`python -m launcher.job_end finish ...` is the footer of every batch script (launcher.batch_script);
the launcher reuses `job_figures` and `stderr_hints` for run-monitoring messages.
"""

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence

import dagster as dg
from dagster._core.events import EngineEventData

from core.tags import (
    SLURM_CPUS_ALLOC_TAG,
    SLURM_ELAPSED_TAG,
    SLURM_EXIT_CODE_TAG,
    SLURM_MAX_RSS_TAG,
    SLURM_MEM_REQ_TAG,
    SLURM_STATE_TAG,
)
from resources.slurm import SlurmClient
from resources.slurm_jobs import SlurmJob

# What slurmstepd writes to a job's stderr when it kills it; shown in the failure message.
_STEPD_LINE = re.compile(r"slurmstepd.*(error|CANCELLED|exceeded|oom)", re.IGNORECASE)


def job_figures(job: SlurmJob, state: str | None = None, max_rss: str | None = None) -> dict[str, str]:
    """Run tags for Slurm's own account of the job."""
    figures = {
        SLURM_STATE_TAG: state or job.state,
        SLURM_ELAPSED_TAG: job.elapsed,
        SLURM_CPUS_ALLOC_TAG: str(job.cpus) if job.cpus is not None else None,
        SLURM_MEM_REQ_TAG: job.mem,
        SLURM_MAX_RSS_TAG: max_rss or job.max_rss,
        SLURM_EXIT_CODE_TAG: job.exit_code,
    }
    return {key: value for key, value in figures.items() if value}


def figures_message(job_id: str, figures: Mapping[str, str]) -> str:
    parts = [f"{key.split('/', 1)[1]} {value}" for key, value in figures.items() if key != SLURM_STATE_TAG]
    return f"Slurm job {job_id} {figures.get(SLURM_STATE_TAG, '?')}: " + ", ".join(parts)


def stderr_hints(path: str | os.PathLike[str] | None, limit: int = 3) -> list[str]:
    """The last slurmstepd lines of a job's stderr (memory-limit kills, time limits, cancellations)."""
    if not path:
        return []
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - 65536, 0))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    hits = [line.strip() for line in tail.splitlines() if _STEPD_LINE.search(line)]
    unique = list(dict.fromkeys(hits))
    return unique[-limit:]


def record_job_end(
    instance: dg.DagsterInstance,
    run_id: str,
    job_id: str,
    exit_code: int,
    terminated: bool,
    client: SlurmClient | None = None,
) -> dict[str, str]:
    """Footer of every batch script: tag the run with Slurm's figures for its job and log them."""
    client = client or SlurmClient(retries=1)
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise SystemExit(f"run {run_id} not found in the instance at {instance.root_directory}")
    job = client.show_job(job_id) or SlurmJob(job_id=job_id, state="UNKNOWN", source="none")
    max_rss = None if terminated else client.step_max_rss(job_id)
    if terminated:
        # The job is COMPLETING here; its reason (or slurmstepd's note in stderr) says why.
        hints = " ".join(stderr_hints(job.stderr, limit=5)).upper()
        if (job.reason or "") == "TimeLimit" or "TIME LIMIT" in hints:
            state = "TIMEOUT"
        elif "PREEMPT" in (job.reason or "").upper() or "PREEMPTION" in hints:
            state = "PREEMPTED"
        else:
            state = "CANCELLED"
    else:
        state = "COMPLETED" if exit_code == 0 else "FAILED"
    figures = job_figures(job, state=state, max_rss=max_rss)
    figures[SLURM_EXIT_CODE_TAG] = str(exit_code)
    instance.add_run_tags(run_id, figures)
    # Imported here: the launcher imports this module for its messages.
    from launcher.slurm_launcher import SlurmRunLauncher

    instance.report_engine_event(
        figures_message(job_id, figures), run, EngineEventData(metadata=dict(figures)), cls=SlurmRunLauncher
    )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.job_end")
    sub = parser.add_subparsers(dest="command", required=True)
    finish = sub.add_parser("finish", help="attach Slurm's figures for a job to its Dagster run")
    finish.add_argument("--run-id", required=True)
    finish.add_argument("--job-id", required=True)
    finish.add_argument("--exit-code", type=int, required=True)
    finish.add_argument("--terminated", action="store_true", help="the job was signalled (scancel / time limit)")
    args = parser.parse_args(argv)
    with dg.DagsterInstance.get() as instance:
        record_job_end(instance, args.run_id, args.job_id, args.exit_code, args.terminated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
