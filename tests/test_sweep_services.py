"""A sweep through the real daemon and the real Slurm launcher: the run goes to Slurm, its trials run in
Slurm worker jobs pulling from the sweep's queue (each trial's job recorded on its MLflow run and its
record), and a crash mid-sweep — the daemon SIGKILLed together with the run's worker, while a worker job
runs trial 2 — is recovered by a second run that reuses the finished trial, adopts the running one (no
second run of it) and queues only the rest. And workers that cannot start at all fail the trials with
Slurm's reason after a bounded number of replacements, instead of resubmitting forever.

Needs `scripts/slurm-local up` (CI runs it). One daemon, one DAGSTER_HOME, one shared drive, by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

from mlgraph.core.drive import PROJECT_ROOT, DriveLayout
from mlgraph.core.tags import COMPUTE_TAG
from tests.support import dagster_instance, wait_for
from tests.support.slurm import harness
from tests.support.slurm.harness import PIPELINE_LOCATION

pytestmark = [pytest.mark.timeout(420), pytest.mark.slurm, pytest.mark.daemon]

# Each fit sleeps: a trial (the 200-row trial fit, two folds, the final fit) lasts about 8 s, so a crash
# can land while one is running.
SLOW_MODELS = '''"""A ridge regression that takes its time, for the sweep crash test."""

import time

from sklearn.linear_model import Ridge


class SlowRidge(Ridge):
    def __init__(self, alpha=1.0, delay=0.0):
        super().__init__(alpha=alpha)
        self.delay = delay

    def fit(self, X, y, sample_weight=None):
        time.sleep(self.delay)
        return super().fit(X, y, sample_weight=sample_weight)
'''
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
TAGS = {COMPUTE_TAG: "slurm", "slurm/cpus": "1", "slurm/mem": "1G", "dagster/partition": "swept"}


def write_project(root: Path) -> tuple[Path, Path]:
    from mlgraph.data.generators import write_dataset

    config, plugins = root / "config", root / "plugins"
    shutil.copytree(PROJECT_ROOT / "config", config)
    plugins.mkdir()
    (plugins / "slow_models.py").write_text(SLOW_MODELS)
    demo = yaml.safe_load((config / "experiments" / "salary.yaml").read_text())
    write_dataset("salary", config / "experiments" / "swept.csv", rows=300, seed=3)
    data = {
        "name": "swept",
        "task": "regression",
        "dataset": {"path": "swept.csv"},
        "target": demo["target"],
        "columns": demo["columns"],
        "split": {"test_size": 0.25, "seed": 1},
        "models": [
            {
                "name": "slow-grid",
                "family": "estimator",
                "estimator": "slow_models:SlowRidge",
                "params": {"delay": 1.5},
                "sweep": {"grid": {"alpha": [0.1, 1.0, 10.0]}, "max_parallel": 1},
            }
        ],
        "cv_folds": 2,
        "seed": 1,
    }
    (config / "experiments" / "swept.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return config, plugins


def records(trials: Path) -> dict[str, dict]:
    out = {}
    for path in trials.glob("*/trial.json"):
        record = json.loads(path.read_text())
        out[record["key"]] = record
    return out


def claims(trials: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in trials.glob("*/claim.json")}


def takers(sweep_dir: Path) -> dict[str, list[str]]:
    """Trial key → the worker jobs that took it from any of the sweep's queues (one each, or it ran twice)."""
    out: dict[str, list[str]] = {}
    for path in (sweep_dir / "queue").glob("*/taken/*"):
        entry, job = path.name.split("@", 1)
        out.setdefault(entry.split("-", 1)[1], []).append(job)
    return out


def pool_workers(sweep_dir: Path) -> list[str]:
    return [p.name for p in (sweep_dir / "queue").glob("*/workers/*")]


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int:
    def find():
        for message in harness.run_messages(instance, run_id):
            if message.startswith("Started process for run (pid:"):
                return int(message.split("pid: ")[1].rstrip(")."))
        return None

    return wait_for(find, 60, f"the run worker's pid of {run_id}")


