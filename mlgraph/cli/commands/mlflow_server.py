"""`mlgraph mlflow-server`: the MLflow tracking server with basic auth (mlgraph/ops/mlflow_server.py)."""

from __future__ import annotations

import argparse
import sys

from mlgraph.core.drive import POSTGRES_URL_ENV
from mlgraph.ops import mlflow_server


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mlflow-server",
        help="run the MLflow tracking server with basic auth (admin from MLFLOW_TRACKING_USERNAME/PASSWORD)",
        description=(
            "Run `mlflow server --app-name basic-auth` in the foreground. The admin user is created at the "
            f"first start from ${mlflow_server.USERNAME_ENV} / ${mlflow_server.PASSWORD_ENV}; tracking store "
            f"from ${mlflow_server.BACKEND_URI_ENV}, else the `mlflow` database of "
            f"${POSTGRES_URL_ENV}, else SQLite on the shared drive; artifacts under "
            "$SHARED_DRIVE/mlflow-artifacts."
        ),
    )
    parser.add_argument(
        "--host",
        default=mlflow_server.DEFAULT_HOST,
        help="address to bind (default 127.0.0.1; anything else: put a TLS proxy in front)",
    )
    parser.add_argument("--port", type=int, default=mlflow_server.DEFAULT_PORT, help="TCP port (default 5000)")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    parser.add_argument(
        "--default-permission",
        default=mlflow_server.DEFAULT_PERMISSION,
        choices=mlflow_server.PERMISSIONS,
        help="what authenticated non-admin users may do on experiments not granted to them",
    )
    parser.add_argument(
        "--allowed-hosts",
        default=None,
        help="Host headers MLflow accepts, e.g. 'mlflow.example.org,10.0.0.5:5000' (default: localhost only)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        plan = mlflow_server.plan(
            args.host,
            args.port,
            args.workers,
            default_permission=args.default_permission,
            allowed_hosts=args.allowed_hosts,
        )
        return mlflow_server.serve(plan, echo=lambda line: print(line, flush=True))
    except mlflow_server.MlflowServerError as exc:
        print(f"mlgraph mlflow-server: {exc}", file=sys.stderr)
        return 2
