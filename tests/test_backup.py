"""`mlgraph backup` / `mlgraph restore` / `mlgraph doctor` on a real instance, real MLflow and DuckDB:
the restore drill (back up, corrupt, doctor fails, restore, same runs), manifests, retention, the
daemon guard, and a backup taken while processes keep committing to SQLite."""

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster._daemon.types import DaemonHeartbeat

from mlgraph.cli.main import main
from mlgraph.core.drive import DriveLayout
from mlgraph.ops.backup import MANIFEST, complete_backups
from tests.support import dagster_instance, wait_for
from tests.support.postgres import libpq


@dg.asset
def tiny() -> int:
    """One small materialization per run."""
    return 1


@pytest.fixture
def site(shared_drive: Path, config_dir: Path, tmp_path: Path, monkeypatch):
    """A drive with an instance (two runs), MLflow (two runs) and the warehouse; DAGSTER_HOME under the drive."""
    drive = DriveLayout.at(shared_drive)
    home = drive.dagster_home()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("MLGRAPH_BACKUP_DIR", str(tmp_path / "backups"))
    with dagster_instance(home) as instance:
        for _ in range(2):
            assert dg.materialize([tiny], instance=instance).success
    con = duckdb.connect(str(drive.warehouse_db()))
    con.execute("CREATE TABLE constraint_experiment AS SELECT range AS chunk, range * 0.5 AS accuracy FROM range(50)")
    con.close()
    return drive


def mlflow_client(drive: DriveLayout):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{drive.mlflow_db()}")


def run_ids(home: Path) -> list[str]:
    with dagster_instance(home) as instance:
        return sorted(run.run_id for run in instance.get_runs())


