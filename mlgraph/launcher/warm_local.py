"""Local runs started warm: each run worker is forked from a fork server that has Dagster already imported.

Dagster's DefaultRunLauncher asks the code server to start a run, and the code server starts it with
multiprocessing's "spawn" (fixed in Dagster): a fresh interpreter that imports Dagster, pandas and the
code location before the run's first event. Measured here, that is most of the 3 s between a queued
run's dequeue and its start — the largest part of a signal's way to its run. This launcher keeps a
fork server (started on the first launch, in the process that launches: the daemon) with the libraries
preloaded; a run worker is a fork of it that runs exactly what `dagster api execute_run` runs, so the
run executes as with Dagster's own launchers (same events, same instance, same cancellation by SIGINT).
The code location is imported in the worker, never preloaded: a run always uses the code as it is on
disk at its start, as a fresh process would.

Each run is tagged with its worker's pid, host and start time, so `terminate` (from the daemon or the
webserver on this host) interrupts that process and `check_run_worker_health` tells run monitoring when
a worker died without reporting the run's end — which Dagster's default launcher cannot.

Runs whose code location has another interpreter than this process, and launches from an ephemeral
instance, go to Dagster's DefaultRunLauncher unchanged.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from mlgraph.core.processes import process_alive, start_time
from mlgraph.core.tags import RUN_WORKER_HOST_TAG, RUN_WORKER_PID_TAG, RUN_WORKER_STARTED_TAG

# Imported once by the fork server, never by a run worker: Dagster (most of the start-up time) and the
# third-party libraries the code location imports. Project code is not here (see the module docstring).
PRELOAD = ("dagster", "dagster._cli.api", "numpy", "pandas", "pyarrow", "pyarrow.parquet", "duckdb", "yaml")
_CONTEXT: Any = None


def _context() -> Any:
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(PRELOAD))
        _CONTEXT = context
    return _CONTEXT


def execute_run(input_json: str) -> None:
    """In the forked worker: `dagster api execute_run INPUT_JSON`, the command every Dagster launcher runs."""
    from dagster._cli.api import execute_run_command

    execute_run_command.main(args=[input_json], prog_name="dagster api execute_run", standalone_mode=False)


def same_interpreter(run: DagsterRun) -> bool:
    origin = run.job_code_origin
    if origin is None or not origin.executable_path:
        return False
    return os.path.realpath(origin.executable_path) == os.path.realpath(sys.executable)


def _worker(run: DagsterRun) -> tuple[int, float] | None:
    """(pid, start time) of this host's worker of `run`, when it was started warm here."""
    tags = run.tags
    if RUN_WORKER_PID_TAG not in tags or tags.get(RUN_WORKER_HOST_TAG) != socket.gethostname():
        return None
    try:
        return int(tags[RUN_WORKER_PID_TAG]), float(tags.get(RUN_WORKER_STARTED_TAG, "0"))
    except ValueError:
        return None


class WarmLocalRunLauncher(RunLauncher, ConfigurableClass):
    """Runs local runs as forks of a preloaded fork server; see the module docstring. The Slurm launcher uses
    it for the runs it keeps local; on its own in dagster.yaml: `module: mlgraph.launcher.warm_local`."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, fallback: RunLauncher | None = None):
        self._inst_data = inst_data
        self._fallback = fallback or dg.DefaultRunLauncher()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Any) -> WarmLocalRunLauncher:
        return cls(inst_data=inst_data)

    def register_instance(self, instance: dg.DagsterInstance) -> None:
        super().register_instance(instance)
        self._fallback.register_instance(instance)

    def launch_run(self, context: LaunchRunContext) -> None:
        import multiprocessing.process

        from dagster._grpc.types import ExecuteRunArgs
        from dagster._serdes import serialize_value

        run = context.dagster_run
        if self._instance.is_ephemeral or not same_interpreter(run):
            self._fallback.launch_run(context)
            return
        args = ExecuteRunArgs(job_origin=run.job_code_origin, run_id=run.run_id, instance_ref=self._instance.get_ref())
        process = _context().Process(target=execute_run, args=(serialize_value(args),), name=f"run-{run.run_id[:8]}")
        process.start()
        # Not a child this process waits for: a run outlives its daemon's restart, as with Dagster's own
        # launchers. multiprocessing would join it at exit (a daemon's shutdown blocked by every running
        # run) and hold its two pipe ends until then; once dropped, its finalizer closes them.
        multiprocessing.process._children.discard(process)
        pid = process.pid
        del process
        started = start_time(pid) or 0.0  # 0: a run so quick its worker is gone already, nothing left to watch
        self._instance.add_run_tags(
            run.run_id,
            {
                RUN_WORKER_PID_TAG: str(pid),
                RUN_WORKER_HOST_TAG: socket.gethostname(),
                RUN_WORKER_STARTED_TAG: f"{started:.3f}",
            },
        )

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        worker = _worker(run)
        if worker is None:
            return self._fallback.terminate(run_id)
        self._instance.report_run_canceling(run)
        if not process_alive(*worker):
            self._instance.report_run_canceled(run, f"Run worker process {worker[0]} was gone before the cancel.")
            return True
        # SIGINT: Dagster's own interruption (the run worker stops its steps and reports the run CANCELED).
        os.kill(worker[0], signal.SIGINT)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = _worker(run)
        if worker is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "run worker not started by this host's warm launcher")
        if process_alive(*worker):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker process {worker[0]} is running")
        latest = self._instance.get_run_by_id(run.run_id)
        if latest is not None and latest.is_finished:
            return CheckRunHealthResult(WorkerStatus.SUCCESS, f"run worker process {worker[0]} exited")
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"run worker process {worker[0]} exited without reporting the run's end"
        )

    def join(self, timeout: int = 30) -> None:
        self._fallback.join(timeout)

    def dispose(self) -> None:
        self._fallback.dispose()
