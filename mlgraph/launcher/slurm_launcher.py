"""SlurmRunLauncher: sends tagged (or all) Dagster runs to Slurm as batch jobs, the rest run locally.

Why this module is long: it is one RunLauncher class whose methods Dagster calls (config schema,
launch, terminate, worker health, debug info), the shape of Dagster's own DockerRunLauncher; its
plain parts (batch script, job end, job records) already live in their own modules.

Shaped like Dagster's DockerRunLauncher: `launch_run` writes a batch script that runs
`dagster api execute_run` for the run, submits it with `sbatch`, tags the run with the job id
and reports an engine event; `terminate` calls `scancel`; `check_run_worker_health` maps the
job's Slurm state to a `WorkerStatus` for the run-monitoring daemon, resolving jobs that left
`squeue` from the completion records. Runs not routed to Slurm start locally, forked from a preloaded
fork server (`mlgraph.launcher.warm_local`: seconds sooner than Dagster's DefaultRunLauncher, which it
falls back to for another interpreter's code location).

The batch script itself is rendered by `mlgraph.launcher.batch_script`; its footer,
`python -m mlgraph.launcher.job_end finish ...`, attaches Slurm's figures for the job (elapsed, CPUs,
requested memory, peak RSS, final state) to the run.
"""

import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
from dagster._core.events import EngineEventData
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from mlgraph.core.atomic import atomic_write_text
from mlgraph.core.drive import PROJECT_ROOT, DriveLayout, default_shared_drive
from mlgraph.core.tags import (
    COMPUTE_SLURM,
    COMPUTE_TAG,
    SLURM_JOB_ID_TAG,
    SLURM_LOG_TAG,
    SLURM_SCRIPT_TAG,
    SLURM_STATE_TAG,
)
from mlgraph.launcher.batch_script import SlurmConfigError, SlurmResources, render_batch_script, validate_resources
from mlgraph.launcher.warm_local import WarmLocalRunLauncher
from mlgraph.slurm.client import SlurmClient, SlurmError
from mlgraph.slurm.figures import figures_message, job_figures, stderr_hints
from mlgraph.slurm.jobs import ACTIVE_STATES, PENDING_STATES, SlurmJob