def corrupt(path: Path) -> None:
    """Overwrite two pages' worth of bytes in the middle of the file, as a failing disk would."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(size // 2 - 4096)
        fh.write(os.urandom(8192))


def test_restore_drill(site: DriveLayout, tmp_path: Path, capsys):
    client = mlflow_client(site)
    experiment = client.create_experiment("drill")
    mlflow_runs = sorted(client.create_run(experiment).info.run_id for _ in range(2))
    home = site.dagster_home()
    before = run_ids(home)

    assert main(["backup"]) == 0
    (backup,) = complete_backups(tmp_path / "backups")
    manifest = json.loads((backup / MANIFEST).read_text())
    names = {store["name"] for store in manifest["stores"]}
    assert {
        "dagster/history/runs.db",
        "dagster/history/runs/index.db",
        "state/mlflow.db",
        "state/warehouse.duckdb",
    } <= names
    assert {f"dagster/history/runs/{run_id}.db" for run_id in before} <= names
    assert "config/experiments/salary.yaml" in manifest["files"]
    assert manifest["versions"]["dagster"] == dg.__version__

    # Life goes on, then the disk fails under MLflow's database.
    with dagster_instance(home) as instance:
        assert dg.materialize([tiny], instance=instance).success
    assert len(run_ids(home)) == 3
    corrupt(site.mlflow_db())
    capsys.readouterr()
    assert main(["doctor"]) == 1
    report = capsys.readouterr().out
    assert "sqlite state/mlflow.db: FAIL" in report and "sqlite dagster/history/runs.db: ok" in report

    # A running daemon (fresh heartbeat) blocks the restore; a dead one (old heartbeat) does not.
    with dagster_instance(home) as instance:
        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time(), "SENSOR", None, None))
    assert main(["restore", "--latest"]) == 1
    assert "daemon is running" in capsys.readouterr().err
    with dagster_instance(home) as instance:
        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - 3600, "SENSOR", None, None))
    assert main(["restore", "--latest"]) == 0

    assert run_ids(home) == before
    assert sorted(r.info.run_id for r in mlflow_client(site).search_runs([experiment])) == mlflow_runs
    con = duckdb.connect(str(site.warehouse_db()), read_only=True)
    assert con.execute("SELECT count(*), sum(accuracy) FROM constraint_experiment").fetchone() == (50, 612.5)
    con.close()
    assert site.mlflow_db().with_name("mlflow.db.pre-restore").exists()
    capsys.readouterr()
    assert main(["doctor"]) == 0, capsys.readouterr().out


def test_manifest_guards_retention_and_refusals(site: DriveLayout, tmp_path: Path, capsys):
    root = tmp_path / "backups"
    assert main(["backup", "--to", str(site.root_path / "backups")]) == 1
    assert "inside the shared drive" in capsys.readouterr().err

    interrupted = root / "mlgraph-20000101T000000000000Z"
    (interrupted / "dagster").mkdir(parents=True)  # no manifest: never used, never counted
    for _ in range(3):
        assert main(["backup", "--keep", "2"]) == 0
    kept = complete_backups(root)
    assert len(kept) == 2 and not interrupted.exists()

    # A run holding the warehouse's write lock: the backup waits a bounded time, then says so.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); sys.stdin.read()",
            str(site.warehouse_db()),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert main(["backup"]) == 1
        assert "warehouse.duckdb is locked by a writer" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert len(complete_backups(root)) == 2 and len(list(root.iterdir())) == 2  # the failed one cleaned up

    assert main(["restore", str(interrupted)]) == 1
    assert "incomplete" in capsys.readouterr().err
    tampered = (
        kept[-1] / "state" / "mlflow.db"
        if (kept[-1] / "state" / "mlflow.db").exists()
        else kept[-1] / "dagster" / "history" / "runs.db"
    )
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    live = site.dagster_home() / "history" / "runs.db"
    live_bytes = live.read_bytes()
    assert main(["restore", "--latest"]) == 1
    assert "does not match its manifest" in capsys.readouterr().err
    assert live.read_bytes() == live_bytes  # nothing touched


WRITER = r"""
import sqlite3, sys, time
path, wal, batch = sys.argv[1], sys.argv[2] == "wal", 10
con = sqlite3.connect(path, timeout=30, isolation_level=None)
con.execute("PRAGMA journal_mode=" + ("wal" if wal else "delete"))
con.execute("PRAGMA synchronous=OFF")  # speed; crash safety is not what this writer tests
con.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, payload TEXT)")
seq = 0
while True:
    con.execute("BEGIN IMMEDIATE")
    for _ in range(batch):  # one transaction = 10 rows: a torn copy would show a count not divisible by 10
        seq += 1
        con.execute("INSERT INTO events VALUES (?, ?)", (seq, "x" * 200))
    con.execute("COMMIT")
