"""Dagster's instance on a real PostgreSQL (scripts/postgres-local): the external chain on the real daemon,
and concurrent runs writing events at once. Each test gets its own fresh database, dropped at the end
(the `pg_url` fixture, tests/support/postgres.py).

Skipped when the local server is down, except in CI (CI=true), where that is a failure.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mlgraph.cli.staging import materialize_experiments
from mlgraph.core.drive import PROJECT_ROOT
from pipeline_assets.definitions import defs
from tests.support import dagster_instance, wait_for
from tests.support.chain import (
    ANALYSIS_JOB,
    DATA_KEYS,
    EVAL_JOB,
    RUN_TIMEOUT,
    SLURM_RUN_LAUNCHER,
    run_diagnostics,
    run_trainer,
    runs_of,
    succeeded,
)
from tests.support.daemon import DagsterDaemon
from tests.support.fixtures import shrink_experiment
from tests.support.instance import DEFAULT_RUN_LAUNCHER, LOCAL_RUN_LAUNCHER, write_instance_config
from tests.support.postgres import count_rows
from tests.support.slurm.harness import require_slurm

# The instance reads the URL from the environment, as deploy/dagster.postgres.yaml does.
POSTGRES_STORAGE: dict[str, Any] = {"postgres": {"postgres_url": {"env": "MLGRAPH_POSTGRES_URL"}}}
# The Slurm jobs get the URL by name (sbatch --export), never written into the batch script.
SLURM_PG_LAUNCHER: dict[str, Any] = {
    **SLURM_RUN_LAUNCHER,
    "config": {**SLURM_RUN_LAUNCHER["config"], "env_vars": ["MLGRAPH_POSTGRES_URL"]},
}


# One run of a small job whose single op logs EVENTS materializations; it waits on stdin so that all the
# processes write at the same moment (no sleeps: the parent releases them once each has said "ready").
BURST_RUN = """
import sys
import dagster as dg

EVENTS = int(sys.argv[1])

@dg.op
def burst(context):
    for i in range(EVENTS):
        context.log_event(dg.AssetMaterialization(asset_key=f"pg_burst_{i}", metadata={"i": i}))
    return EVENTS

@dg.job
def burst_job():
    burst()

