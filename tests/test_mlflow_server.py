"""`mlgraph mlflow-server` for real: a `mlflow server --app-name basic-auth` subprocess on a free port.

A training run lands through HTTP with credentials; without them or with wrong ones the server says 401
and the client says which variables to check; an unreachable server fails the evaluation asset with a
clear message while its local results stay on the drive; the trainer's completion hook only warns; the
admin password appears in no log, file, param or tag. One server (SQLite in tmp) serves the module.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import dagster as dg
import httpx
import pytest

from mlgraph.core import tracking
from mlgraph.core.drive import PROJECT_ROOT
from mlgraph.ops import mlflow_server
from tests.support import wait_for

USERNAME = "mlgraph-admin"
PASSWORD = f"planted-Pw-{uuid.uuid4().hex}"  # unique: any occurrence anywhere is a leak
STARTUP_SECONDS = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`mlgraph mlflow-server` as a subprocess, its output in a log file; stopped by PID."""

    def __init__(self, drive: Path, log: Path, env: Mapping[str, str]):
        self.drive, self.log, self.port = drive, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "SHARED_DRIVE": str(drive), "PYTHONWARNINGS": "ignore"}
        self.proc: subprocess.Popen | None = None

    def launch(self) -> ServerProcess:
        """Start the process and return at once (the caller may do other work while it comes up)."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlgraph.cli.main", "mlflow-server", "--port", str(self.port)],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def start(self) -> ServerProcess:
        return self.launch().wait_healthy()

    def wait_healthy(self) -> ServerProcess:
        assert self.proc is not None, "launch() first"

        def healthy() -> bool:  # /health answers once the workers are up
            if self.proc.poll() is not None:
                raise AssertionError(f"mlgraph mlflow-server exited {self.proc.returncode}: {self.output()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        def stopped_with_output() -> str:
            self.stop()
            return self.output()[-3000:]

        wait_for(healthy, STARTUP_SECONDS, f"{self.url}/health", interval=0.25, on_timeout=stopped_with_output)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM (the command passes it on to mlflow), then SIGKILL if it lingers; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        code, self.proc = self.proc.returncode, None
        return code


def credentials(monkeypatch: pytest.MonkeyPatch, uri: str, username: str | None, password: str | None) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name, value in (("MLFLOW_TRACKING_USERNAME", username), ("MLFLOW_TRACKING_PASSWORD", password)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("mlflow_server")
    drive = root / "shared"
    drive.mkdir()
    proc = ServerProcess(
        drive,
        root / "server.log",
        {
            "MLFLOW_TRACKING_USERNAME": USERNAME,
            "MLFLOW_TRACKING_PASSWORD": PASSWORD,
            "MLGRAPH_MLFLOW_BACKEND_URI": "",
            "MLGRAPH_POSTGRES_URL": "",  # SQLite on this drive
        },
    )
    try:
        yield proc.start()
    finally:
        code = proc.stop()
        assert code in (0, 143), f"mlflow-server exited {code} on SIGTERM: {proc.output()[-2000:]}"


def checkpoint(drive: Path, name: str = "ckpt") -> Path:
    path = drive / "models" / "salary" / "checkpoints" / name / "final"
    path.mkdir(parents=True)
    (path / "model.pt").write_bytes(b"weights")
    return path


def test_server_plan_keeps_secrets_off_the_command_line_and_the_drive(tmp_path: Path):
    env = {
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": "pw-123456789",
        "MLGRAPH_POSTGRES_URL": "postgresql+psycopg2://mlgraph:pg-secret@127.0.0.1:5433/mlgraph",
    }
    with pytest.raises(mlflow_server.MlflowServerError, match="MLFLOW_TRACKING_PASSWORD"):
        mlflow_server.plan(environ={"MLFLOW_TRACKING_USERNAME": "admin"}, drive_root=tmp_path)
    plan = mlflow_server.plan(environ=env, drive_root=tmp_path)
    assert plan.host == "127.0.0.1"
    assert plan.backend_uri == "postgresql+psycopg2://mlgraph:pg-secret@127.0.0.1:5433/mlflow"
    assert "pg-secret" not in "\n".join(plan.describe()) and "mlgraph:***@" in "\n".join(plan.describe())
    argv = " ".join(mlflow_server.command(plan))
    assert "pg-secret" not in argv and "pw-123456789" not in argv and "--app-name basic-auth" in argv
    assert "pw-123456789" not in mlflow_server.auth_ini(plan)
    env_first = mlflow_server.server_env(plan, tmp_path / "x.ini", env, bootstrap_password=True)
    env_later = mlflow_server.server_env(plan, tmp_path / "x.ini", env, bootstrap_password=False)
    assert env_first["MLFLOW_AUTH_ADMIN_PASSWORD"] == "pw-123456789" and "MLFLOW_AUTH_ADMIN_PASSWORD" not in env_later
    assert "MLFLOW_TRACKING_PASSWORD" not in env_first and env_first["MLFLOW_BACKEND_STORE_URI"] == plan.backend_uri
    sqlite = mlflow_server.plan(environ={k: v for k, v in env.items() if "POSTGRES" not in k}, drive_root=tmp_path)
    assert sqlite.backend_uri == f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"
    assert sqlite.auth_db == tmp_path / "state" / "mlflow-auth.db"


def test_training_run_lands_over_http_with_credentials(server: ServerProcess, monkeypatch: pytest.MonkeyPatch):
    from mlgraph.trainer import signal_training_complete

    credentials(monkeypatch, server.url, USERNAME, PASSWORD)
    result = signal_training_complete(
        "salary",
        checkpoint(server.drive),
        final_loss=0.25,
        num_epochs=3,
        params={"lr": 0.01},
        shared_drive=server.drive,
        detect_git=False,
    )
    assert result.ok and result.mlflow_run_id and not result.warnings, result
    run = tracking.mlflow_client(server.url).get_run(result.mlflow_run_id)  # read back over HTTP
    assert run.data.metrics["final_loss"] == 0.25 and run.data.params == {"lr": "0.01"}
    assert run.info.status == "FINISHED"
    assert json.loads(result.signal_path.read_text())["mlflow_run_id"] == result.mlflow_run_id


@pytest.mark.parametrize(("username", "password"), [(None, None), (USERNAME, "wrong-password")], ids=["none", "wrong"])
def test_missing_or_wrong_credentials_get_401_and_a_clear_message(
    server: ServerProcess,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
    username,
    password,
):
    from mlgraph.trainer import signal_training_complete

    auth = (username, password) if username else None
    response = httpx.post(f"{server.url}/api/2.0/mlflow/experiments/search", json={"max_results": 1}, auth=auth)
    assert response.status_code == 401
    assert "Traceback" not in response.text and PASSWORD not in response.text
    credentials(monkeypatch, server.url, username, password)
    with pytest.raises(tracking.TrackingServerError, match="401 unauthorized: check MLFLOW_TRACKING_USERNAME/"):
        tracking.Tracker.open("salary", server.url, drive_root=server.drive)
    # The hook on the GPU machine: a warning, and the signal is still written.
    result = signal_training_complete(
        "salary",
        checkpoint(server.drive, f"ckpt-{username}"),
        final_loss=0.5,
        shared_drive=server.drive,
        detect_git=False,
    )
    assert result.ok and result.signal_path.exists() and result.mlflow_run_id is None
    assert any("unauthorized" in w and server.url in w for w in result.warnings), result.warnings
    assert "unauthorized" in caplog.text and PASSWORD not in caplog.text
    # The command line says the same in one line: no traceback, exit status 2.
    from mlgraph.cli.main import main

    assert main(["compare", "--experiment", "salary"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlgraph compare: MLflow tracking server") and "401 unauthorized" in err
    assert "Traceback" not in err and PASSWORD not in err


def test_stored_admin_password_is_checked_not_reset(server: ServerProcess, tmp_path: Path):
    # A second start on the same drive with another password: reported, not applied; then it stops on the
    # port the first one holds, before starting anything.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {
        **server.env,
        "MLFLOW_TRACKING_USERNAME": USERNAME,
        "MLFLOW_TRACKING_PASSWORD": "another-password",
        "TMPDIR": str(tmp),
    }
    second = subprocess.run(
        [sys.executable, "-m", "mlgraph.cli.main", "mlflow-server", "--port", str(server.port)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 2 and f"127.0.0.1:{server.port} is in use" in second.stderr
    differs = f"MLFLOW_TRACKING_PASSWORD differs from the stored password of MLflow admin user {USERNAME!r}"
    assert differs in second.stdout
    assert "another-password" not in second.stdout + second.stderr
    assert list(tmp.iterdir()) == []  # the private directory of the auth ini is gone
    auth_db = server.drive / "state" / "mlflow-auth.db"
    assert oct(auth_db.stat().st_mode & 0o777) == "0o600"
    assert mlflow_server.admin_status(auth_db, USERNAME, PASSWORD) == "match"
    assert mlflow_server.admin_status(auth_db, USERNAME, "another-password") == "differs"
    assert mlflow_server.admin_status(auth_db, "someone-else", PASSWORD) == "new"
    warning = mlflow_server.mismatch_warning(USERNAME, auth_db)
    assert "differs" in warning and "never resets" in warning and "another-password" not in warning
    # Still the original password after that check: the server accepts it.
    ok = httpx.post(
        f"{server.url}/api/2.0/mlflow/experiments/search", json={"max_results": 1}, auth=(USERNAME, PASSWORD)
    )
    assert ok.status_code == 200


def test_unreachable_server_fails_evaluation_with_a_clear_message_and_keeps_local_results(
    shared_drive: Path, config_dir: Path, instance, monkeypatch: pytest.MonkeyPatch, capsys
):
    from mlgraph.cli.staging import materialize_experiments
    from pipeline_assets.definitions import defs
    from tests.support.chain import DATA_KEYS, load_trainer, materialize
    from tests.support.fixtures import shrink_experiment

    shrink_experiment(config_dir, "salary", 600)
    materialize_experiments(defs, instance, ["salary"], selection=DATA_KEYS, echo=lambda _: None, raise_on_error=True)
    assert load_trainer().main(["--experiment", "salary", "--epochs", "2", "--no-mlflow"]) == 0
    capsys.readouterr()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    credentials(monkeypatch, dead, USERNAME, PASSWORD)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # the bound itself is MLflow's; keep the test short
    started = time.monotonic()
    result = materialize(instance, "checkpoint_evaluation", "salary", raise_on_error=False)
    assert not result.success and time.monotonic() - started < 60
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.to_string()  # the asset's error is the cause of Dagster's
    assert f"MLflow tracking server {dead} unreachable: is `mlgraph mlflow-server` running" in message
    eval_dir = shared_drive / "evaluation" / "salary"
    # Written before MLflow was called, and still there: the metrics and the predictions.
    assert list((eval_dir / "metrics").rglob("*.parquet")) and list((eval_dir / "predictions").glob("*.parquet"))
    failed = json.loads((eval_dir / ".eval_failed").read_text())
    assert "unreachable" in failed["error_message"] and not (eval_dir / ".eval_complete").exists()


def test_errors_reaching_http_clients_carry_no_stack_trace(server: ServerProcess):
    auth = (USERNAME, PASSWORD)
    answers = [
        httpx.get(f"{server.url}/api/2.0/mlflow/runs/get", params={"run_id": "0" * 32}, auth=auth),  # no such run
        httpx.post(
            f"{server.url}/api/2.0/mlflow/runs/create",
            content=b"{not json",
            auth=auth,
            headers={"Content-Type": "application/json"},
        ),  # malformed body
        httpx.post(f"{server.url}/api/2.0/mlflow/experiments/create", json={"name": 12}, auth=("x", "y")),
    ]
    for response in answers:
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
        assert "Traceback" not in response.text and 'File "' not in response.text, response.text[:500]


def test_password_appears_nowhere(server: ServerProcess, monkeypatch: pytest.MonkeyPatch):
    """After the tests above: the server's output, every file on its drive, every MLflow param and tag."""
    credentials(monkeypatch, server.url, USERNAME, PASSWORD)
    client = tracking.mlflow_client(server.url)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert runs, "the training test logged no run"
    for run in runs:
        assert PASSWORD not in json.dumps({**run.data.params, **run.data.tags}), run.info.run_id
    assert PASSWORD not in server.output() and USERNAME in server.output()
    for path in server.drive.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


