"""Operations commands: backup, restore, doctor, alerts (the plain-Python work is in operations/).

The Dagster instance is touched here only, to read the daemon's heartbeat.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlgraph.core.drive import DriveLayout


def _places(args: argparse.Namespace):
    from mlgraph.core.catalog import ConfigCatalog
    from mlgraph.ops.stores import Places

    drive = DriveLayout.at(getattr(args, "drive", None))
    return Places.resolve(drive, ConfigCatalog().root, getattr(args, "dagster_home", None))


def latest_heartbeat(home: Path) -> tuple[float | None, str | None]:
    """(newest daemon heartbeat as epoch seconds or None, error reading it or None)."""
    if not (home / "dagster.yaml").exists() and not (home / "history" / "runs.db").exists():
        return None, None  # no instance here yet; opening one would create its storage
    try:
        import dagster as dg

        with dg.DagsterInstance.from_config(str(home)) as instance:
            beats = instance.get_daemon_heartbeats()
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return (max((beat.timestamp for beat in beats.values()), default=None)), None


def backup_cmd(args: argparse.Namespace) -> int:
    from mlgraph.ops.backup import BackupError, create_backup

    try:
        dest = create_backup(_places(args), Path(args.to) if args.to else None, keep=args.keep)
    except BackupError as exc:
        print(f"mlgraph backup: {exc}", file=sys.stderr)
        return 1
    manifest = json.loads((dest / "manifest.json").read_text())
    print(f"backup complete: {dest} ({len(manifest['stores'])} stores, {len(manifest['files'])} files)")
    return 0


def restore_cmd(args: argparse.Namespace) -> int:
    from mlgraph.ops.alerts import heartbeat_condition
    from mlgraph.ops.backup import BackupError, default_backup_root
    from mlgraph.ops.restore import latest_backup, restore_backup

    places = _places(args)
    try:
        if args.backup:
            backup = Path(args.backup).expanduser().resolve()
        elif args.latest:
            backup = latest_backup(Path(args.root).expanduser().resolve() if args.root else default_backup_root())
        else:
            print("mlgraph restore: name a BACKUP_DIR or pass --latest", file=sys.stderr)
            return 2
        if not args.force:
            beat, error = latest_heartbeat(places.dagster_home)
            if error:
                print(
                    f"mlgraph restore: cannot read the daemon's heartbeat ({error}); make sure dagster-daemon "
                    "is stopped, then rerun with --force",
                    file=sys.stderr,
                )
                return 1
            if heartbeat_condition(beat).status == "ok":
                print(
                    "mlgraph restore: the daemon is running (fresh heartbeat); stop dagster-daemon (and the "
                    "webserver) first, or pass --force",
                    file=sys.stderr,
                )
                return 1
        for line in restore_backup(places, backup):
            print(line)
    except BackupError as exc:
        print(f"mlgraph restore: {exc}", file=sys.stderr)
        return 1
    print(
        f"restored from {backup}; replaced files kept as *.pre-restore; config/ left as is "
        f"(the backup's copy: {backup / 'config'})"
    )
    return 0


def doctor_cmd(args: argparse.Namespace) -> int:
    from mlgraph.ops.doctor import format_line, run_checks

    places = _places(args)
    beat, error = latest_heartbeat(places.dagster_home)
    failed = 0
    for name, condition in run_checks(places, beat, error, vacuum=args.vacuum):
        print(format_line(name, condition), flush=True)
        failed += condition.failed
    print(f"mlgraph doctor: {failed} check(s) failed" if failed else "mlgraph doctor: all checks passed")
    return 1 if failed else 0


def alerts_check_cmd(args: argparse.Namespace) -> int:
    from mlgraph.ops import alerts
    from mlgraph.ops.doctor import format_line

    places = _places(args)
    beat, error = latest_heartbeat(places.dagster_home)
    if error:
        heartbeat = alerts.Condition("fail", f"cannot read the daemon's heartbeat: {error}")
        alerts.raise_alert(places.drive, alerts.HEARTBEAT_STALE, alerts.HEARTBEAT_STALE, heartbeat.message, "critical")
    else:
        heartbeat = alerts.check_heartbeat(places.drive, beat)
    print(format_line("daemon heartbeat", heartbeat))
    print(format_line("disk space", alerts.check_disk(places.drive)))
    return 0  # a finding is an alert, not a failed cron job


def alerts_list_cmd(args: argparse.Namespace) -> int:
    from mlgraph.ops.alerts import read_open_alerts

    open_alerts = read_open_alerts(DriveLayout.at(args.drive))
    for record in open_alerts:
        print(
            json.dumps(record, sort_keys=True)
            if args.json
            else f"{record['time']} {record['severity']:<8} {record['kind']}: {record['message']}"
        )
    if not open_alerts and not args.json:
        print("no open alerts")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--drive", help="shared drive root (default: $SHARED_DRIVE)")
    parser.add_argument(
        "--dagster-home", help="instance directory (default: $DAGSTER_HOME, else <drive>/state/dagster)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("backup", help="online, consistent copy of every store + config/ outside the drive")
    _common(p)
    p.add_argument("--to", help="backup root (default: $MLGRAPH_BACKUP_DIR, else ~/mlgraph-backups)")
    p.add_argument("--keep", type=int, default=7, help="complete backups to keep (default 7)")
    p.set_defaults(func=backup_cmd)

    p = subparsers.add_parser("restore", help="restore every store from a verified backup")
    _common(p)
    p.add_argument("backup", nargs="?", help="a backup directory (mlgraph-<time>/)")
    p.add_argument("--latest", action="store_true", help="the newest complete backup under --root")
    p.add_argument("--root", help="backup root for --latest (default: $MLGRAPH_BACKUP_DIR, else ~/mlgraph-backups)")
    p.add_argument("--force", action="store_true", help="restore even though the daemon's heartbeat is fresh")
    p.set_defaults(func=restore_cmd)

    p = subparsers.add_parser("doctor", help="integrity of every store, disk, daemon, Slurm, MLflow: one line each")
    _common(p)
    p.add_argument("--vacuum", action="store_true", help="VACUUM each intact SQLite database")
    p.set_defaults(func=doctor_cmd)

    p = subparsers.add_parser("alerts", help="alert checks run outside the daemon; open alerts")
    sub = p.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    c = sub.add_parser("check", help="one pass of the heartbeat and disk checks (cron: every minute); exit 0")
    _common(c)
    c.set_defaults(func=alerts_check_cmd)
    c = sub.add_parser("list", help="open alerts, newest first")
    c.add_argument("--drive", help="shared drive root (default: $SHARED_DRIVE)")
    c.add_argument("--json", action="store_true", help="one JSON record per line")
    c.set_defaults(func=alerts_list_cmd)
