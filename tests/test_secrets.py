"""No secret leaves the environment: a full chain with planted secrets, then grep everything it wrote.

The MLflow tracking server (basic auth) runs with a planted admin password; the environment also holds a
planted MLGRAPH_POSTGRES_PASSWORD and a made-up webhook token. A trainer logs to MLflow over HTTP and
signals; the daemon's sensors run the evaluation on Slurm (credentials passed to the job by name) and then
the analysis. Afterwards none of the planted values may appear in any file under the drive or
DAGSTER_HOME (signal files, batch scripts, job logs, SQLite stores), any run's tags, any event, any
MLflow param or tag, the daemon's or the server's output, or `mlgraph` output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from dagster._serdes import serialize_value

from mlgraph.cli.staging import materialize_experiments
from mlgraph.core import tracking
from mlgraph.core.drive import PROJECT_ROOT
from pipeline_assets.definitions import defs
from tests.support import dagster_instance, wait_for
from tests.support.chain import (
    ANALYSIS_JOB,
    DATA_KEYS,
    EVAL_JOB,
    RUN_TIMEOUT,
    SLURM_RUN_LAUNCHER,
    run_trainer,
    runs_of,
    succeeded,
)
from tests.support.daemon import DagsterDaemon
from tests.support.fixtures import shrink_experiment
from tests.support.instance import write_instance_config
from tests.support.slurm.harness import require_slurm
from tests.test_mlflow_server import ServerProcess

SECRET_NAMES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLGRAPH_WEBHOOK_TOKEN")


def planted() -> dict[str, str]:
    tag = uuid.uuid4().hex
    return {
        "MLFLOW_TRACKING_PASSWORD": f"mlflow-pw-{tag}",
        "MLGRAPH_POSTGRES_PASSWORD": f"pg-pw-{tag}",
        "MLGRAPH_WEBHOOK_TOKEN": f"hook-token-{tag}",
    }


def leaks(text: str | bytes, secrets: dict[str, str]) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [name for name, value in secrets.items() if value.encode() in data]


@pytest.mark.slurm
@pytest.mark.daemon
@pytest.mark.timeout(300)
def test_planted_secrets_appear_nowhere_after_a_chain_on_slurm(tmp_path: Path, shared_drive: Path, config_dir: Path):
    require_slurm()
    secrets = planted()
    shrink_experiment(config_dir, "salary", 600)
    server = ServerProcess(
        shared_drive,
        tmp_path / "mlflow-server.log",
        {
            "MLFLOW_TRACKING_USERNAME": "mlgraph",
            **secrets,
            "MLGRAPH_MLFLOW_BACKEND_URI": "",
            "MLGRAPH_POSTGRES_URL": "",
        },
    )
    home = tmp_path / "dagster_home"
    # The job gets the credentials by name (sbatch --export), as deploy/*.yaml's env_vars would list them.
    launcher: dict[str, Any] = {
        **SLURM_RUN_LAUNCHER,
        "config": {**SLURM_RUN_LAUNCHER["config"], "env_vars": list(SECRET_NAMES)},
    }
    write_instance_config(home, launcher)
    env = {
        "SHARED_DRIVE": str(shared_drive),
        "MLGRAPH_CONFIG_DIR": str(config_dir),
        "PYTHONWARNINGS": "ignore",
        "MLFLOW_TRACKING_USERNAME": "mlgraph",
        **secrets,
    }
    daemon = DagsterDaemon(home, env, tmp_path)
    outputs: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        try:
            server.launch()  # comes up while the data is materialized
            mp.setenv("MLFLOW_TRACKING_URI", server.url)
            daemon.env["MLFLOW_TRACKING_URI"] = server.url
            with dagster_instance(home) as instance:
                summary = materialize_experiments(
                    defs, instance, ["salary"], selection=DATA_KEYS, echo=outputs.append, raise_on_error=True
                )
                assert not summary.failed
                daemon.start()
                server.wait_healthy()
                trained = run_trainer("salary", {**os.environ, **env, "MLFLOW_TRACKING_URI": server.url}, epochs=2)
                assert trained.get("mlflow_run_id"), trained  # the trainer's hook logged over HTTP
                for job in (EVAL_JOB, ANALYSIS_JOB):
                    wait_for(
                        lambda j=job: succeeded(instance, j, "salary"),
                        RUN_TIMEOUT,
                        f"{job}[salary]",
                        on_timeout=daemon.logs,
                    )
                [eval_run] = runs_of(instance, EVAL_JOB, "salary")
                assert "slurm/job_id" in eval_run.tags and eval_run.tags.get("mlgraph/mlflow_run_id")
                # Every run's tags and every event (its metadata included), as stored.
                for run in instance.get_runs():
                    assert not leaks(serialize_value(run.tags), secrets), run.run_id
                    for entry in instance.all_logs(run.run_id):
                        assert not leaks(serialize_value(entry), secrets), (run.run_id, entry.message)
            daemon.stop_all()
            for args in (
                ["signal", "check", str(shared_drive / "evaluation" / "salary" / ".eval_complete")],
                ["doctor"],
            ):
                cli = subprocess.run(
                    [sys.executable, "-m", "mlgraph.cli.main", *args],
                    cwd=PROJECT_ROOT,
                    env={**os.environ, "DAGSTER_HOME": str(home)},
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                outputs += [cli.stdout, cli.stderr]
            client = tracking.mlflow_client(server.url)
            runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
            assert len(runs) >= 2  # the trainer's and the evaluation's
            for run in runs:
                assert not leaks(str({**run.data.params, **run.data.tags}), secrets), run.info.run_id
        finally:
            daemon.stop_all()
            server.stop()
    assert daemon.descendants() == []
    assert not leaks(server.output(), secrets) and not leaks(daemon.logs(), secrets)
    assert not leaks("\n".join(outputs), secrets)
    written = [p for root in (shared_drive, home) for p in root.rglob("*") if p.is_file()]
    scripts = [p for p in written if p.suffix == ".sbatch"]
    job_logs = [p for p in written if p.suffix in (".log", ".err") and "logs" in p.parts]
    assert scripts and job_logs and any(p.name == ".eval_complete" for p in written)
    assert any(p.name == "mlflow.db" for p in written)  # MLflow's store itself is searched too
    assert not {str(p): found for p in written if (found := leaks(p.read_bytes(), secrets))}
    # The batch script names the credentials it passes; their values are not in it.
    assert "MLFLOW_TRACKING_PASSWORD" in scripts[0].read_text()


# ---- URLs printed or handed to tools: no password, whatever its characters, and no traceback ----------

PW = "S3cr/et:p@ss#w0rd"  # '/', ':', '@' and '#': each broke a hand-written parser
PW_QUOTED = "S3cr%2Fet%3Ap%40ss%23w0rd"


def secret_parts(text: str) -> list[str]:
    return [part for part in ("S3cr", "et:p", "ss#w0rd", "w0rd", PW_QUOTED) if part in text]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql+psycopg2://mlgraph:{PW_QUOTED}@db:5432/mlgraph",
            "postgresql+psycopg2://mlgraph:***@db:5432/mlgraph",
        ),
        ("postgresql://mlgraph:S3cr/etw0rd@db:5432/mlgraph", "postgresql://mlgraph:***@db:5432/mlgraph"),
        ("postgresql://mlgraph@db/mlgraph?sslmode=require&password=S3cr/et", "password=***"),
        ("postgresql://mlgraph@db/mlgraph?PASSWORD=S3cr", "PASSWORD=***"),
        ("http://admin:S3cr/etw0rd@mlflow:5000", "http://admin:***@mlflow:5000"),
        ("postgresql://mlgraph:S3cr@etw0rd@db/mlgraph", "postgresql://<a URL that cannot be parsed"),
        ("postgresql://mlgraph:S3cr@db:w0rd/mlgraph", "postgresql://<a URL that cannot be parsed"),
        ("sqlite:////drive/state/mlflow.db", "sqlite:////drive/state/mlflow.db"),
    ],
)
def test_redact_url_hides_the_password_in_every_form(url: str, shown: str):
    redacted = tracking.redact_url(url)
    assert shown in redacted and not secret_parts(redacted), redacted


def test_libpq_target_moves_every_password_out_of_the_url_and_never_quotes_it():
    from mlgraph.ops.stores import StoreConfigError, libpq_target

    assert libpq_target(f"postgresql+psycopg2://mlgraph:{PW_QUOTED}@db:5433/mlgraph") == (
        "postgresql://mlgraph@db:5433/mlgraph",
        {"PGPASSWORD": PW},
    )
    assert libpq_target("postgresql://mlgraph:S3cr/etw0rd@[::1]:5433/mlgraph") == (
        "postgresql://mlgraph@[::1]:5433/mlgraph",
        {"PGPASSWORD": "S3cr/etw0rd"},
    )
    # On pg_dump's command line (`ps` shows it to every user) a ?password= would be public.
    assert libpq_target("postgresql://mlgraph@db/mlgraph?password=S3cr/et&sslmode=require") == (
        "postgresql://mlgraph@db/mlgraph?sslmode=require",
        {"PGPASSWORD": "S3cr/et"},
    )
    for bad in ("postgresql://mlgraph:S3cr@db:w0rd/mlgraph", "postgresql://mlgraph:S3cr@et@db/x", "S3cr et w0rd"):
        with pytest.raises(StoreConfigError) as raised:
            libpq_target(bad)
        message = str(raised.value)
        assert "MLGRAPH_POSTGRES_URL" in message and "Fix:" in message and "\n" not in message
        assert not secret_parts(message), message


@pytest.mark.parametrize("command", [["backup"], ["doctor"]])
def test_backup_and_doctor_report_a_malformed_postgres_url_in_one_line_without_it(
    command: list[str], shared_drive: Path, config_dir: Path, tmp_path: Path
):
    env = {
        **os.environ,
        "SHARED_DRIVE": str(shared_drive),
        "DAGSTER_HOME": str(tmp_path / "home"),
        "MLGRAPH_BACKUP_DIR": str(tmp_path / "backups"),
        "MLGRAPH_CONFIG_DIR": str(config_dir),
        # A password with '/' and a bad port: urlsplit read 'S3cr' as the port and quoted it in a traceback.
        "MLGRAPH_POSTGRES_URL": "postgresql+psycopg2://mlgraph:S3cr/etw0rd@db:notaport/mlgraph",
    }
    done = subprocess.run(
        [sys.executable, "-m", "mlgraph.cli.main", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=PROJECT_ROOT,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output and not secret_parts(output), output
    (line,) = [line for line in output.splitlines() if "MLGRAPH_POSTGRES_URL" in line]
    assert "cannot be parsed" in line and "Fix:" in line