instance = dg.DagsterInstance.get()
print("ready", flush=True)
sys.stdin.readline()
result = burst_job.execute_in_process(instance=instance, raise_on_error=False)
print(result.run_id, result.success, flush=True)
"""


@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_concurrent_runs_lose_no_event(tmp_path: Path, pg_url: str):
    processes, events = 6, 25
    home = tmp_path / "dagster_home"
    write_instance_config(home, DEFAULT_RUN_LAUNCHER, storage=POSTGRES_STORAGE)
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    # Create the schema once first, as `mlgraph init` or the daemon does: six processes opening an empty
    # database at once would race creating the same tables, which is not what this test is about.
    with dagster_instance(home):
        pass
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BURST_RUN, str(events)],
            cwd=tmp_path,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    outputs = []
    try:
        for proc in procs:  # readline blocks until the process is ready, or ends (then: an error below)
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-3000:]
        for proc in procs:  # all at once
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    for code, out, err in outputs:
        assert code == 0 and out.split()[-1] == "True", err[-3000:]
        assert "database is locked" not in err
    run_ids = [out.split()[-2] for _, out, _ in outputs]

    with dagster_instance(home) as instance:
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        for run_id in run_ids:
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
            records = instance.get_records_for_run(
                run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=10 * events
            ).records
            assert sorted(r.asset_key.path[0] for r in records) == sorted(f"pg_burst_{i}" for i in range(events))
        for i in (0, events - 1):
            latest = instance.fetch_materializations(dg.AssetKey(f"pg_burst_{i}"), limit=10 * processes).records
            assert {r.run_id for r in latest} == set(run_ids)
    # The rows are in this test's database, not in a SQLite file under DAGSTER_HOME.
    assert count_rows(pg_url, "runs") == processes
    assert not list(home.rglob("*.db"))


@pytest.mark.postgres
@pytest.mark.daemon
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "run_launcher",
    [
        pytest.param(LOCAL_RUN_LAUNCHER, id="local-launcher"),
        pytest.param(SLURM_PG_LAUNCHER, id="slurm-launcher", marks=pytest.mark.slurm),
    ],
)
def test_signal_to_report_on_postgres(
    tmp_path: Path, shared_drive: Path, config_dir: Path, pg_url: str, run_launcher: dict[str, Any]
):
    on_slurm = run_launcher is SLURM_PG_LAUNCHER
    if on_slurm:
        require_slurm()
    shrink_experiment(config_dir, "salary", 1500)
    home = tmp_path / "dagster_home"
    write_instance_config(home, run_launcher, storage=POSTGRES_STORAGE)
    env = {"SHARED_DRIVE": str(shared_drive), "MLGRAPH_CONFIG_DIR": str(config_dir), "PYTHONWARNINGS": "ignore"}
    trainer_env = {**os.environ, **env}
    trainer_env.pop("MLFLOW_TRACKING_URI", None)
    daemon = DagsterDaemon(home, env, tmp_path)
    with dagster_instance(home) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        summary = materialize_experiments(
            defs, instance, ["salary"], selection=DATA_KEYS, echo=lambda _: None, raise_on_error=True
        )
        assert not summary.failed

        def diagnostics() -> str:

            return run_diagnostics(instance, daemon)

        try:
            daemon.start()
            trained = run_trainer("salary", trainer_env)
            for job in (EVAL_JOB, ANALYSIS_JOB):
                wait_for(
                    lambda j=job: succeeded(instance, j, "salary"),
                    RUN_TIMEOUT,
                    f"{job}[salary]",
                    on_timeout=diagnostics,
                )
        finally:
            daemon.stop_all()
        assert daemon.descendants() == []

        [eval_run] = runs_of(instance, EVAL_JOB, "salary")
        [analysis_run] = runs_of(instance, ANALYSIS_JOB, "salary")
        assert eval_run.tags["mlgraph/checkpoint_id"] == trained["checkpoint_id"]
        assert eval_run.tags["dagster/sensor_name"] == "training_complete_sensor"
        assert analysis_run.tags["mlgraph/eval_run_id"] == eval_run.run_id
        assert ("slurm/job_id" in eval_run.tags) is on_slurm
        html = (shared_drive / "analysis" / "salary" / "reports" / "report.html").read_text()
        assert trained["checkpoint_id"] in html
    # Runs, events and sensor ticks are rows of this test's database; no SQLite under DAGSTER_HOME.
    assert count_rows(pg_url, "runs") >= 3  # the data runs, the evaluation, the analysis
    assert count_rows(pg_url, "job_ticks") > 0
    assert not list(home.rglob("*.db"))
    if on_slurm:  # the URL's password reached the job by name only
        password = os.environ.get("MLGRAPH_POSTGRES_PASSWORD", "mlgraph-local-dev")
        for script in (shared_drive / "logs").rglob("*"):
            if script.is_file():
                assert password not in script.read_text(errors="replace"), script


def test_init_links_the_postgres_instance_file_when_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No server needed: `mlgraph init` picks the instance file; the URL stays in the environment."""
    import yaml

    from mlgraph.cli.commands.project import init_home

    secret = "postgresql+psycopg2://mlgraph:planted-secret@127.0.0.1:5433/mlgraph"
    for url, expected in ((None, "dagster.yaml"), (secret, "deploy/dagster.postgres.yaml"), (None, "dagster.yaml")):
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
        if url:
            monkeypatch.setenv("MLGRAPH_POSTGRES_URL", url)
        else:
            monkeypatch.delenv("MLGRAPH_POSTGRES_URL", raising=False)
        link = init_home() / "dagster.yaml"
        assert link.resolve() == (PROJECT_ROOT / expected).resolve()
    assert not any("planted-secret" in p.read_text() for p in (tmp_path / "home").rglob("*") if p.is_file())
    # The Postgres file is dagster.yaml plus its storage and the URL passed to Slurm jobs by name.
    sqlite = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    postgres = yaml.safe_load((PROJECT_ROOT / "deploy" / "dagster.postgres.yaml").read_text())
    assert postgres.pop("storage") == POSTGRES_STORAGE
    assert postgres["run_launcher"]["config"].pop("env_vars") == ["MLGRAPH_POSTGRES_URL"]
    assert postgres == sqlite


