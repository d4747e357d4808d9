"""`mlgraph serve --experiment X`: the model service (FastAPI on uvicorn; see docs/serving.md)."""

from __future__ import annotations

import argparse
import sys

from mlgraph.serving.log_writer import DEFAULT_MAX_BYTES
from mlgraph.serving.settings import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ROWS, ServeSettings


def cmd_serve(args: argparse.Namespace) -> int:
    from mlgraph.serving.server import serve

    settings = ServeSettings(
        experiment=args.experiment,
        host=args.host,
        port=args.port,
        drive_root=args.drive,
        config_dir=args.config_dir,
        max_body_bytes=args.max_body_bytes,
        max_rows=args.max_rows,
        log_predictions=not args.no_prediction_log,
        log_max_bytes=args.log_max_bytes,
        poll_interval=args.poll_interval,
    )
    try:
        return serve(settings)
    except (FileNotFoundError, ValueError) as exc:  # a missing split or bad config: say which and how to fix
        print(f"mlgraph serve: {exc}", file=sys.stderr)
        return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve an experiment's champion over HTTP (FastAPI + uvicorn)")
    p.add_argument("--experiment", required=True, help="experiment name (config/experiments/<name>.yaml)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--drive", default=None, help="shared drive root (default $SHARED_DRIVE)")
    p.add_argument("--config-dir", default=None, help="config directory (default $MLGRAPH_CONFIG_DIR or config/)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger bodies get 413")
    p.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, help="larger batches get 413")
    p.add_argument(
        "--log-max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help="rotate the prediction log past this size (default 64 MiB)",
    )
    p.add_argument("--no-prediction-log", action="store_true", help="do not log predictions")
    p.add_argument("--poll-interval", type=float, default=1.0, help="seconds between promotion-pointer checks")
    p.set_defaults(func=cmd_serve)
