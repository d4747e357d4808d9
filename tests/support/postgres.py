"""The local PostgreSQL server (scripts/postgres-local): its URLs, a skip when it is down, and the `pg_url` fixture.

Skipped when the local server is down, except in CI (CI=true), where that is a failure.
"""

import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from mlgraph.core.drive import PROJECT_ROOT
from tests.support.wait import wait_for

SCRIPT = PROJECT_ROOT / "scripts" / "postgres-local"


def server_url(database: str) -> str:
    """The `mlgraph` role's SQLAlchemy URL for `database`, from the variables scripts/postgres-local uses.

    The driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed."""
    port = os.environ.get("MLGRAPH_POSTGRES_PORT", "5433")
    password = os.environ.get("MLGRAPH_POSTGRES_PASSWORD", "mlgraph-local-dev")  # the script's local-dev default
    return f"postgresql+psycopg2://mlgraph:{quote(password, safe='')}@127.0.0.1:{port}/{database}"


def libpq(url: str) -> str:
    """The same URL for psycopg2.connect (libpq knows no driver suffix)."""
    return url.replace("postgresql+psycopg2://", "postgresql://", 1)


def require_postgres() -> None:
    """Skip when scripts/postgres-local is down, except under CI=true, where it must be up."""
    status = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True, timeout=30, check=False)
    if status.returncode != 0:
        message = f"PostgreSQL is not up ({status.stdout.strip()} {status.stderr.strip()})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {message}: run `scripts/postgres-local up` before `make test`")
        pytest.skip(f"{message}; `scripts/postgres-local up` starts a local server (as root)")


def drop_database(admin: Any, name: str, timeout: float = 30) -> None:
    """DROP DATABASE ... WITH (FORCE), retried while an autovacuum worker (the superuser's, which our role may
    not terminate) still works on it, e.g. after MLflow's migrations filled it."""
    import psycopg2

    refused: list[Exception] = []

    def dropped() -> bool:
        try:
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.ObjectInUse) as exc:
            refused[:] = [exc]
            return False
        return True

    wait_for(dropped, timeout, f"DROP DATABASE {name}", interval=0.5, on_timeout=lambda: f"last refusal: {refused}")


def count_rows(url: str, table: str) -> int:
    import psycopg2

    with psycopg2.connect(libpq(url), connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return cur.fetchone()[0]


@pytest.fixture
def pg_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database for this test alone (created, then dropped with its connections); exported as
    MLGRAPH_POSTGRES_URL for the instance, the daemon and the runs."""
    require_postgres()
    import psycopg2

    name = f"mlgraph_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(libpq(server_url("mlgraph")), connect_timeout=10)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        url = server_url(name)
        monkeypatch.setenv("MLGRAPH_POSTGRES_URL", url)
        yield url
    finally:
        try:
            drop_database(admin, name)
        finally:
            admin.close()