# A code location of one job whose single op logs {events} materializations. Each run first waits at a
# barrier on the drive (a file per run, polled with a deadline) until `parties` runs are in their op, so
# that they write at the same moment rather than one after another.
BURST_DEFS = """
import time
from pathlib import Path

import dagster as dg


class Barrier(dg.Config):
    directory: str
    parties: int


@dg.op
def burst(context, config: Barrier):
    barrier = Path(config.directory)
    (barrier / context.run_id).touch()
    deadline = time.monotonic() + 120
    while len(list(barrier.iterdir())) < config.parties:
        if time.monotonic() > deadline:
            raise RuntimeError(f"barrier: fewer than {{config.parties}} runs arrived within 120 s")
        time.sleep(0.1)
    for i in range({events}):
        context.log_event(dg.AssetMaterialization(asset_key=f"slurm_burst_{{i}}", metadata={{"i": i}}))


@dg.job(executor_def=dg.in_process_executor)
def burst_job():
    burst()


defs = dg.Definitions(jobs=[burst_job])
"""


@pytest.mark.postgres
@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_concurrent_slurm_runs_lose_no_event(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch):
    """Several runs launched through the real Slurm launcher at once, all writing events to one Postgres."""
    import yaml
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    from tests.support.slurm import harness

    require_slurm()
    # The local cluster has 2 CPUs and jobs take one each: two run at once, the third after them.
    runs, events, parties = 3, 20, 2
    home, drive = tmp_path / "dagster_home", tmp_path / "shared"
    drive.mkdir()
    launcher = {**SLURM_PG_LAUNCHER, "config": {**SLURM_PG_LAUNCHER["config"], "route": "all", "mem": "1G"}}
    write_instance_config(home, launcher, storage=POSTGRES_STORAGE)
    defs_file = tmp_path / "burst_defs.py"
    defs_file.write_text(BURST_DEFS.format(events=events))
    workspace_yaml = tmp_path / "workspace.yaml"
    workspace_yaml.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_file": {
                            "relative_path": str(defs_file),
                            "location_name": "burst",
                            "working_directory": str(PROJECT_ROOT),
                        }
                    }
                ]
            }
        )
    )
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("SHARED_DRIVE", str(drive))  # the batch scripts and job logs go under it
    with (
        dagster_instance(home) as instance,
        WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(workspace_yaml)])) as workspace,
    ):
        context = workspace.create_request_context()
        barrier = tmp_path / "barrier"
        barrier.mkdir()
        run_config = {"ops": {"burst": {"config": {"directory": str(barrier), "parties": parties}}}}
        created = [
            harness.create_run(instance, context, "burst", "burst_job", run_config=run_config) for _ in range(runs)
        ]
        for run in created:  # straight to the launcher, one after another: the jobs overlap on the cluster
            instance.launch_run(run.run_id, context)
        run_ids = [run.run_id for run in created]
        try:
            finished = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
            wait_for(
                lambda: all(instance.get_run_by_id(r).status in finished for r in run_ids),
                240,
                f"{runs} Slurm runs to finish",
                on_timeout=lambda: ", ".join(instance.get_run_by_id(r).status.value for r in run_ids),
            )
        finally:
            for run_id in run_ids:
                job_id = instance.get_run_by_id(run_id).tags.get("slurm/job_id")
                if job_id and harness.squeue_state(job_id) in {"PENDING", "RUNNING", "CONFIGURING"}:
                    subprocess.run(["scancel", job_id], check=False, timeout=30)
        for run_id in run_ids:
            run = instance.get_run_by_id(run_id)
            assert run.status == dg.DagsterRunStatus.SUCCESS, "\n".join(harness.run_messages(instance, run_id))[-3000:]
            assert run.tags.get("slurm/job_id")
            records = instance.get_records_for_run(
                run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=10 * events
            ).records
            assert sorted(r.asset_key.path[0] for r in records) == sorted(f"slurm_burst_{i}" for i in range(events))
        # They did write at the same time: at least two runs were executing at once (the barrier saw to it).
        spans = [(r.start_time, r.end_time) for r in instance.get_run_records(dg.RunsFilter(run_ids=run_ids))]
        assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :]), spans
        latest = instance.fetch_materializations(dg.AssetKey(f"slurm_burst_{events - 1}"), limit=10 * runs).records
        assert {r.run_id for r in latest} == set(run_ids)
    logs = [p for p in (drive / "logs").rglob("*") if p.is_file()]
    assert logs and not [p for p in logs if "database is locked" in p.read_text(errors="replace")]
    assert count_rows(pg_url, "runs") == runs
