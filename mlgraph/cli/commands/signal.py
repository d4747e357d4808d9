"""`mlgraph signal training-complete ...` (the completion hook from a shell) and `mlgraph signal check FILE`."""

import argparse
import json
import sys

from mlgraph.core.drive import EVAL_COMPLETE, TRAINING_COMPLETE


def _metric(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE, e.g. val_rmse=0.31")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None


def cmd_training_complete(args: argparse.Namespace) -> int:
    import logging

    from mlgraph.trainer import signal_training_complete

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = signal_training_complete(
        args.experiment,
        args.checkpoint,
        config_path=args.config_path,
        num_epochs=args.num_epochs,
        final_loss=args.final_loss,
        total_steps=args.total_steps,
        git_commit=args.git_commit,
        metrics=dict(args.metric) if args.metric else None,
        hostname=args.hostname,
        user=args.user,
        shared_drive=args.shared_drive,
        mlflow=args.mlflow,
        retries=args.retries,
    )
    if not result:
        print(f"signal not written: {result.error}", file=sys.stderr)
        return 1
    print(result.signal_path)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from mlgraph.core.signals import SignalError, read_signal

    status = 0
    for path in args.paths:
        try:
            signal, _ = read_signal(path)
        except SignalError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        print(f"{path}: OK {type(signal).__name__} " + json.dumps(signal.model_dump(mode="json", exclude_none=True)))
    return status


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("signal", help=f"write or check signal files ({TRAINING_COMPLETE}, {EVAL_COMPLETE})")
    sub = p.add_subparsers(dest="signal_command", required=True, metavar="SIGNAL")

    t = sub.add_parser("training-complete", help=f"write models/{{experiment}}/{TRAINING_COMPLETE} atomically")
    t.add_argument("--experiment", required=True)
    t.add_argument("--checkpoint", required=True, help="checkpoint directory on the shared drive")
    t.add_argument("--config-path")
    t.add_argument("--num-epochs", type=int)
    t.add_argument("--final-loss", type=float)
    t.add_argument("--total-steps", type=int)
    t.add_argument("--git-commit", help="default: git rev-parse HEAD of the current directory, if any")
    t.add_argument("--metric", type=_metric, action="append", metavar="NAME=VALUE", help="repeatable")
    t.add_argument("--hostname")
    t.add_argument("--user")
    t.add_argument("--shared-drive", help="default: $SHARED_DRIVE")
    t.add_argument(
        "--mlflow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log final metrics to MLflow (default: when MLFLOW_TRACKING_URI is set)",
    )
    t.add_argument("--retries", type=int, default=4, help="retries of transient I/O errors (exponential backoff)")
    t.set_defaults(func=cmd_training_complete)

    c = sub.add_parser("check", help="validate signal files the way the sensors do")
    c.add_argument("paths", nargs="+")
    c.set_defaults(func=cmd_check)
