"""Harness for tests against the real local Slurm cluster and a real `dagster-daemon run`.

Everything started here is tracked by PID and stopped by PID (the daemon and the code
servers it spawns); every wait is bounded.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import yaml
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.storage.dagster_run import DagsterRun

from mlgraph.core.drive import PROJECT_ROOT
from tests.support.instance import DEFAULT_RUN_LAUNCHER, write_instance_config
from tests.support.wait import wait_for

SUPPORT_DEFS = Path(__file__).with_name("defs.py")
SUPPORT_LOCATION = "slurm_support"
PIPELINE_LOCATION = "mlgraph"
BIN = Path(sys.executable).parent


def require_slurm() -> None:
    """Skip without Slurm, except in CI (CI=true), where a missing cluster is a failure."""
    import pytest

    in_ci = os.environ.get("CI", "").lower() == "true"
    if shutil.which("sinfo") is None:
        if in_ci:
            pytest.fail("CI=true but Slurm is not installed: run `scripts/slurm-local up` before `make test`")
        pytest.skip("Slurm is not installed; `scripts/slurm-local up` starts a local single-node cluster")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30, check=False)
    if "UP" not in ping.stdout:
        pytest.fail(
            f"Slurm is installed but its controller does not answer ({ping.stdout.strip()} "
            f"{ping.stderr.strip()}): run `scripts/slurm-local up`"
        )


def slurm_launcher(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dagster.yaml `run_launcher` block of the Slurm run launcher with `config`."""
    return {"module": "mlgraph.launcher.slurm_launcher", "class": "SlurmRunLauncher", "config": dict(config or {})}


def write_slurm_instance(
    home: Path, launcher_config: Mapping[str, Any] | None = None, *, launcher: str = "slurm", poll_seconds: int = 2
) -> Path:
    """The Slurm tests' instance (write_instance_config with four runs at once, fast monitoring, no resume),
    with the Slurm launcher (`launcher="slurm"`, `launcher_config`) or Dagster's default one."""
    write_instance_config(
        home,
        slurm_launcher(launcher_config) if launcher == "slurm" else DEFAULT_RUN_LAUNCHER,
        max_concurrent_runs=4,
        run_monitoring={
            "start_timeout_seconds": 120,
            "cancel_timeout_seconds": 30,
            "max_resume_run_attempts": 0,
            "poll_interval_seconds": poll_seconds,
        },
    )
    return home / "dagster.yaml"


def write_workspace(path: Path, *, pipeline: bool = True) -> Path:
    """workspace.yaml with the test-only location (and the real pipeline's, when asked)."""
    locations: list[dict[str, Any]] = [
        {
            "python_file": {
                "relative_path": str(SUPPORT_DEFS),
                "location_name": SUPPORT_LOCATION,
                "working_directory": str(PROJECT_ROOT),
            }
        }
    ]
    if pipeline:
        locations.append(
            {
                "python_module": {
                    "module_name": "pipeline_assets.definitions",
                    "location_name": PIPELINE_LOCATION,
                    "working_directory": str(PROJECT_ROOT),
                }
            }
        )
    path.write_text(yaml.safe_dump({"load_from": locations}, sort_keys=False))
    return path


def kill_tree(pid: int) -> None:
    """SIGKILL a process we started and every process below it (by PID)."""
    try:
        parent = psutil.Process(pid)
        family = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(family, timeout=10)


class Daemon:
    """`dagster-daemon run -w workspace.yaml` as a subprocess, stopped by PID."""

    def __init__(self, workspace: Path, env: Mapping[str, str], log_path: Path):
        self.workspace = workspace
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, instance: dg.DagsterInstance, timeout: float = 90) -> None:
        started = time.time()
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the daemon's lifetime
        self.proc = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(self.workspace)],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"dagster-daemon exited early; log: {self.log_path.read_text()[-3000:]}")
            beats = instance.get_daemon_heartbeats()
            wanted = {"QUEUED_RUN_COORDINATOR", "MONITORING"}
            return wanted <= {name for name, beat in beats.items() if beat.timestamp >= started}

        wait_for(ready, timeout, "dagster-daemon heartbeats (queued runs + monitoring)", interval=0.5)

    def kill(self) -> None:
        """SIGKILL, as a crash would; the code servers it spawned go too."""
        if self.proc is not None:
            kill_tree(self.proc.pid)
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        children = []
        with contextlib.suppress(psutil.NoSuchProcess):
            children = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=20)
        kill_tree(self.proc.pid)
        for child in children:
            kill_tree(child.pid)
        self.proc = None


def create_run(
    instance: dg.DagsterInstance,
    workspace: Any,
    location_name: str,
    job_name: str,
    *,
    tags: Mapping[str, str] | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> DagsterRun:
    """Create a run the way `dagster job launch` does (remote origin + execution plan snapshot)."""
    location = workspace.get_code_location(location_name)
    repo = next(iter(location.get_repositories().values()))
    selector = JobSubsetSelector(
        location_name=location.name, repository_name=repo.name, job_name=job_name, op_selection=None
    )
    remote_job = location.get_job(selector)
    run_config = dict(run_config or {})
    plan = location.get_execution_plan(
        remote_job, run_config, step_keys_to_execute=None, known_state=None, instance=instance
    ).execution_plan_snapshot
    return instance.create_run(
        job_name=job_name,
        run_id=None,
        run_config=run_config,
        resolved_op_selection=None,
        step_keys_to_execute=plan.step_keys_to_execute,
        op_selection=None,
        status=None,
        root_run_id=None,
        parent_run_id=None,
        tags={**remote_job.tags, **(tags or {})},
        job_snapshot=remote_job.job_snapshot,
        execution_plan_snapshot=plan,
        parent_job_snapshot=remote_job.parent_job_snapshot,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        asset_selection=None,
        asset_check_selection=None,
        asset_graph=repo.asset_graph,
    )


def squeue_state(job_id: str) -> str | None:
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout.strip()
    return out or None


def run_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Every event message of a run (engine events, failures, step events)."""
    return [record.message or "" for record in instance.all_logs(run_id)]