ROUTES = ("auto", "tagged", "all", "none")
# Environment a run worker needs; values are paths, written into the script so it can be rerun by hand.
# MLGRAPH_PLUGINS_DIR: where the user's model code lives, when not plugins/ beside the config directory.
BASE_ENV = (
    "SHARED_DRIVE",
    "DAGSTER_HOME",
    "MLGRAPH_CONFIG_DIR",
    "MLGRAPH_PLUGINS_DIR",
    "MLFLOW_TRACKING_URI",
    "PYTHONPATH",
    "SLURM_CONF",
)
# Passed by name with `sbatch --export` (values never written to disk). MLflow's client reads its server
# credentials from the environment, so a job on the cluster needs them exactly as the daemon has them.
SESSION_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SlurmRunLauncher(RunLauncher, ConfigurableClass):
    """Launches runs as Slurm batch jobs when routed there; otherwise like Dagster's DefaultRunLauncher.

    ```yaml
    # dagster.yaml
    run_launcher:
      module: mlgraph.launcher.slurm_launcher
      class: SlurmRunLauncher
      config:
        route: auto          # auto | tagged | all | none
        partition: debug     # optional; the cluster default otherwise
        cpus: 2
        mem: 4G
        time: "01:00:00"
        # gres: gpu:1
        # log_dir: /mnt/shared/logs         default $SHARED_DRIVE/logs
        # python_executable: /opt/venv/bin/python
        # working_directory: /srv/mlgraph
        # env_vars: [AWS_ACCESS_KEY_ID]     names passed through, values never written
        # slurm_conf: /etc/slurm-prod/slurm.conf
    ```

    Routing: `tagged` sends runs tagged `mlgraph/compute: slurm` to Slurm; `all` sends every run;
    `none` none; `auto` behaves like `tagged` when `sbatch` is on PATH and otherwise runs tagged
    runs locally, saying so in the run's log. Per-run tags `slurm/partition`, `slurm/cpus`,
    `slurm/mem`, `slurm/time`, `slurm/gres` and `slurm/kind` override the defaults.
    """

    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        route: str = "auto",
        partition: str | None = None,
        cpus: int = 1,
        mem: str = "2G",
        time: str = "01:00:00",
        gres: str | None = None,
        log_dir: str | None = None,
        python_executable: str | None = None,
        working_directory: str | None = None,
        env_vars: Sequence[str] | None = None,
        extra_sbatch_args: Sequence[str] | None = None,
        slurm_conf: str | None = None,
        jobcomp_file: str | None = None,
        controller_grace_seconds: int = 600,
        client: SlurmClient | None = None,
        local_launcher: RunLauncher | None = None,
    ):
        self._inst_data = inst_data
        if route not in ROUTES:
            raise SlurmConfigError(f"dagster.yaml run_launcher.config: route={route!r}; use one of {', '.join(ROUTES)}")
        self.route = route
        self.defaults = validate_resources(
            {"cpus": cpus, "mem": mem, "time": time, "partition": partition, "gres": gres, "kind": "training"},
            "dagster.yaml run_launcher.config.",
        )
        self.log_dir = log_dir
        self.python_executable = python_executable
        self.working_directory = working_directory
        self.env_vars = list(env_vars or [])
        for name in self.env_vars:
            if not _ENV_NAME.match(name):
                raise SlurmConfigError(
                    f"dagster.yaml run_launcher.config.env_vars: {name!r} is not an environment variable name; "
                    "list names only, never NAME=value"
                )
        self.extra_sbatch_args = list(extra_sbatch_args or [])
        for arg in self.extra_sbatch_args:
            if not arg.startswith("--"):
                raise SlurmConfigError(
                    f"dagster.yaml run_launcher.config.extra_sbatch_args: {arg!r}; "
                    "write long options, e.g. --account=ml"
                )
        self.slurm_conf = slurm_conf
        self.controller_grace_seconds = controller_grace_seconds
        self._client = client or SlurmClient(slurm_conf=slurm_conf, jobcomp_file=jobcomp_file)
        self._local = local_launcher or WarmLocalRunLauncher()
        # run id -> when the controller first failed to answer for it (bounded tolerance, in memory).
        self._unreachable_since: dict[str, float] = {}
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, dg.Field]:
        return {
            "route": dg.Field(
                dg.Enum("SlurmRoute", [dg.EnumValue(r) for r in ROUTES]),
                default_value="auto",
                description="auto | tagged | all | none: which runs go to Slurm (see the class docstring).",
            ),
            "partition": dg.Field(dg.StringSource, is_required=False, description="Default partition."),
            "cpus": dg.Field(dg.IntSource, default_value=1, description="Default --cpus-per-task."),
            "mem": dg.Field(dg.StringSource, default_value="2G", description="Default --mem, e.g. 4G."),
            "time": dg.Field(dg.StringSource, default_value="01:00:00", description="Default --time."),
            "gres": dg.Field(dg.StringSource, is_required=False, description="Default --gres, e.g. gpu:1."),
            "log_dir": dg.Field(
                dg.StringSource, is_required=False, description="Job logs root; default $SHARED_DRIVE/logs."
            ),
            "python_executable": dg.Field(
                dg.StringSource,
                is_required=False,
                description="Python on the compute nodes; default the code location's interpreter.",
            ),
            "working_directory": dg.Field(
                dg.StringSource, is_required=False, description="Directory the job runs in; default the project root."
            ),
            "env_vars": dg.Field(
                [str], is_required=False, description="Extra environment variable NAMES passed to jobs by sbatch."
            ),
            "extra_sbatch_args": dg.Field(
                [str], is_required=False, description="More sbatch options, e.g. ['--account=ml', '--qos=high']."
            ),
            "slurm_conf": dg.Field(
                dg.StringSource, is_required=False, description="SLURM_CONF for the client commands."
            ),
            "jobcomp_file": dg.Field(
                dg.StringSource,
                is_required=False,
                description="Completion-record file; default JobCompLoc from `scontrol show config`.",
            ),
            "controller_grace_seconds": dg.Field(
                dg.IntSource,
                default_value=600,
                description="How long an unreachable controller is tolerated before a run is failed.",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, **config_value)

    def register_instance(self, instance: dg.DagsterInstance) -> None:
        super().register_instance(instance)
        self._local.register_instance(instance)

    @property
    def client(self) -> SlurmClient:
        return self._client

    def routes_to_slurm(self, run: DagsterRun) -> tuple[bool, str | None]:
        """(send to Slurm?, note for the run's log when a tagged run stays local)."""
        tagged = run.tags.get(COMPUTE_TAG) == COMPUTE_SLURM
        if self.route == "all":
            return True, None
        if self.route == "none":
            return False, None
        if self.route == "tagged":
            return tagged, None
        if tagged and not self._client.available():
            return False, (
                f"Run tagged {COMPUTE_TAG}=slurm but Slurm was not found (no sbatch on PATH); "
                "running it locally. Set run_launcher.config.route to 'tagged' to fail instead."
            )
        return tagged, None

    def resources_for(self, run: DagsterRun) -> SlurmResources:
        """The defaults overridden by the run's `slurm/*` tags (validated: a bad tag is named)."""
        d = self.defaults
        tags = run.tags
        values = {
            "cpus": d.cpus,
            "mem": d.mem,
            "time": d.time,
            "partition": d.partition,
            "gres": d.gres,
            "kind": d.kind,
        }
        overrides = {name: tags[f"slurm/{name}"] for name in values if f"slurm/{name}" in tags}
        # The defaults were validated at construction, so any error names a tag.
        return validate_resources({**values, **overrides}, "run tag slurm/")

    def resolved_log_dir(self) -> Path:
        return Path(self.log_dir) if self.log_dir else DriveLayout.at().logs_root()

    def _exports(self) -> tuple[dict[str, str], list[str]]:
        """(values written into the script, names passed by sbatch --export from this process)."""
        exports: dict[str, str] = {}
        by_name = [name for name in SESSION_ENV if name in os.environ]
        environ = dict(os.environ)
        environ["SHARED_DRIVE"] = str(default_shared_drive())
        environ["DAGSTER_HOME"] = self._instance.root_directory
        if self.slurm_conf:
            environ["SLURM_CONF"] = self.slurm_conf
        for name in BASE_ENV:
            value = environ.get(name)
            if not value:
                continue
            if name == "MLFLOW_TRACKING_URI" and "@" in urlsplit(value).netloc:
                by_name.append(name)  # user:password@host must not land in a file
            else:
                exports[name] = value
        by_name += [name for name in self.env_vars if name in os.environ and name not in by_name]
        return exports, by_name

    def _command(self, run: DagsterRun) -> tuple[list[str], str]:
        job_origin = run.job_code_origin
        if job_origin is None:
            raise SlurmConfigError(f"run {run.run_id} has no code origin; it cannot be executed outside this process")
        args = list(
            ExecuteRunArgs(
                job_origin=job_origin,
                run_id=run.run_id,
                instance_ref=self._instance.get_ref(),
                # A failed run fails its Slurm job too, so Slurm's own records agree with Dagster.
                set_exit_code_on_failure=True,
            ).get_command_args()
        )
        # The entry point may be a bare `dagster`, found on the launcher's PATH but not necessarily
        # on a compute node's: name the interpreter explicitly.
        python = self.python_executable or job_origin.executable_path or sys.executable
        api = args.index("api")
        return [python, "-m", "dagster", *args[api:]], python

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        to_slurm, note = self.routes_to_slurm(run)
        if not to_slurm:
            if note:
                self._instance.report_engine_event(note, run, cls=self.__class__)
            self._local.launch_run(context)
            return
        try:
            resources = self.resources_for(run)
            if self._instance.is_ephemeral:
                raise SlurmConfigError(
                    "SlurmRunLauncher needs a persistent instance (set DAGSTER_HOME): "
                    "the job runs in another process that must reach the same run storage"
                )
            command, python = self._command(run)
        except SlurmConfigError as error:
            self._instance.report_run_failed(run, f"Not submitted to Slurm: {error}")
            return

        log_dir = self.resolved_log_dir()
        if re.search(r"\s", str(log_dir)):
            self._instance.report_run_failed(
                run,
                f"Not submitted to Slurm: log_dir {str(log_dir)!r} contains whitespace, "
                "which sbatch directives cannot hold; choose another run_launcher.config.log_dir",
            )
            return
        kind_dir = log_dir / resources.kind
        kind_dir.mkdir(parents=True, exist_ok=True)
        job_name = f"mlgraph-{run.run_id[:8]}"
        exports, by_name = self._exports()
        script = render_batch_script(
            run_id=run.run_id,
            job_name=job_name,
            resources=resources,
            log_dir=log_dir,
            working_directory=Path(self.working_directory) if self.working_directory else PROJECT_ROOT,
            exports=exports,
            passed_by_name=by_name,
            command=command,
            python_executable=python,
        )
        script_path = kind_dir / f"{run.run_id}.sbatch"
        atomic_write_text(script_path, script)

        try:
            job_id = self._client.submit(
                script_path, job_name=job_name, export=by_name, extra_args=self.extra_sbatch_args
            )
        except SlurmError as error:
            self._instance.report_run_failed(
                run, f"sbatch did not submit the job for this run: {error.stderr or error} (script {script_path})"
            )
            return

        log_path = kind_dir / f"{job_id}.log"
        try:
            self._instance.add_run_tags(
                run.run_id, {SLURM_JOB_ID_TAG: job_id, SLURM_LOG_TAG: str(log_path), SLURM_SCRIPT_TAG: str(script_path)}
            )
        except Exception:
            # A job Dagster cannot find again would run unmonitored: take it back.
            self._client.cancel(job_id)
            raise
        self._instance.report_engine_event(
            f"Submitted Slurm job {job_id} ({resources.cpus} CPUs, {resources.mem}, time {resources.time}"
            + (f", partition {resources.partition}" if resources.partition else "")
            + (f", gres {resources.gres}" if resources.gres else "")
            + f"); script {script_path}; log {log_path}",
            run,
            EngineEventData(
                metadata={
                    "slurm_job_id": job_id,
                    "script": dg.MetadataValue.path(str(script_path)),
                    "log": dg.MetadataValue.path(str(log_path)),
                    "cpus": resources.cpus,
                    "mem": resources.mem,
                    "time": resources.time,
                    "partition": resources.partition or "(cluster default)",
                }
            ),
            cls=self.__class__,
        )

    def submit_command(
        self, run: DagsterRun, job_name: str, command: Sequence[str], resources: SlurmResources, script_path: Path
    ) -> str:
        """Submit a job that runs `command` for `run` (a sweep's trial) with the run's environment; its id.

        Same exports, working directory and log directory as the run's own job; no end-of-job footer.
        """
        exports, by_name = self._exports()
        script = render_batch_script(
            run_id=run.run_id,
            job_name=job_name,
            resources=resources,
            log_dir=self.resolved_log_dir(),
            working_directory=Path(self.working_directory) if self.working_directory else PROJECT_ROOT,
            exports=exports,
            passed_by_name=by_name,
            command=command,
            python_executable=command[0],
            record_end=False,
        )
        atomic_write_text(script_path, script)
        (self.resolved_log_dir() / resources.kind).mkdir(parents=True, exist_ok=True)
        return self._client.submit(script_path, job_name=job_name, export=by_name, extra_args=self.extra_sbatch_args)

    def python_for(self, run: DagsterRun) -> str:
        """The interpreter a job for `run` uses (as for the run's own job)."""
        origin = run.job_code_origin
        return self.python_executable or (origin.executable_path if origin else None) or sys.executable

    def _job_or_none(self, job_id: str) -> SlurmJob | None:
        try:
            return self._client.job(job_id)
        except SlurmError:
            return None

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        job_id = run.tags.get(SLURM_JOB_ID_TAG)
        if not job_id:
            return self._local.terminate(run_id)
        self._instance.report_run_canceling(run)
        before = self._job_or_none(job_id)
        self._client.cancel(job_id)
        self._instance.report_engine_event(
            f"Cancelled Slurm job {job_id} (scancel); it was {before.state if before else 'not found'}.",
            run,
            cls=self.__class__,
        )
        if before is None or before.state in PENDING_STATES or before.is_terminal:
            # No run worker is (or will be) alive to record the cancellation.
            self._instance.report_run_canceled(run, f"Slurm job {job_id} cancelled before its run worker started.")
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        job_id = run.tags.get(SLURM_JOB_ID_TAG)
        if not job_id:
            return self._local.check_run_worker_health(run)
        try:
            job = self._client.job(job_id)
        except SlurmError as error:
            if not error.transient:
                return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"Slurm job {job_id}: {error}")
            first = self._unreachable_since.setdefault(run.run_id, time.monotonic())
            waited = time.monotonic() - first
            if waited < self.controller_grace_seconds:
                return CheckRunHealthResult(
                    WorkerStatus.RUNNING,
                    f"Slurm controller unreachable for {waited:.0f}s (tolerated up to "
                    f"{self.controller_grace_seconds}s); assuming job {job_id} still runs: {error}",
                    transient=True,
                )
            return CheckRunHealthResult(
                WorkerStatus.UNKNOWN,
                f"Slurm controller unreachable for {waited:.0f}s; giving up on job {job_id}: {error}",
            )
        self._unreachable_since.pop(run.run_id, None)
        if job is None:
            return CheckRunHealthResult(
                WorkerStatus.NOT_FOUND,
                f"Slurm job {job_id} is unknown to the controller, the completion records and sacct",
            )
        if job.state in PENDING_STATES or job.state in ACTIVE_STATES:
            return CheckRunHealthResult(WorkerStatus.RUNNING, job.describe(), run_worker_id=job_id)
        if job.state == "COMPLETED":
            latest = self._instance.get_run_by_id(run.run_id)
            self._record_figures(run, job)
            if latest is not None and latest.is_finished:
                return CheckRunHealthResult(WorkerStatus.SUCCESS, job.describe(), run_worker_id=job_id)
            # Exit 0 without a run-end event: the worker vanished (e.g. killed) without a word.
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                f"{job.describe()}, but its run worker ended without reporting the run's end",
                run_worker_id=job_id,
            )
        if job.is_failed:
            self._record_figures(run, job)
            hints = stderr_hints(job.stderr or self._stderr_path(run))
            message = job.describe() + ("; job stderr: " + " | ".join(hints) if hints else "")
            return CheckRunHealthResult(WorkerStatus.FAILED, message, run_worker_id=job_id)
        return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"{job.describe()} (state not understood)")

    def get_run_worker_debug_info(self, run: DagsterRun, include_container_logs: bool | None = True) -> str | None:
        job_id = run.tags.get(SLURM_JOB_ID_TAG)
        if not job_id:
            return None
        job = self._job_or_none(job_id)
        if job is None:
            return f"Slurm job {job_id}: not found"
        hints = stderr_hints(job.stderr or self._stderr_path(run))
        return (
            job.describe()
            + (f"; log {run.tags.get(SLURM_LOG_TAG)}" if run.tags.get(SLURM_LOG_TAG) else "")
            + ("; job stderr: " + " | ".join(hints) if hints else "")
        )

    @staticmethod
    def _stderr_path(run: DagsterRun) -> str | None:
        log = run.tags.get(SLURM_LOG_TAG)
        return str(Path(log).with_suffix(".err")) if log else None

    def _record_figures(self, run: DagsterRun, job: SlurmJob) -> None:
        if run.tags.get(SLURM_STATE_TAG):
            return  # the batch script's footer already recorded them
        figures = job_figures(job)
        self._instance.add_run_tags(run.run_id, figures)
        self._instance.report_engine_event(
            figures_message(job.job_id, figures), run, EngineEventData(metadata=dict(figures)), cls=self.__class__
        )

    def join(self, timeout: int = 30) -> None:
        self._local.join(timeout)

    def dispose(self) -> None:
        self._local.dispose()
