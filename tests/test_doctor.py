"""`mlgraph doctor`: one line per check; what is not configured here is skipped with its reason, and each
broken part (a stale daemon, a file that is not a database, an MLflow server that is down) fails it."""

import re
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest
from dagster._daemon.types import DaemonHeartbeat

from mlgraph.cli.main import main
from mlgraph.core.drive import DriveLayout
from tests.support import dagster_instance

LINE = re.compile(r"^(?P<name>[^:]+): (?P<status>ok \(|skipped \(|FAIL: )")


@pytest.fixture
def drive(shared_drive: Path, config_dir: Path, monkeypatch) -> DriveLayout:
    """What `make demo` leaves: an instance that never saw a daemon, MLflow's SQLite file, the warehouse."""
    layout = DriveLayout.at(shared_drive)
    home = layout.dagster_home()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("MLGRAPH_POSTGRES_URL", raising=False)
    with dagster_instance(home):
        pass  # creates the SQLite run, event-log and schedule storage
    con = sqlite3.connect(layout.mlflow_db())
    con.execute("CREATE TABLE experiments (id INTEGER PRIMARY KEY, name TEXT)")
    con.executemany("INSERT INTO experiments (name) VALUES (?)", [(f"e{i}",) for i in range(500)])
    con.commit()
    con.execute("DELETE FROM experiments WHERE id > 10")
    con.commit()
    con.close()
    duckdb.connect(str(layout.warehouse_db())).close()
    return layout


def checks(output: str) -> dict[str, str]:
    """check name → its line; every line but the summary must be a check line."""
    body = output.strip().splitlines()
    assert body[-1].startswith("mlgraph doctor:"), output
    found = {}
    for line in body[:-1]:
        match = LINE.match(line)
        assert match, f"not a check line: {line!r}"
        found[match.group("name")] = line
    return found


def test_a_fresh_drive_passes_and_unconfigured_parts_are_skipped(drive: DriveLayout, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no sbatch here: Slurm is not expected
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["doctor", "--vacuum"]) == 0
    found = checks(capsys.readouterr().out)
    for name in (
        "sqlite dagster/history/runs.db",
        "sqlite dagster/schedules/schedules.db",
        "sqlite state/mlflow.db",
        "duckdb state/warehouse.duckdb",
        "disk space",
    ):
        assert ": ok (" in found[name], found[name]
    assert "journal_mode=wal" in found["sqlite dagster/history/runs.db"]
    assert "vacuumed to" in found["sqlite state/mlflow.db"]
    for name, reason in (
        ("postgres", "MLGRAPH_POSTGRES_URL not set"),
        ("daemon heartbeat", "no daemon heartbeat"),
        ("slurm", "sbatch not on PATH"),
        ("mlflow server", "local store"),
    ):
        assert found[name].startswith(f"{name}: skipped (") and reason in found[name], found[name]


class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        return None


@pytest.mark.slurm
def test_each_broken_part_fails_with_its_reason(drive: DriveLayout, monkeypatch, capsys):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_address[1]}")
        assert main(["doctor"]) == 0
        found = checks(capsys.readouterr().out)
        assert found["mlflow server"].startswith("mlflow server: ok (") and "HTTP 200" in found["mlflow server"]
        assert found["slurm"] == "slurm: ok (sinfo and squeue answer)"  # scripts/slurm-local is up here
    finally:
        server.shutdown()
        server.server_close()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:pw@127.0.0.1:{server.server_address[1]}")  # now closed
    (drive.state_dir() / "auth.db").write_bytes(b"this is not a database" * 100)
    with dagster_instance(drive.dagster_home()) as instance:
        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - 900, "SENSOR", None, None))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    found = checks(out)
    assert found["sqlite state/auth.db"].startswith("sqlite state/auth.db: FAIL: file is not a database")
    assert found["daemon heartbeat"].startswith("daemon heartbeat: FAIL: the daemon's last heartbeat is 9")
    assert found["mlflow server"].startswith("mlflow server: FAIL: 127.0.0.1 unreachable")
    assert "pw" not in found["mlflow server"] and out.strip().endswith("3 check(s) failed")


def test_run_event_logs_are_summarized_and_a_broken_one_named(drive: DriveLayout, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = drive.dagster_home() / "history" / "runs"
    for i in range(3):  # per-run event logs as the SQLite instance keeps them
        con = sqlite3.connect(runs / f"run-{i}.db")
        con.execute("CREATE TABLE event_logs (id INTEGER PRIMARY KEY, event TEXT)")
        con.commit()
        con.close()
    (runs / "run-9.db").write_bytes(b"torn" * 1000)
    assert main(["doctor"]) == 1
    found = checks(capsys.readouterr().out)
    summary = "sqlite dagster/history/runs/<run id>.db (4 run event logs)"
    assert found[summary] == f"{summary}: ok (3 pass the integrity check)"
    assert found["sqlite dagster/history/runs/run-9.db"].startswith("sqlite dagster/history/runs/run-9.db: FAIL: ")
    assert not any(name.startswith("sqlite dagster/history/runs/run-0") for name in found)
    assert found["sqlite dagster/history/runs/index.db"].startswith("sqlite dagster/history/runs/index.db: ok (")


def test_an_mlflow_uri_with_credentials_fails_cleanly_without_them():
    from mlgraph.ops.doctor import check_mlflow

    # No port after the password: urllib read 'S3cret@127.0.0.1' as a port and raised InvalidURL quoting it.
    outcome = check_mlflow("http://admin:S3cret@127.0.0.1:1")
    assert outcome.failed and "S3cret" not in outcome.message and outcome.message.startswith("127.0.0.1")
    outcome = check_mlflow("http://admin:S3cret@127.0.0.1")  # port 80: whatever answers there, no exception
    assert "S3cret" not in outcome.message
    outcome = check_mlflow("http://admin:S3cr/et@127.0.0.1:notaport")
    assert outcome.failed and "S3cr" not in outcome.message and "Fix:" in outcome.message
