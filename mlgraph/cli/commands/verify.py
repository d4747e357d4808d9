"""`mlgraph verify PATH`: recompute the hashes a manifest records and name what differs."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from mlgraph.core.drive import LINEAGE_JSON, RUN_MANIFEST_JSON

# manifest file name (as the drive layout names it) → "module:function" taking the path and returning a
# list of differences; imported only for the manifest at hand.
VERIFIERS = {
    RUN_MANIFEST_JSON: "mlgraph.analysis.manifest:verify_manifest",
    LINEAGE_JSON: "mlgraph.training.lineage:verify_lineage",
}


def verify(path: Path) -> list[str]:
    target = VERIFIERS.get(path.name)
    if target is None:
        raise ValueError(f"{path}: unknown manifest; expected one of {', '.join(VERIFIERS)}")
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(path)


def cmd_verify(args: argparse.Namespace) -> int:
    status = 0
    for raw in args.paths:
        path = Path(raw)
        try:
            differences = verify(path)
        except (OSError, ValueError) as exc:
            print(f"{path}: cannot verify: {exc}", file=sys.stderr)
            status = 2
            continue
        if differences:
            status = max(status, 1)
            print(f"{path}: {len(differences)} difference(s)")
            for line in differences:
                print(f"  - {line}")
        else:
            print(f"{path}: OK")
    return status


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify", help=f"check a {RUN_MANIFEST_JSON} or {LINEAGE_JSON} against the files it names"
    )
    p.add_argument("paths", nargs="+", help="manifest file(s)")
    p.set_defaults(func=cmd_verify)
