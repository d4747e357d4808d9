"""The end of a Slurm job: Slurm's figures for the job attached to its Dagster run.

`python -m mlgraph.launcher.job_end finish ...` is the footer of every batch script (mlgraph.launcher.batch_script);
the figures and messages themselves are mlgraph.slurm.figures, which the launcher uses for run monitoring.
"""

import argparse
import sys
from collections.abc import Sequence

import dagster as dg
from dagster._core.events import EngineEventData

from mlgraph.core.tags import SLURM_EXIT_CODE_TAG
from mlgraph.launcher.slurm_launcher import SlurmRunLauncher
from mlgraph.slurm.client import SlurmClient
from mlgraph.slurm.figures import figures_message, job_figures, stderr_hints
from mlgraph.slurm.jobs import SlurmJob


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
    instance.report_engine_event(
        figures_message(job_id, figures), run, EngineEventData(metadata=dict(figures)), cls=SlurmRunLauncher
    )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlgraph.launcher.job_end")
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