@pytest.mark.postgres
def test_tracking_store_on_postgres(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch):
    """The same server with its tracking store in a fresh PostgreSQL database (CI runs scripts/postgres-local)."""
    from sqlalchemy.engine import make_url

    from tests.support.postgres import count_rows

    drive = tmp_path / "shared"
    drive.mkdir()
    server = ServerProcess(
        drive,
        tmp_path / "server.log",
        {
            "MLFLOW_TRACKING_USERNAME": USERNAME,
            "MLFLOW_TRACKING_PASSWORD": PASSWORD,
            "MLGRAPH_MLFLOW_BACKEND_URI": pg_url,
        },
    )
    try:
        server.start()
        credentials(monkeypatch, server.url, USERNAME, PASSWORD)
        tracker = tracking.Tracker.open("salary", server.url, drive_root=drive)
        run_id = tracker.create_run("on-postgres", {"mlgraph.test": "pg"})
        tracker.log(run_id, metrics={"rmse": 1.5})
        tracker.set_status(run_id, "FINISHED")
        assert tracker.client.get_run(run_id).data.metrics == {"rmse": 1.5}
    finally:
        assert server.stop() in (0, 143)
    assert count_rows(pg_url, "runs") == 1 and not (drive / "state" / "mlflow.db").exists()
    output = server.output()
    assert "$MLGRAPH_MLFLOW_BACKEND_URI" in output and "mlgraph:***@" in output
    assert make_url(pg_url).password not in output and PASSWORD not in output