def test_sweep_on_slurm_survives_a_crash_without_running_a_trial_twice(tmp_path):
    from mlgraph.slurm.client import SlurmClient
    from resources.tracking import MlflowTracking
    from tests.support.chain import materialize

    harness.require_slurm()
    shared, home = tmp_path / "shared", tmp_path / "dagster_home"
    shared.mkdir()
    config, plugins = write_project(tmp_path)
    harness.write_slurm_instance(home, {"route": "tagged", "cpus": 1, "mem": "1G", "time": "00:10:00"})
    workspace_yaml = harness.write_workspace(tmp_path / "workspace.yaml", pipeline=True)
    trials = DriveLayout.at(shared).sweeps_dir("swept") / "slow-grid" / "trials"
    client = SlurmClient()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "SHARED_DRIVE": shared,
            "MLGRAPH_CONFIG_DIR": config,
            "MLGRAPH_PLUGINS_DIR": plugins,
            "DAGSTER_HOME": home,
        }.items():
            mp.setenv(name, str(value))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        daemon = harness.Daemon(workspace_yaml, dict(os.environ), tmp_path / "daemon.log")
        with (
            dagster_instance(home) as instance,
            WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(workspace_yaml)])) as workspace,
        ):
            instance.add_dynamic_partitions("experiment", ["swept"])
            for key in ("raw_dataset", "dataset_fingerprint", "train_test_split"):
                materialize(instance, key, "swept")

            def submit() -> str:
                context = workspace.create_request_context()
                run = harness.create_run(instance, context, PIPELINE_LOCATION, "training_job", tags=TAGS)
                instance.submit_run(run.run_id, context)
                return run.run_id

            try:
                daemon.start(instance)
                first = submit()
                # Crash once the first trial has ended and a worker job runs the second one.
                wait_for(lambda: len(records(trials)) == 1 and len(claims(trials)) == 2, 180, "trial 1 ended")
                in_flight = next(k for k in claims(trials) if k not in records(trials))
                in_flight_job = wait_for(lambda: takers(trials.parent).get(in_flight), 60, "trial 2 taken")[0]
                done_before = {k: (trials / k / "trial.json").stat().st_mtime_ns for k in records(trials)}
                pid = worker_pid(instance, first)
                daemon.kill()
                os.kill(pid, signal.SIGKILL)
                assert harness.squeue_state(in_flight_job) in {"RUNNING", "PENDING", "CONFIGURING"}

                daemon.start(instance)
                failed = wait_for(
                    lambda: (r := instance.get_run_by_id(first)).status in FINISHED and r, 120, "run 1 to fail"
                )
                assert failed.status == dg.DagsterRunStatus.FAILURE
                second = submit()
                run = wait_for(
                    lambda: (r := instance.get_run_by_id(second)).status in FINISHED and r, 240, "run 2 to finish"
                )
                assert run.status == dg.DagsterRunStatus.SUCCESS, "\n".join(harness.run_messages(instance, second))
                assert run.tags.get("slurm/job_id"), "the run itself went to Slurm"
            finally:
                daemon.stop()
                for job in pool_workers(trials.parent):
                    if harness.squeue_state(job) in {"PENDING", "RUNNING", "CONFIGURING"}:
                        subprocess.run(["scancel", job], check=False, timeout=30)

        ended = records(trials)
        by_number = sorted(ended.values(), key=lambda r: r["number"])
        assert [r["status"] for r in by_number] == ["finished"] * 3
        # Each trial was taken from a queue once: the finished one was not rerun, the in-flight one adopted.
        assert {k: len(jobs) for k, jobs in takers(trials.parent).items()} == dict.fromkeys(ended, 1)
        assert {k: (trials / k / "trial.json").stat().st_mtime_ns for k in done_before} == done_before
        # Run 1's worker ran trials 1 and 2 in one interpreter (max_parallel 1); run 2's own pool ran trial 3.
        jobs = [r["slurm_job_id"] for r in by_number]
        assert jobs[0] == jobs[1] == in_flight_job == ended[in_flight]["slurm_job_id"]
        assert jobs[2] and jobs[2] != in_flight_job
        assert all(client.job(j) is not None for j in jobs)

        tracking = MlflowTracking()
        mlflow = tracking.client()
        experiment_id = mlflow.get_experiment_by_name(tracking.experiment_name("swept")).experiment_id
        runs = mlflow.search_runs([experiment_id], filter_string="tags.`mlgraph.role` = 'trial'")
        assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
        assert sorted(r.data.tags["slurm.job_id"] for r in runs) == sorted(jobs)


@pytest.mark.timeout(180)
def test_workers_that_cannot_start_fail_the_trials_after_bounded_replacements(tmp_path, monkeypatch):
    from dagster._core.storage.dagster_run import DagsterRun

    from mlgraph.core.catalog import ConfigCatalog
    from mlgraph.core.experiment import ExperimentConfig
    from mlgraph.launcher.slurm_launcher import SlurmRunLauncher
    from mlgraph.launcher.sweep_jobs import SPARE_WORKERS, SlurmTrialRunner
    from mlgraph.slurm.client import SlurmClient
    from mlgraph.training.sweeps import Sweep

    harness.require_slurm()
    monkeypatch.setenv("SHARED_DRIVE", str(tmp_path / "shared"))
    data = json.loads(ConfigCatalog(PROJECT_ROOT / "config").load("salary").config.model_dump_json())
    data["models"] = [{"name": "ridge-grid", "family": "ridge", "sweep": {"grid": {"alpha": [0.1, 1.0]}}}]
    config = ExperimentConfig.model_validate_json(json.dumps(data))
    # A compute node without the interpreter (a broken environment): every worker job fails at once.
    launcher = SlurmRunLauncher(route="all", cpus=1, mem="1G", time="00:05:00", python_executable="/nonexistent/python")
    with dg.DagsterInstance.ephemeral() as instance:
        launcher.register_instance(instance)
        runner = SlurmTrialRunner(launcher, DagsterRun(job_name="sweep_test", run_id="f" * 36), slots=1)
        trials = tmp_path / "sweeps" / "ridge-grid" / "trials"
        try:
            outcome = Sweep(
                config, config.models[0], "rmse", "data", trials, tmp_path / "train", tmp_path / "test", runner
            ).run()
        finally:
            for job in runner.workers:
                subprocess.run(["scancel", job], check=False, timeout=30)
    assert [r["status"] for r in outcome.records] == ["failed", "failed"]
    # The pool's one slot was refilled SPARE_WORKERS times, then no more jobs: both trials name Slurm's reason.
    assert len(runner.workers) == 1 + SPARE_WORKERS
    for record in outcome.records:
        assert "ended before one took it" in record["error"] and "FAILED" in record["error"], record["error"]
    assert all(SlurmClient().job(j).state == "FAILED" for j in runner.workers)
