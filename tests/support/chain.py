"""The external-checkpoint chain as the integration tests drive it: a trainer process, data materialized
in-process, and the evaluation and analysis runs the signal sensors start (default launcher or Slurm)."""

import json
import subprocess
import sys
from typing import Any

import dagster as dg

from mlgraph.core.drive import PROJECT_ROOT
from pipeline_assets.definitions import defs

# Tagged runs (evaluation, analysis) become Slurm jobs on the local cluster; small requests so both fit.
SLURM_RUN_LAUNCHER: dict[str, Any] = {
    "module": "mlgraph.launcher.slurm_launcher",
    "class": "SlurmRunLauncher",
    "config": {"route": "tagged", "cpus": 1, "mem": "2G", "time": "00:15:00"},
}

DATA_KEYS = [dg.AssetKey(k) for k in ("raw_dataset", "dataset_fingerprint", "train_test_split")]
EVAL_JOB, ANALYSIS_JOB = "checkpoint_evaluation_job", "checkpoint_comparison_report_job"
# Each wait covers a sensor tick (≤5 s), the settle time (2 s), a run process start and its work on 2 cores.
RUN_TIMEOUT = 120


def run_trainer(experiment: str, env: dict[str, str], epochs: int = 4) -> dict[str, Any]:
    """examples/train_external.py in its own process, as a trainer on another machine runs it."""
    out = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "examples" / "train_external.py"),
            "--experiment",
            experiment,
            "--epochs",
            str(epochs),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def materialize(instance: dg.DagsterInstance, key: str, partition: str, raise_on_error: bool = True):
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, partition_key=partition, asset_selection=[dg.AssetKey(key)], raise_on_error=raise_on_error
    )


def load_trainer():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_external", PROJECT_ROOT / "examples" / "train_external.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runs_of(instance: dg.DagsterInstance, job: str, partition: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(job_name=job, tags={"dagster/partition": partition})))


def succeeded(instance: dg.DagsterInstance, job: str, partition: str) -> dg.DagsterRun | None:
    runs = runs_of(instance, job, partition)
    failed = [r for r in runs if r.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)]
    if failed:
        events = instance.all_logs(failed[0].run_id)
        errors = [e.message for e in events if e.is_dagster_event and e.dagster_event.is_failure]
        raise AssertionError(f"{job}[{partition}] run {failed[0].run_id} {failed[0].status}: {errors}")
    return next((r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS), None)


def run_diagnostics(instance: dg.DagsterInstance, daemon: Any) -> str:
    """The recent runs with their partitions and states, then the daemon's log: what a timed-out wait prints."""
    runs = instance.get_runs(limit=20)
    listed = ", ".join(f"{r.job_name}[{r.tags.get('dagster/partition')}]={r.status.value}" for r in runs)
    return f"runs: {listed}\n{daemon.logs()}"
