"""The batch script one Dagster run becomes: validated Slurm resources and the script text.

Plain Python (no Dagster): the launcher renders it, and an operator can read it, rerun it by hand
or test it without an instance.
"""

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("training", "evaluation", "analysis")

_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{1,2}){0,2}|\d+(:\d{1,2}){0,2}|UNLIMITED|INFINITE)$", re.IGNORECASE)
_MEM = re.compile(r"^[1-9]\d*[KMGT]?$", re.IGNORECASE)
_PARTITION = re.compile(r"^[A-Za-z0-9_.-]+$")
_GRES = re.compile(r"^[A-Za-z0-9_.:,/-]+$")


class SlurmConfigError(ValueError):
    """A run tag or launcher setting is not a valid Slurm value."""


@dataclass(frozen=True)
class SlurmResources:
    """What one batch job asks Slurm for."""

    cpus: int
    mem: str
    time: str
    kind: str
    partition: str | None = None
    gres: str | None = None


def validate_resources(values: Mapping[str, Any], origin: str) -> SlurmResources:
    """Check cpus/mem/time/partition/gres/kind; `origin` ("run tag slurm/", "dagster.yaml ...config.")
    prefixes the setting's name in the error message."""

    def bad(name: str, value: Any, fix: str) -> SlurmConfigError:
        return SlurmConfigError(f"{origin}{name}={value!r} is not valid; {fix}")

    raw_cpus = values["cpus"]
    try:
        cpus = int(str(raw_cpus).strip())
    except ValueError:
        raise bad("cpus", raw_cpus, "use a whole number of CPUs, e.g. 2") from None
    if not 1 <= cpus <= 4096:
        raise bad("cpus", raw_cpus, "use a whole number of CPUs between 1 and 4096")
    mem = str(values["mem"]).strip()
    if not _MEM.match(mem):
        raise bad("mem", values["mem"], "use a Slurm memory size such as 512M or 4G (K, M, G or T; above 0)")
    limit = str(values["time"]).strip()
    if not _TIME.match(limit):
        raise bad("time", values["time"], "use a Slurm time limit such as 30, 01:30:00 or 1-12:00:00")
    kind = str(values.get("kind") or "training").strip()
    if kind not in KINDS:
        raise bad("kind", values.get("kind"), f"use one of {', '.join(KINDS)} (it picks the log directory)")
    partition = values.get("partition")
    if partition not in (None, "") and not _PARTITION.match(str(partition)):
        raise bad("partition", partition, "use a partition name (letters, digits, '_', '-', '.')")
    gres = values.get("gres")
    if gres not in (None, "") and not _GRES.match(str(gres)):
        raise bad("gres", gres, "use a Slurm GRES such as gpu:1 or gpu:a100:2")
    return SlurmResources(
        cpus=cpus,
        mem=mem.upper(),
        time=limit,
        kind=kind,
        partition=str(partition) if partition else None,
        gres=str(gres) if gres else None,
    )


def render_batch_script(
    *,
    run_id: str,
    job_name: str,
    resources: SlurmResources,
    log_dir: Path,
    working_directory: Path,
    exports: Mapping[str, str],
    passed_by_name: Sequence[str],
    command: Sequence[str],
    python_executable: str,
    record_end: bool = True,
) -> str:
    """The batch script for one run (template: design document 004, "Evaluation Job Template").

    `record_end=False` (a sweep trial's job, whose record is its own file): no footer that writes
    Slurm's figures onto the Dagster run, the command simply runs.
    """
    kind_dir = log_dir / resources.kind
    directives = [
        f"--job-name={job_name}",
        f"--output={kind_dir}/%j.log",
        f"--error={kind_dir}/%j.err",
        f"--time={resources.time}",
        f"--mem={resources.mem}",
        f"--cpus-per-task={resources.cpus}",
        "--ntasks=1",
        # Requeueing would start a second worker for a run Dagster already counts as started.
        "--no-requeue",
    ]
    if resources.partition:
        directives.append(f"--partition={resources.partition}")
    if resources.gres:
        directives.append(f"--gres={resources.gres}")
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives)]
    lines += [
        f"# Dagster run {run_id}; written by mlgraph.launcher.slurm_launcher.SlurmRunLauncher.",
        "# Only the variables below reach the job; "
        + (f"{', '.join(passed_by_name)} are passed by name (sbatch --export)." if passed_by_name else ""),
        f"cd {shlex.quote(str(working_directory))} || exit 1",
    ]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in exports.items()]
    if not record_end:
        return "\n".join([*lines, f"exec {shlex.join(command)}", ""])
    finish = shlex.join([python_executable, "-m", "mlgraph.launcher.job_end", "finish", "--run-id", run_id, "--job-id"])
    lines += [
        "",
        "finish() {  # Slurm's figures for this job onto the Dagster run; never changes the job's result",
        f'    {finish} "$SLURM_JOB_ID" --exit-code "$1" "${{@:2}}" || true',
        "}",
        "# scancel and the time limit send SIGTERM to every process of the job: the run worker records",
        "# the interruption itself, then the figures are attached before Slurm's KillWait runs out.",
        "on_term() {",
        '    wait "$worker"',
        "    finish 143 --terminated",
        "    exit 143",
        "}",
        "trap on_term TERM",
        f"{shlex.join(command)} &",
        "worker=$!",
        'wait "$worker"',
        "status=$?",
        'finish "$status"',
        'exit "$status"',
        "",
    ]
    return "\n".join(lines)
