"""`mlgraph serve --experiment X`: the model service (FastAPI on uvicorn; see docs/serving.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from mlgraph.core.prediction_log import DEFAULT_RETENTION_BYTES, DEFAULT_RETENTION_DAYS
from mlgraph.serving.log_writer import DEFAULT_MAX_BYTES, DEFAULT_MAX_PENDING_ROWS
from mlgraph.serving.settings import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_MAX_STRING_LENGTH,
    ServeSettings,
)


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
        max_string_length=args.max_string_length,
        log_predictions=not args.no_prediction_log,
        log_path=args.prediction_log_path,
        log_max_bytes=args.log_max_bytes,
        log_max_pending_rows=args.log_max_pending_rows,
        log_retention_bytes=args.log_retention_bytes or None,
        log_retention_days=args.log_retention_days or None,
        poll_interval=args.poll_interval,
        max_batch_rows=args.max_batch_rows,
        release_hold=not args.no_release_hold,
    )
    try:
        return serve(settings)
    except (FileNotFoundError, ValueError) as exc:  # a missing split or bad config: say which and how to fix
        print(f"mlgraph serve: {exc}", file=sys.stderr)
        return 2


def _whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not at least {minimum}")
        return value

    return parse


_positive, _non_negative = _whole_number(1), _whole_number(0)


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
        "--max-string-length",
        type=_positive,
        default=DEFAULT_MAX_STRING_LENGTH,
        help=f"longer string (categorical) features get 422 (default {DEFAULT_MAX_STRING_LENGTH} characters)",
    )
    p.add_argument(
        "--log-max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help="rotate the prediction log past this size (default 64 MiB)",
    )
    p.add_argument(
        "--log-max-pending-rows",
        type=_positive,
        default=DEFAULT_MAX_PENDING_ROWS,
        help=f"rows waiting for the log writer; past it predictions get 503 (default {DEFAULT_MAX_PENDING_ROWS:,})",
    )
    p.add_argument(
        "--log-retention-bytes",
        type=_non_negative,
        default=DEFAULT_RETENTION_BYTES,
        help=f"keep at most this many bytes of rotated logs, newest first; 0: no limit (default {DEFAULT_RETENTION_BYTES})",
    )
    p.add_argument(
        "--log-retention-days",
        type=float,
        default=DEFAULT_RETENTION_DAYS,
        help=f"delete rotated logs older than this; 0: keep them (default {DEFAULT_RETENTION_DAYS:g})",
    )
    p.add_argument("--no-prediction-log", action="store_true", help="do not log predictions")
    p.add_argument(
        "--prediction-log-path",
        default=None,
        help="write the prediction log to this file on the drive instead of serving/<experiment>/ "
        "(serving_capacity measures with the log on, away from the log drift reads)",
    )
    p.add_argument("--poll-interval", type=float, default=1.0, help="seconds between promotion-pointer checks")
    p.add_argument(
        "--max-batch-rows",
        type=_positive,
        default=None,
        help="rows one batched model call may hold (default: as many as the model predicts within 0.5 ms, "
        "measured at load); 1 predicts every request alone",
    )
    p.add_argument(
        "--no-release-hold",
        action="store_true",
        help="serve the champion even if its serving-capacity gate failed (what serving_capacity measures with)",
    )
    p.set_defaults(func=cmd_serve)
