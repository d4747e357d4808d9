"""A real `dagster-daemon run` on a temporary DAGSTER_HOME, for integration tests and benchmarks/sensors.py.

The instance config comes from `tests.support.instance.write_instance_config`; its `run_launcher` block is a
parameter, so the same scenario can run with Dagster's DefaultRunLauncher or with the Slurm run launcher.
Every process the daemon starts (code server, run workers) inherits the unique DAGSTER_HOME, which is how
`stop_all` finds them again after the daemon itself has been killed: by PID, never by name.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from mlgraph.core.drive import PROJECT_ROOT


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
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.log_dir.glob("daemon-*.log")))
