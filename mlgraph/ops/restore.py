"""`mlgraph restore`: put a verified backup back, one store at a time, each replaced atomically.

Every file's sha256 is checked against the manifest before anything is touched. Each store is first
rebuilt beside its live file (a temporary name in the same directory), then renamed over it; the
replaced file (and its -wal/-shm/-journal) is kept as `*.pre-restore`. PostgreSQL is restored by
`pg_restore --clean --single-transaction`: all or nothing. config/ is not overwritten (it is under
version control); the backup's copy is there to compare with.

A restored store keeps the mode of the file it replaces (the MLflow auth database's password hashes
stay as private as they were); a store that is gone gets the mode the backup's manifest recorded, else
0600. It is rebuilt inside a private (0700) directory, so no other user can read it before then.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlgraph.core.hashing import sha256_file
from mlgraph.ops.backup import (
    MANIFEST,
    PRIVATE_FILE,
    BackupError,
    complete_backups,
    duckdb_connect,
    postgres_target,
    run_pg_tool,
    sql_literal,
    sqlite_copy,
)
from mlgraph.ops.stores import PRE_RESTORE, Places, postgres_url

SIDE_FILES = ("-wal", "-shm", "-journal", ".wal")


def latest_backup(root: Path) -> Path:
    backups = complete_backups(root)
    if not backups:
        raise BackupError(
            f"no complete backup (a directory with {MANIFEST}) under {root}. Fix: run `mlgraph "
            "backup` first, or pass the backup directory"
        )
    return backups[-1]


def load_manifest(backup: Path) -> dict:
    path = backup / MANIFEST
    if not path.is_file():
        raise BackupError(
            f"{backup} has no {MANIFEST}: the backup is incomplete (interrupted) and is not used. "
            "Fix: pick a complete backup"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["stores"], manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{path} is not a backup manifest ({exc})") from None
    return manifest


def verify(backup: Path, manifest: dict) -> list[str]:
    """What differs from the manifest (missing files, sizes, hashes); empty when the backup is intact."""
    problems = []
    for relative, expected in manifest["files"].items():
        path = backup / relative
        if not path.is_file():
            problems.append(f"{relative}: missing")
        elif path.stat().st_size != expected["size"] or sha256_file(path) != expected["sha256"]:
            problems.append(f"{relative}: content differs from the manifest (sha256 {expected['sha256'][:12]}…)")
    return problems


def _swap(tmp: Path, target: Path) -> None:
    """Rename `tmp` over `target`, keeping the old file and its side files as *.pre-restore."""
    if target.exists():
        aside = target.with_name(target.name + PRE_RESTORE)
        aside.unlink(missing_ok=True)
        try:
            os.link(target, aside)
        except OSError:
            shutil.copy2(target, aside)
    for suffix in SIDE_FILES:
        side = target.with_name(target.name + suffix)
        if side.exists():
            # A WAL left from the replaced database would be replayed into the restored one.
            os.replace(side, side.with_name(side.name + PRE_RESTORE))
    os.replace(tmp, target)


def store_mode(target: Path, recorded: object) -> int:
    """The live file's mode, else the one the manifest recorded ("0o640"), else 0600."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        pass
    try:
        mode = int(str(recorded), 8) if recorded is not None else PRIVATE_FILE
    except ValueError:
        return PRIVATE_FILE
    return mode if 0 <= mode <= 0o777 else PRIVATE_FILE


@contextlib.contextmanager
def _staged(target: Path, mode: int) -> Iterator[Path]:
    """A path in a private (0700) directory beside `target` to build the store at; once built, it is
    given `mode` and renamed over `target`. The directory goes in any case."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))
    try:
        tmp = staging / target.name
        yield tmp
        os.chmod(tmp, mode)
        _swap(tmp, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _restore_sqlite(source: Path, target: Path, mode: int) -> None:
    with _staged(target, mode) as tmp:
        sqlite_copy(source, tmp, mode=mode)


def _restore_duckdb(export_dir: Path, target: Path, mode: int) -> None:
    with _staged(target, mode) as tmp:
        con = duckdb_connect(tmp, read_only=False)
        try:
            con.execute(f"IMPORT DATABASE {sql_literal(str(export_dir))}")
            con.execute("CHECKPOINT")
        finally:
            con.close()


def _restore_postgres(dump: Path) -> None:
    url = postgres_url()
    if not url:
        raise BackupError(
            "the backup holds a PostgreSQL dump but MLGRAPH_POSTGRES_URL is not set. Fix: set it "
            "to the database to restore into"
        )
    libpq_url, env = postgres_target()
    done = run_pg_tool(
        [
            "pg_restore",
            "--clean",
            "--if-exists",
            "--no-owner",
            "--single-transaction",
            "--no-password",
            f"--dbname={libpq_url}",
            str(dump),
        ],
        env,
    )
    if done.returncode != 0:
        raise BackupError(
            f"pg_restore failed (exit {done.returncode}); nothing was changed: {done.stderr.strip()[-500:]}"
        )


def restore_backup(places: Places, backup: Path) -> list[str]:
    """Verify `backup`, then restore each of its stores; one line per store restored."""
    manifest = load_manifest(backup)
    problems = verify(backup, manifest)
    if problems:
        raise BackupError(f"{backup} does not match its manifest; nothing restored:\n  " + "\n  ".join(problems))
    done = []
    for store in manifest["stores"]:
        source = backup / store["path"]
        if store["kind"] == "sqlite":
            target = places.target(store["name"])
            _restore_sqlite(source, target, store_mode(target, store.get("mode")))
        elif store["kind"] == "duckdb":
            target = places.target(store["name"])
            _restore_duckdb(source, target, store_mode(target, store.get("mode")))
        elif store["kind"] == "postgres":
            _restore_postgres(source)
            target = "$MLGRAPH_POSTGRES_URL"
        else:
            raise BackupError(f"{backup / MANIFEST}: unknown store kind {store['kind']!r}")
        done.append(f"restored {store['kind']} {store['name']} → {target}")
    return done
