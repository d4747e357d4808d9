"""`mlgraph backup`: an online, consistent copy of every store plus config/, outside the drive.

- SQLite through SQLite's online backup API, whole database in one step: the copy is one committed
  state even while the daemon and runs write (a plain file copy of a live database can tear a page);
  each copy passes `PRAGMA quick_check` before it is listed;
- DuckDB through `EXPORT DATABASE` on a read-only connection (a writer holding the file's lock is
  waited for, a few times, then named in a clear error);
- PostgreSQL through `pg_dump --format=custom` when `$MLGRAPH_POSTGRES_URL` is set (password in the
  child's PGPASSWORD only).
The manifest (every file's sha256 and size, the stores and their sources and modes, tool versions) is
written last and atomically: a directory without one is an interrupted backup, never restored nor counted.

A backup holds every secret the stores hold (the MLflow auth database's password hashes, run tags,
Postgres rows): each backup directory is created 0700 before anything is written into it, and every
file and directory in it ends 0600/0700, whatever the umask.
"""

from __future__ import annotations

import os
import platform
import shutil
import sqlite3
import stat
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from mlgraph.core.atomic import atomic_write_json
from mlgraph.core.hashing import sha256_file
from mlgraph.core.retry import Retry
from mlgraph.ops.stores import Places, Store, StoreConfigError, discover, libpq_target, postgres_url

BACKUP_DIR_ENV = "MLGRAPH_BACKUP_DIR"
MANIFEST = "manifest.json"
DEFAULT_KEEP = 7
PREFIX = "mlgraph-"
FORMAT_VERSION = 1
SQLITE_TIMEOUT_SECONDS = 30.0
DUCKDB_LOCK_ATTEMPTS = 5
DUCKDB_LOCK_WAIT_SECONDS = 1.0
PG_TIMEOUT_SECONDS = 1800
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class BackupError(RuntimeError):
    """A backup or restore that cannot proceed; the message names the store and the fix."""


def default_backup_root() -> Path:
    return Path(os.environ.get(BACKUP_DIR_ENV) or Path.home() / "mlgraph-backups").expanduser().resolve()


def create_private(path: Path, mode: int = PRIVATE_FILE) -> None:
    """Create `path` as an empty file with exactly `mode`, so its content is never readable by others,
    not even for the moment before a chmod (SQLite gives its journal the database file's mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; it cannot add any
    finally:
        os.close(fd)


def sqlite_copy(source: Path, target: Path, mode: int = PRIVATE_FILE) -> None:
    """Copy a (possibly live) SQLite database with the backup API, in one step, and quick_check the copy.

    `target` must not exist; it is created with `mode`."""
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=SQLITE_TIMEOUT_SECONDS)
    try:
        create_private(target, mode)
        dst = sqlite3.connect(target)
        try:
            # pages=-1 (the default): everything under one read lock, so the copy is a single committed
            # state; a stepwise copy restarts whenever a writer commits and might never finish.
            src.backup(dst)
            verdict = dst.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            dst.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(
            f"{source}: {exc}. Fix: run `mlgraph doctor`; restore this store from an older backup if it is corrupt"
        ) from None
    finally:
        src.close()
    if verdict != "ok":
        raise BackupError(f"{source}: the copy fails quick_check ({verdict})")


def duckdb_connect(path: Path, read_only: bool):
    """A DuckDB connection, waiting a bounded time for a writer that holds the file's lock."""
    import duckdb

    def locked(exc: BaseException) -> bool:
        return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()

    # A fixed wait between bounded retries (backoff, not synchronization).
    policy = Retry(attempts=DUCKDB_LOCK_ATTEMPTS, delay=DUCKDB_LOCK_WAIT_SECONDS, factor=1, transient=locked)
    try:
        return policy.call(duckdb.connect, str(path), read_only=read_only)
    except duckdb.IOException as exc:
        if not locked(exc):
            raise BackupError(f"{path}: DuckDB cannot open it ({exc})") from None
        raise BackupError(
            f"{path} is locked by a writer (still after {DUCKDB_LOCK_ATTEMPTS} tries): "
            f"{str(exc).splitlines()[0]}. Fix: retry once the run writing the warehouse "
            "has finished"
        ) from None


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def duckdb_export(source: Path, target_dir: Path) -> None:
    con = duckdb_connect(source, read_only=True)
    try:
        con.execute(f"EXPORT DATABASE {sql_literal(str(target_dir))} (FORMAT PARQUET)")
    finally:
        con.close()


