"""Which stores hold mlgraph's state, and where (one home for backup, restore and doctor).

- SQLite: every `*.db` under DAGSTER_HOME (runs.db, index.db, schedules/, the per-run event logs in
  history/runs/) and under the drive's state/ (MLflow's mlflow.db, an auth DB beside it);
- DuckDB: the warehouse, state/*.duckdb;
- PostgreSQL: `$MLGRAPH_POSTGRES_URL` when set (Dagster's storage across machines).

A store's `name` is its place in a backup: `dagster/<path under DAGSTER_HOME>` or `state/<file>`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from mlgraph.core.drive import POSTGRES_URL_ENV, DriveLayout, resolve_dagster_home
from mlgraph.core.tracking import PASSWORD_PARAMETERS

POSTGRES_PASSWORD_ENV = "MLGRAPH_POSTGRES_PASSWORD"
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
DUCKDB_SUFFIX = ".duckdb"
# Left aside by restore; never a store of their own.
PRE_RESTORE = ".pre-restore"


@dataclass(frozen=True)
class Store:
    name: str
    kind: str  # "sqlite" | "duckdb" | "postgres"
    path: Path | None = None

    def describe(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Places:
    """Where the stores live on this machine."""

    drive: DriveLayout
    dagster_home: Path
    config_dir: Path

    @classmethod
    def resolve(
        cls, drive: DriveLayout, config_dir: Path, dagster_home: str | os.PathLike[str] | None = None
    ) -> Places:
        home = Path(dagster_home).resolve() if dagster_home else resolve_dagster_home(drive)
        return cls(drive, home, Path(config_dir).resolve())

    def target(self, name: str) -> Path:
        """The live path of a file store named `name` (as in a backup manifest)."""
        top, _, rest = name.partition("/")
        if not rest or ".." in Path(rest).parts or Path(rest).is_absolute():
            raise ValueError(f"store name {name!r} is not dagster/<path> or state/<file>")
        if top == "dagster":
            return self.dagster_home / rest
        if top == "state":
            return self.drive.state_dir() / rest
        raise ValueError(f"store name {name!r} is not dagster/<path> or state/<file>")


def _files(root: Path, recursive: bool, suffixes: tuple[str, ...]) -> list[Path]:
    if not root.is_dir():
        return []
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in found if p.is_file() and not p.is_symlink() and p.suffix in suffixes)


def discover(places: Places) -> list[Store]:
    """Every store that exists here now (files that are not there yet are simply not listed)."""
    stores: list[Store] = []
    seen: set[Path] = set()
    for path in _files(places.dagster_home, True, SQLITE_SUFFIXES):
        seen.add(path.resolve())
        stores.append(Store(f"dagster/{path.relative_to(places.dagster_home).as_posix()}", "sqlite", path))
    state = places.drive.state_dir()
    for path in _files(state, False, SQLITE_SUFFIXES):
        if path.resolve() not in seen:
            stores.append(Store(f"state/{path.name}", "sqlite", path))
    for path in _files(state, False, (DUCKDB_SUFFIX,)):
        stores.append(Store(f"state/{path.name}", "duckdb", path))
    if postgres_url():
        stores.append(Store("postgres", "postgres"))
    return stores


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_URL_ENV, "").strip() or None


class StoreConfigError(ValueError):
    """A store's configuration is unusable; the message names the variable and the fix, never a secret."""


_URL_SHAPE = "postgresql://USER@HOST:PORT/DATABASE (the password percent-encoded, or in $" + POSTGRES_PASSWORD_ENV + ")"


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """The URL for pg_dump/psql without its password, and the environment that carries the password.

    SQLAlchemy's `postgresql+psycopg2://` becomes `postgresql://`; the password (in the user part or a
    `password` query parameter, else $MLGRAPH_POSTGRES_PASSWORD) goes to PGPASSWORD, never onto a command
    line, into a file or into an error message: a URL that cannot be parsed raises StoreConfigError
    without quoting it."""
    # Lazy: sqlalchemy costs ~0.3 s to import; the same parser Dagster's and MLflow's storage use.
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        raise StoreConfigError(
            f"${POSTGRES_URL_ENV} cannot be parsed as a URL (not shown: it may hold a password). Fix: write it "
            f"as {_URL_SHAPE}"
        ) from None
    if "@" in (parsed.host or ""):
        raise StoreConfigError(
            f"${POSTGRES_URL_ENV}: its user part holds an unescaped '@' (not shown: it may be in the password). "
            f"Fix: percent-encode '@' as %40, or write it as {_URL_SHAPE}"
        )
    scheme = parsed.drivername.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise StoreConfigError(
            f"${POSTGRES_URL_ENV} is not a postgresql:// URL (scheme {parsed.drivername!r}). Fix: write it as "
            f"{_URL_SHAPE}"
        )
    # (key, value) pairs: SQLAlchemy gives a repeated parameter as a tuple of its values.
    pairs = [(k, v) for k, vs in parsed.query.items() for v in ([vs] if isinstance(vs, str) else vs)]
    from_query = [v for k, v in pairs if k.lower() in PASSWORD_PARAMETERS]
    query = [(k, v) for k, v in pairs if k.lower() not in PASSWORD_PARAMETERS]
    password = parsed.password or (from_query[0] if from_query else None) or os.environ.get(POSTGRES_PASSWORD_ENV)
    bare = URL.create(
        "postgresql", username=parsed.username, host=parsed.host, port=parsed.port, database=parsed.database
    )
    target = bare.render_as_string(hide_password=False)
    if query:
        target += "?" + urlencode(query, safe="/", quote_via=quote)
    env = {"PGPASSWORD": password} if password else {}
    return target, env
