"""Slurm's own account of a finished job, as run tags and messages: shared by the launcher and its job footer."""

import os
import re
from collections.abc import Mapping

from mlgraph.core.tags import (
    SLURM_CPUS_ALLOC_TAG,
    SLURM_ELAPSED_TAG,
    SLURM_EXIT_CODE_TAG,
    SLURM_MAX_RSS_TAG,
    SLURM_MEM_REQ_TAG,
    SLURM_STATE_TAG,
)
from mlgraph.core.untrusted import Unusable, read_regular_tail
from mlgraph.slurm.jobs import SlurmJob

# slurmstepd's kill lines are the last lines of the file.
STDERR_TAIL_BYTES = 65536

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
        # The path comes from a job's tags or Slurm: a link to /dev/zero or a FIFO is refused, never read.
        data, _ = read_regular_tail(path, STDERR_TAIL_BYTES)
    except (Unusable, OSError):
        return []
    tail = data.decode("utf-8", "replace")
    hits = [line.strip() for line in tail.splitlines() if _STEPD_LINE.search(line)]
    unique = list(dict.fromkeys(hits))
    return unique[-limit:]
