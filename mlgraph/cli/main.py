"""`mlgraph`: one entry point; each subcommand lives in mlgraph/cli/commands/<name>.py."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module defines `register(subparsers)`, adding parsers whose `func(args) -> int` runs the command.
COMMAND_MODULES = [
    "mlgraph.cli.commands.project",
    "mlgraph.cli.commands.verify",
    "mlgraph.cli.commands.signal",
    "mlgraph.cli.commands.training",
    "mlgraph.cli.commands.serve",
    "mlgraph.cli.commands.replay",
    "mlgraph.cli.commands.mlflow_server",
    "mlgraph.cli.commands.dashboard",
    "mlgraph.cli.commands.operations",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlgraph", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from mlgraph.core.tracking import TrackingServerError
    from mlgraph.core.untrusted import Unusable

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TrackingServerError as exc:  # a dead or refusing MLflow server: its message names the URI and the fix
        print(f"mlgraph {args.command}: {exc}", file=sys.stderr)
        return 2
    except Unusable as exc:  # a file on the drive that is not what it should be (a FIFO, a link out): named
        print(f"mlgraph {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