def run_pg_tool(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """A PostgreSQL client tool (pg_dump, pg_restore): the password in its environment, never its argv."""
    return subprocess.run(
        argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=PG_TIMEOUT_SECONDS, check=False
    )


def postgres_target() -> tuple[str, dict[str, str]]:
    """libpq_target of $MLGRAPH_POSTGRES_URL, its refusal a BackupError (one line, no secret)."""
    try:
        return libpq_target(postgres_url() or "")
    except StoreConfigError as exc:
        raise BackupError(str(exc)) from None


def pg_dump(target: Path) -> None:
    url, env = postgres_target()
    if shutil.which("pg_dump") is None:
        raise BackupError(
            "MLGRAPH_POSTGRES_URL is set but pg_dump is not on PATH. Fix: install the "
            "PostgreSQL client (e.g. apt-get install postgresql-client)"
        )
    done = run_pg_tool(["pg_dump", "--format=custom", "--no-password", f"--file={target}", f"--dbname={url}"], env)
    if done.returncode != 0:
        raise BackupError(f"pg_dump failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")


def _versions(stores: list[Store]) -> dict[str, str]:
    versions = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for dist in ("mlgraph", "dagster", "mlflow", "duckdb"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if any(s.kind == "postgres" for s in stores):
        versions["pg_dump"] = subprocess.run(
            ["pg_dump", "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    return versions


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _new_backup_dir(root: Path, now: datetime) -> Path:
    stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
    path = root / f"{PREFIX}{stamp}"
    # A root created here is private too; an existing one keeps the mode its owner gave it.
    root.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    path.mkdir(mode=PRIVATE_DIR, exist_ok=False)
    os.chmod(path, PRIVATE_DIR)
    return path


def make_private(top: Path) -> None:
    """Every directory under `top` (itself included) 0700, every file 0600; links are left alone."""
    for directory, _dirs, files in os.walk(top):
        os.chmod(directory, PRIVATE_DIR, follow_symlinks=False)
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, PRIVATE_FILE)


def _store_path(store: Store) -> str:
    if store.kind == "duckdb":
        return f"{store.name}.export"
    if store.kind == "postgres":
        return "postgres.dump"
    return store.name


def create_backup(
    places: Places, root: Path | None = None, keep: int = DEFAULT_KEEP, now: datetime | None = None
) -> Path:
    """Back up every store and config/ into a new dated directory under `root`; prune to the last `keep`."""
    if keep < 1:
        raise BackupError(f"--keep {keep}: keep at least 1 backup")
    root = (root or default_backup_root()).expanduser().resolve()
    drive = places.drive.root_path.resolve()
    if _inside(root, drive):
        raise BackupError(
            f"backup target {root} is inside the shared drive {drive}: a backup must survive the "
            f"drive. Fix: pass --to a directory elsewhere (or set ${BACKUP_DIR_ENV})"
        )
    stores = discover(places)
    dest = _new_backup_dir(root, now or datetime.now(UTC))
    try:
        entries = []
        for store in stores:
            relative = _store_path(store)
            target = dest / relative
            target.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
            if store.kind == "sqlite":
                sqlite_copy(store.path, target)
            elif store.kind == "duckdb":
                duckdb_export(store.path, target)
            else:
                pg_dump(target)
            entries.append(
                {
                    "name": store.name,
                    "kind": store.kind,
                    "path": relative,
                    "source": str(store.path) if store.path else "$MLGRAPH_POSTGRES_URL",
                    # Restore gives a store that is gone from the drive the mode it had.
                    **({"mode": oct(stat.S_IMODE(store.path.stat().st_mode))} if store.path else {}),
                }
            )
        if places.config_dir.is_dir():
            shutil.copytree(places.config_dir, dest / "config", symlinks=False)
        make_private(dest)
        files = {
            p.relative_to(dest).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
            for p in sorted(dest.rglob("*"))
            if p.is_file()
        }
        atomic_write_json(
            dest / MANIFEST,
            {
                "format": FORMAT_VERSION,
                "created": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
                "drive": str(drive),
                "dagster_home": str(places.dagster_home),
                "config_dir": str(places.config_dir),
                "stores": entries,
                "files": files,
                "versions": _versions(stores),
            },
            mode=PRIVATE_FILE,
        )
    except BaseException:
        # Nothing half-made is left to look like a backup (it would have no manifest anyway).
        shutil.rmtree(dest, ignore_errors=True)
        raise
    prune(root, keep)
    return dest


def complete_backups(root: Path) -> list[Path]:
    """Backups with a manifest, oldest first (directory names sort by time)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / MANIFEST).is_file())


def prune(root: Path, keep: int) -> list[Path]:
    """Keep the newest `keep` complete backups; drop older ones and interrupted ones older than the newest."""
    complete = complete_backups(root)
    doomed = complete[:-keep]
    if complete:
        newest = complete[-1].name
        doomed += [
            p
            for p in root.iterdir()
            if p.is_dir() and p.name.startswith(PREFIX) and not (p / MANIFEST).exists() and p.name < newest
        ]
    for path in doomed:
        shutil.rmtree(path)
    return doomed