"""


def count(path: Path) -> int:
    con = sqlite3.connect(path, timeout=30)
    try:
        return con.execute("SELECT count(*) FROM events").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def test_backup_while_writers_commit_is_consistent(shared_drive: Path, config_dir: Path, tmp_path: Path, monkeypatch):
    site = DriveLayout.at(shared_drive)
    site.state_dir().mkdir(parents=True)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no_instance_yet"))
    monkeypatch.setenv("MLGRAPH_BACKUP_DIR", str(tmp_path / "backups"))
    targets = {"wal": site.state_dir() / "busy_wal.db", "delete": site.state_dir() / "busy_rollback.db"}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), mode]) for mode, path in targets.items()]
    try:
        for path in targets.values():
            wait_for(lambda p=path: count(p) >= 100, 30, f"the writer of {path.name} to commit")
        assert main(["backup"]) == 0
        (backup,) = complete_backups(tmp_path / "backups")
        for path in targets.values():
            copy = backup / "state" / path.name
            con = sqlite3.connect(copy)
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows, low, high = con.execute("SELECT count(*), min(seq), max(seq) FROM events").fetchone()
            con.close()
            # A committed state: whole transactions, no gaps; the writer went on after the copy.
            assert rows >= 100 and rows % 10 == 0 and (low, high) == (1, rows), (path.name, rows, low, high)
            wait_for(lambda p=path, n=rows: count(p) > n, 30, f"the writer of {path.name} to go on")
    finally:
        for proc in writers:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.postgres
def test_postgres_is_dumped_and_restored_without_its_password_in_files(
    shared_drive: Path, config_dir: Path, tmp_path: Path, monkeypatch, pg_url: str, capsys
):
    import psycopg2

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no_instance_yet"))
    monkeypatch.setenv("MLGRAPH_BACKUP_DIR", str(tmp_path / "backups"))

    def sql(statement: str):
        with psycopg2.connect(libpq(pg_url), connect_timeout=10) as conn, conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchone() if cur.description else None

    sql("CREATE TABLE runs (id serial PRIMARY KEY, name text)")
    sql("INSERT INTO runs (name) SELECT 'run-' || g FROM generate_series(1, 25) g")
    assert main(["doctor"]) == 0
    assert "postgres: ok (SELECT 1)" in capsys.readouterr().out
    assert main(["backup"]) == 0
    (backup,) = complete_backups(tmp_path / "backups")
    assert (backup / "postgres.dump").stat().st_size > 0
    password = pg_url.split("//", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert all(password.encode() not in p.read_bytes() for p in backup.rglob("*") if p.is_file())

    sql("DELETE FROM runs WHERE id > 5")
    assert main(["restore", "--latest"]) == 0
    assert sql("SELECT count(*), max(name) FROM runs") == (25, "run-9")


def test_backups_are_private_and_restore_keeps_each_stores_mode(
    shared_drive: Path, config_dir: Path, tmp_path: Path, monkeypatch, capsys
):
    site = DriveLayout.at(shared_drive)
    state = site.state_dir()
    state.mkdir(parents=True)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no_instance_yet"))
    monkeypatch.setenv("MLGRAPH_BACKUP_DIR", str(tmp_path / "backups"))
    auth, tracking = state / "basic_auth.db", site.mlflow_db()
    for path, mode in ((auth, 0o600), (tracking, 0o640)):
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE users (username TEXT, password_hash TEXT)")
        con.execute("INSERT INTO users VALUES ('admin', 'pbkdf2:sha256:600000$salt$hash')")
        con.commit()
        con.close()
        os.chmod(path, mode)
    duckdb.connect(str(site.warehouse_db())).close()
    os.chmod(site.warehouse_db(), 0o660)
    old_umask = os.umask(0o022)  # the usual umask: anything created without an explicit mode is 0644/0755
    try:
        assert main(["backup"]) == 0
        (backup,) = complete_backups(tmp_path / "backups")
        modes = {
            path.relative_to(backup).as_posix(): oct(path.stat().st_mode & 0o777)
            for path in [backup, *backup.rglob("*")]
        }
        assert {"state/basic_auth.db", "config/experiments/salary.yaml", MANIFEST} <= set(modes)
        wrong = {
            name: mode
            for name, mode in modes.items()
            if mode != (oct(0o700) if (backup / name).is_dir() else oct(0o600))
        }
        assert not wrong, wrong  # the auth database's password hashes included
        assert oct((tmp_path / "backups").stat().st_mode & 0o777) == oct(0o700)

        auth.unlink()  # gone: restored with the mode it had when backed up
        assert main(["restore", "--latest"]) == 0, capsys.readouterr().err
    finally:
        os.umask(old_umask)
    assert oct(auth.stat().st_mode & 0o777) == oct(0o600)
    assert oct(tracking.stat().st_mode & 0o777) == oct(0o640)  # replaced: keeps the live file's mode
    assert oct(site.warehouse_db().stat().st_mode & 0o777) == oct(0o660)
    con = sqlite3.connect(auth)
    assert con.execute("SELECT username FROM users").fetchall() == [("admin",)]
    con.close()
    assert not [p.name for p in state.iterdir() if ".restore-" in p.name]  # no staging left behind
