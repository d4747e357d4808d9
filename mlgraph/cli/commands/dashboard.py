"""`mlgraph dashboard`: the read-only job-monitoring page (dashboard/), served by uvicorn."""

from __future__ import annotations

import argparse
import os
import sys

from mlgraph.dashboard.settings import DEFAULT_HOST, DEFAULT_PORT, USERNAME_ENV, DashboardSettings, credentials_from_env


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dashboard",
        help="the job-monitoring web page (runs, Slurm jobs, training signals, alerts), read-only",
        description="Serve the read-only job dashboard. Basic auth when MLGRAPH_DASHBOARD_USERNAME and "
        "MLGRAPH_DASHBOARD_PASSWORD are set. Reads the instance at $DAGSTER_HOME.",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--drive", default=None, help="shared drive root (default $SHARED_DRIVE)")
    p.add_argument(
        "--dagster-url",
        default=os.environ.get("MLGRAPH_DAGSTER_URL", "http://127.0.0.1:3000"),
        help="Dagster UI base URL for run links (default $MLGRAPH_DAGSTER_URL or http://127.0.0.1:3000)",
    )
    p.add_argument(
        "--mlflow-url",
        default=os.environ.get("MLGRAPH_MLFLOW_URL", "http://127.0.0.1:5000"),
        help="MLflow UI base URL for run links (default $MLGRAPH_MLFLOW_URL or http://127.0.0.1:5000)",
    )
    p.add_argument("--refresh-seconds", type=float, default=30.0, help="page table refresh interval (default 30)")
    p.add_argument(
        "--slurm-poll-seconds",
        type=float,
        default=30.0,
        help="Slurm poll interval (default 30; never below 10, whatever is asked)",
    )
    p.add_argument("--slurm-bin-dir", default=None, help="directory with squeue/scontrol/sacct (default: PATH)")
    p.add_argument("--run-limit", type=int, default=5000, help="most recent runs shown (default 5000)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlgraph.core.drive import resolve_dagster_home, resolve_drive_root

    try:
        settings = DashboardSettings(
            drive_root=resolve_drive_root(args.drive),
            dagster_url=args.dagster_url,
            mlflow_url=args.mlflow_url,
            refresh_seconds=args.refresh_seconds,
            slurm_poll_seconds=args.slurm_poll_seconds,
            slurm_bin_dir=args.slurm_bin_dir,
            run_limit=args.run_limit,
            credentials=credentials_from_env(),
        )
    except ValueError as exc:
        print(f"mlgraph dashboard: {exc}", file=sys.stderr)
        return 2
    home = resolve_dagster_home()
    if not (home / "dagster.yaml").exists():
        print(
            f"mlgraph dashboard: {home}/dagster.yaml not found: set DAGSTER_HOME to the instance the daemon uses, "
            "or run `mlgraph init`",
            file=sys.stderr,
        )
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1") and settings.credentials is None:
        print(
            f"mlgraph dashboard: warning: serving on {args.host} without basic auth; set {USERNAME_ENV} and "
            "MLGRAPH_DASHBOARD_PASSWORD (or put it behind an authenticating proxy)",
            file=sys.stderr,
        )

    import dagster as dg
    import uvicorn

    from mlgraph.dashboard.app import create_app

    app = create_app(settings, instance=dg.DagsterInstance.from_config(str(home)))
    print(
        f"mlgraph dashboard on http://{args.host}:{args.port}/ (instance {home}, drive {settings.drive_root})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
