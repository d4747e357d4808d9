"""A real `dagster-daemon run` on a temporary DAGSTER_HOME, for integration tests and benchmarks/sensors.py.

The instance config is generated; its `run_launcher` block is a parameter, so the same scenario can
run with Dagster's DefaultRunLauncher or with the Slurm run launcher. Every process the daemon
starts (code server, run workers) inherits the unique DAGSTER_HOME, which is how `stop_all` finds
them again after the daemon itself has been killed: by PID, never by name.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from mlgraph.core.drive import PROJECT_ROOT

DEFAULT_RUN_LAUNCHER: dict[str, Any] = {"module": "dagster.core.launcher", "class": "DefaultRunLauncher"}


# Instance-level switch for declarative automation. Its sensors are on by default in code; a test that
# is not about automation turns them off here, or they would materialize every registered experiment.
AUTOMATION_OFF: dict[str, Any] = {"enabled": False, "use_sensors": False}


def write_instance_config(
    home: Path,
    run_launcher: Mapping[str, Any] | None = None,
    automation: bool = False,
    storage: Mapping[str, Any] | None = None,
) -> Path:
    """dagster.yaml (queued runs, the given launcher, run monitoring, automation on or off, storage: SQLite
    under `home` unless given) and workspace.yaml."""
    home.mkdir(parents=True, exist_ok=True)
    config = {
        "telemetry": {"enabled": False},
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"max_concurrent_runs": 2, "dequeue_interval_seconds": 1},
        },
        "run_launcher": dict(run_launcher or DEFAULT_RUN_LAUNCHER),
        "run_monitoring": {"enabled": True, "start_timeout_seconds": 180, "poll_interval_seconds": 5},
        "sensors": {"use_threads": True, "num_workers": 2},
    }
    if not automation:
        config["auto_materialize"] = AUTOMATION_OFF
    if storage:
        config["storage"] = dict(storage)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    workspace = home / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "pipeline_assets.definitions",
                            "location_name": "mlgraph",
                            "working_directory": str(PROJECT_ROOT),
                        }
                    }
                ]
            },
            sort_keys=False,
        )
    )
    return workspace


class DagsterDaemon:
    """Start, SIGKILL and restart `dagster-daemon run`; `stop_all` ends every process it led to."""

    def __init__(self, home: Path, env: Mapping[str, str], log_dir: Path):
        self.home = home.resolve()
        self.workspace = home / "workspace.yaml"
        self.env = {**os.environ, **env, "DAGSTER_HOME": str(self.home)}
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_dir / f"daemon-{self.starts}.log", "wb")  # noqa: SIM115 - closed in stop paths
        executable = Path(sys.executable).with_name("dagster-daemon")
        self.proc = subprocess.Popen(
            [str(executable), "run", "-w", str(self.workspace)],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self) -> None:
        """SIGKILL the daemon alone, as a crash would; its code server and runs keep going."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def descendants(self) -> list[int]:
        """PIDs of processes started for this DAGSTER_HOME (the daemon's children, orphaned or not)."""
        import psutil

        pids = []
        for proc in psutil.process_iter(["pid"]):
            if proc.pid == os.getpid():
                continue
            try:
                if proc.environ().get("DAGSTER_HOME") == str(self.home):
                    pids.append(proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return pids

    def stop_all(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        # Sweep until none is left: a code server may start a run worker while we kill its siblings.
        deadline = time.monotonic() + 15
        while (pids := self.descendants()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.log_dir.glob("daemon-*.log")))


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.25,
    on_timeout: Callable[[], str] | None = None,
) -> Any:
    """Poll until `predicate()` is truthy; fail with `what` (and diagnostics) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")
        time.sleep(interval)
