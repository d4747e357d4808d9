"""`mlgraph doctor`: one line per check, each ok, FAIL or skipped with the reason (plain Python).

The caller (mlgraph.cli) reads the daemon's heartbeat from the Dagster instance and passes it in;
everything else is measured here. A component not configured on this machine (no Slurm, MLflow on a
local file, no daemon started yet) is skipped, so a fresh `make demo` drive passes.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

from mlgraph.core.tracking import TRACKING_URI_ENV
from mlgraph.ops.alerts import Condition, disk_condition, heartbeat_condition
from mlgraph.ops.backup import BackupError, duckdb_connect
from mlgraph.ops.stores import Places, Store, StoreConfigError, discover, libpq_target, postgres_url

TOOL_TIMEOUT_SECONDS = 20
HTTP_TIMEOUT_SECONDS = 5


def check_sqlite(store: Store, vacuum: bool = False) -> Condition:
    """`PRAGMA integrity_check`, the journal mode, and VACUUM when asked (only on an intact database)."""
    mode = "rw" if vacuum else "ro"
    try:
        con = sqlite3.connect(f"{store.path.resolve().as_uri()}?mode={mode}", uri=True, timeout=30)
        try:
            verdict = [row[0] for row in con.execute("PRAGMA integrity_check(20)")]
            journal = con.execute("PRAGMA journal_mode").fetchone()[0]
            size = store.path.stat().st_size
            if verdict != ["ok"]:
                return Condition(
                    "fail",
                    f"integrity_check: {'; '.join(verdict)[:500]}. Fix: stop the daemon, "
                    "then `mlgraph restore --latest`",
                )
            detail = f"integrity ok, journal_mode={journal}, {size / 1024:.0f} KiB"
            if vacuum:
                try:
                    con.execute("VACUUM")
                    detail += f", vacuumed to {store.path.stat().st_size / 1024:.0f} KiB"
                except sqlite3.OperationalError as exc:  # busy: a writer holds it; the data is fine
                    detail += f", not vacuumed ({exc}; stop the daemon and retry)"
            return Condition("ok", detail)
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return Condition("fail", f"{exc}. Fix: stop the daemon, then `mlgraph restore --latest`")


def check_duckdb(store: Store) -> Condition:
    try:
        con = duckdb_connect(store.path, read_only=True)
    except BackupError as exc:
        return Condition("fail", str(exc))
    try:
        tables = con.execute("SELECT count(*) FROM information_schema.tables").fetchone()[0]
        return Condition("ok", f"opens, {tables} tables")
    except Exception as exc:
        return Condition("fail", f"query failed: {exc}")
    finally:
        con.close()


def check_postgres() -> Condition:
    url = postgres_url()
    if not url:
        return Condition("skipped", "MLGRAPH_POSTGRES_URL not set; Dagster state is in SQLite here")
    import psycopg2

    try:
        libpq_url, env = libpq_target(url)
    except StoreConfigError as exc:
        return Condition("fail", str(exc))
    try:
        con = psycopg2.connect(libpq_url, password=env.get("PGPASSWORD"), connect_timeout=HTTP_TIMEOUT_SECONDS)
        try:
            with con.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
        finally:
            con.close()
    except psycopg2.Error as exc:
        return Condition("fail", f"SELECT 1 failed: {str(exc).strip().splitlines()[0]}")
    return Condition("ok", "SELECT 1")


def check_slurm() -> Condition:
    if shutil.which("sbatch") is None:
        return Condition("skipped", "sbatch not on PATH; runs start locally")
    for tool in (["sinfo", "--noheader"], ["squeue", "--noheader"]):
        try:
            done = subprocess.run(tool, capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Condition("fail", f"{tool[0]}: {exc}")
        if done.returncode != 0:
            return Condition("fail", f"{tool[0]} exit {done.returncode}: {done.stderr.strip()[:300]}")
    return Condition("ok", "sinfo and squeue answer")


def check_mlflow(tracking_uri: str | None = None) -> Condition:
    uri = tracking_uri or os.environ.get(TRACKING_URI_ENV, "")
    if urlsplit(uri).scheme not in ("http", "https"):
        return Condition("skipped", "MLflow tracks to a local store, not a server (its database is checked above)")
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        port = -1
    host = parts.hostname
    if not host or port == -1:
        return Condition(
            "fail",
            f"${TRACKING_URI_ENV} is not a valid http(s) URL (not shown: it may hold a password). Fix: set it "
            "like http://HOST:5000 and pass credentials in MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD",
        )
    # /health needs no credentials: any user:password@ or query in the URI stays out of the request.
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(health, timeout=HTTP_TIMEOUT_SECONDS) as response:
            return Condition("ok", f"{host}: /health HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        return Condition("fail", f"{host}: /health HTTP {exc.code}")
    except (urllib.error.URLError, OSError) as exc:
        return Condition("fail", f"{host} unreachable: {getattr(exc, 'reason', exc)}")
    except ValueError as exc:  # http.client.InvalidURL and the like: the type only, its text may quote the URL
        return Condition("fail", f"{host}: the request could not be made ({type(exc).__name__})")


# The per-run event-log databases of a SQLite instance (history/runs/index.db is the index, not a run).
RUN_EVENT_LOG = re.compile(r"dagster/history/runs/(?!index\.db$)[^/]+\.db")


def run_checks(
    places: Places, latest_heartbeat: float | None, heartbeat_error: str | None = None, vacuum: bool = False
) -> Iterator[tuple[str, Condition]]:
    """(check name, outcome) for every check, in the order printed."""
    run_logs: list[Store] = []
    for store in discover(places):
        if store.kind == "sqlite" and RUN_EVENT_LOG.fullmatch(store.name):
            run_logs.append(store)
        elif store.kind == "sqlite":
            yield store.describe(), check_sqlite(store, vacuum)
        elif store.kind == "duckdb":
            yield store.describe(), check_duckdb(store)
    if run_logs:
        # One event-log database per run: thousands of them on a busy instance. Each is checked; only the
        # failures get a line of their own, the rest one summary line.
        failed = 0
        for store in run_logs:
            outcome = check_sqlite(store, vacuum)
            if outcome.failed:
                failed += 1
                yield store.describe(), outcome
        if failed < len(run_logs):
            yield (
                f"sqlite dagster/history/runs/<run id>.db ({len(run_logs)} run event logs)",
                Condition("ok", f"{len(run_logs) - failed} pass the integrity check"),
            )
    yield "postgres", check_postgres()
    yield "disk space", disk_condition(places.drive.root_path)
    yield (
        "daemon heartbeat",
        (
            Condition("fail", f"cannot read heartbeats: {heartbeat_error}")
            if heartbeat_error
            else heartbeat_condition(latest_heartbeat)
        ),
    )
    yield "slurm", check_slurm()
    yield "mlflow server", check_mlflow()


def format_line(name: str, condition: Condition) -> str:
    if condition.status == "ok":
        return f"{name}: ok ({condition.message})"
    if condition.status == "skipped":
        return f"{name}: skipped ({condition.message})"
    return f"{name}: FAIL: {condition.message}"
