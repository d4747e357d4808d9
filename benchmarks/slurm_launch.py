"""Launch latency of SlurmRunLauncher against Dagster's DefaultRunLauncher. Prints JSON.

For each of N runs of a one-asset job (tests/support/slurm/defs.py `quick_job`) on the real
local cluster: seconds from `instance.launch_run` to the Slurm job RUNNING and to the Dagster
run STARTED; then the same job N times through DefaultRunLauncher (launch_run -> STARTED).
Each run finishes before the next starts. Medians, with min / max.
Target (Slurm launcher issue): the job is RUNNING within 3 s of launch_run, median.

    .venv/bin/python benchmarks/slurm_launch.py [--runs 10]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dagster as dg
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

from tests.support import dagster_instance, wait_for
from tests.support.slurm.harness import (
    SUPPORT_LOCATION,
    create_run,
    squeue_state,
    write_slurm_instance,
    write_workspace,
)

TARGET_RUNNING_S = 3.0
IN_PROGRESS_OR_DONE = {
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
}


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def launch_and_time(instance, workspace, slurm: bool, timeout: float = 120) -> dict[str, float]:
    context = workspace.create_request_context()
    tags = {"mlgraph/compute": "slurm"} if slurm else {}
    run = create_run(instance, context, SUPPORT_LOCATION, "quick_job", tags=tags)
    start = time.perf_counter()
    instance.launch_run(run.run_id, context)
    launched = time.perf_counter() - start
    job_id = instance.get_run_by_id(run.run_id).tags.get("slurm/job_id")
    timings = {"launch_call": launched}
    deadline = start + timeout
    while time.perf_counter() < deadline:
        now = time.perf_counter() - start
        if slurm and "job_running" not in timings and squeue_state(job_id) in {"RUNNING", "COMPLETING", "COMPLETED"}:
            timings["job_running"] = now
        status = instance.get_run_by_id(run.run_id).status
        if "run_started" not in timings and status in IN_PROGRESS_OR_DONE:
            timings["run_started"] = now
        if status.value in {"SUCCESS", "FAILURE", "CANCELED"} and (not slurm or "job_running" in timings):
            if status != dg.DagsterRunStatus.SUCCESS:
                raise RuntimeError(f"benchmark run {run.run_id} ended {status.value}")
            break
        time.sleep(0.02)
    else:
        raise RuntimeError(f"benchmark run {run.run_id} did not finish within {timeout}s")
    if slurm:
        # Let the footer finish so the next job starts on an idle node.
        wait_for(
            lambda: squeue_state(job_id) in {None, "COMPLETED", "FAILED", "CANCELLED"},
            max(0.0, deadline - time.perf_counter()),
            f"Slurm job {job_id} to end",
            interval=0.1,
        )
    return timings


def measure(home: Path, workspace_yaml: Path, slurm: bool, runs: int) -> list[dict[str, float]]:
    os.environ["DAGSTER_HOME"] = str(home)
    with (
        dagster_instance(home) as instance,
        # Code-server INFO lines would go to stdout, which carries only the JSON.
        WorkspaceProcessContext(
            instance, WorkspaceFileTarget(paths=[str(workspace_yaml)]), code_server_log_level="WARNING"
        ) as workspace,
    ):
        launch_and_time(instance, workspace, slurm)  # warm-up: code server and caches
        return [launch_and_time(instance, workspace, slurm) for _ in range(runs)]


def slurm_version() -> str:
    out = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or out.stderr.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlgraph-slurm-bench-") as tmp:
        root = Path(tmp)
        os.environ["SHARED_DRIVE"] = str(root / "shared")
        (root / "shared").mkdir()
        workspace_yaml = write_workspace(root / "workspace.yaml", pipeline=False)
        slurm_home, default_home = root / "slurm_home", root / "default_home"
        write_slurm_instance(slurm_home, {"route": "tagged", "cpus": 1, "mem": "512M", "time": "00:05:00"})
        write_slurm_instance(default_home, launcher="default")
        slurm = measure(slurm_home, workspace_yaml, slurm=True, runs=args.runs)
        default = measure(default_home, workspace_yaml, slurm=False, runs=args.runs)

    running = summary([t["job_running"] for t in slurm])
    result = {
        "benchmark": "slurm_launch",
        "runs": args.runs,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "slurm": slurm_version(),
        "slurm_launcher": {
            "launch_run_call_s": summary([t["launch_call"] for t in slurm]),
            "launch_to_job_running_s": running,
            "launch_to_run_started_s": summary([t["run_started"] for t in slurm]),
        },
        "default_launcher": {
            "launch_run_call_s": summary([t["launch_call"] for t in default]),
            "launch_to_run_started_s": summary([t["run_started"] for t in default]),
        },
        "target_job_running_median_s": TARGET_RUNNING_S,
        "meets_target": running["median"] <= TARGET_RUNNING_S,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
