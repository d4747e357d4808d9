"""Project commands: init (instance home), register (experiment partitions), generate, demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlgraph.core.drive import (
    DAGSTER_HOME_ENV,
    POSTGRES_URL_ENV,
    PROJECT_ROOT,
    default_shared_drive,
    resolve_dagster_home,
)

DEMO_EXPERIMENTS = ["salary", "student_engagement", "demand_forecast"]


def init_home() -> Path:
    """Create DAGSTER_HOME with a link to the project's instance file; export it for this process.

    dagster.yaml (SQLite under DAGSTER_HOME) by default; deploy/dagster.postgres.yaml when
    MLGRAPH_POSTGRES_URL is set, which that file reads from the environment (never copied here).
    """
    home = resolve_dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    link = home / "dagster.yaml"
    postgres = bool(os.environ.get(POSTGRES_URL_ENV))
    source = PROJECT_ROOT / ("deploy/dagster.postgres.yaml" if postgres else "dagster.yaml")
    if not link.exists() and not link.is_symlink():
        link.symlink_to(source)
    elif link.is_symlink() and link.resolve() != source.resolve():
        link.unlink()
        link.symlink_to(source)
    os.environ[DAGSTER_HOME_ENV] = str(home)
    os.environ.setdefault("SHARED_DRIVE", str(default_shared_drive()))
    return home


def register_experiments(instance, names: list[str]) -> list[str]:
    """Add experiment partitions that the instance does not know yet; return the added names."""
    from pipeline_assets.partitions import experiment_partitions_def

    known = set(instance.get_dynamic_partitions(experiment_partitions_def.name))
    new = [n for n in names if n not in known]
    if new:
        instance.add_dynamic_partitions(experiment_partitions_def.name, new)
    return new


def _validated_names(names: list[str] | None) -> list[str]:
    from mlgraph.core.catalog import ConfigCatalog

    catalog = ConfigCatalog()
    chosen = names or catalog.names()
    for name in chosen:
        catalog.load(name)  # raises ConfigError naming the file and field
    return chosen


def cmd_init(args: argparse.Namespace) -> int:
    home = init_home()
    print(f"DAGSTER_HOME={home}")
    print(f"SHARED_DRIVE={default_shared_drive()}")
    return cmd_register(argparse.Namespace(experiments=None))


def cmd_register(args: argparse.Namespace) -> int:
    import dagster as dg

    from mlgraph.core.experiment import ConfigError

    init_home()
    try:
        names = _validated_names(args.experiments)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    with dg.DagsterInstance.get() as instance:
        added = register_experiments(instance, names)
    print(f"experiments registered: {', '.join(names)}" + (f" (new: {', '.join(added)})" if added else ""))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from mlgraph.data.generators import write_dataset

    path = write_dataset(args.generator, args.out, rows=args.rows, seed=args.seed)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")
    return 0


def demo_log_path() -> Path:
    """Where one `mlgraph demo` writes Dagster's event log: `$SHARED_DRIVE/logs/demo/<UTC timestamp>.log`."""
    from datetime import UTC, datetime

    from mlgraph.core.drive import DriveLayout

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return DriveLayout(default_shared_drive()).logs_root() / "demo" / f"{stamp}.log"


def cmd_demo(args: argparse.Namespace) -> int:
    import dagster as dg

    from mlgraph.cli.progress import Progress
    from mlgraph.cli.staging import materialize_experiments
    from mlgraph.core.experiment import ConfigError
    from pipeline_assets.definitions import defs

    home = init_home()
    try:
        experiments = _validated_names(args.experiments or DEMO_EXPERIMENTS)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    selection = None
    if args.select:
        selection = [dg.AssetKey.from_user_string(k.strip()) for k in args.select.split(",") if k.strip()]
        unknown = [k.to_user_string() for k in selection if not defs.resolve_asset_graph().has(k)]
        if unknown:
            print(f"--select: no asset named {', '.join(unknown)}", file=sys.stderr)
            return 2
    print(f"mlgraph demo: experiments {', '.join(experiments)}; DAGSTER_HOME={home}")
    quiet = {}
    log_path = None
    if not args.verbose:
        log_path = demo_log_path()
        # MLflow's INFO lines (creating its tables) would interleave with the progress too.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        quiet = {"event_log": log_path, "progress": Progress()}
        print(f"Dagster event log: {log_path} (`mlgraph demo --verbose` prints it here)", flush=True)
    with dg.DagsterInstance.get() as instance:
        try:
            summary = materialize_experiments(defs, instance, experiments, selection=selection, **quiet)
        except ConfigError as exc:  # e.g. a dataset file named by a YAML is missing
            print(exc, file=sys.stderr)
            return 2
    drive = default_shared_drive()
    print("\n== summary ==")
    print(f"runs: {summary.runs} ({len(summary.failed)} failed) in {summary.seconds:.1f}s")
    print(f"assets ({len(summary.assets)}): {', '.join(sorted(summary.assets))}")
    print(f"partitions: {len(summary.partitions)} across experiments {', '.join(experiments)}")
    print(f"outputs under {drive}:")
    for sub in ("datasets", "artifacts", "models", "evaluation", "analysis", "model-promotion", "state"):
        if (drive / sub).exists():
            print(f"  {drive / sub}")
    if log_path is not None:
        print(f"Dagster event log: {log_path}")
    print("next: `make ui` (Dagster UI on http://127.0.0.1:3000) and `make mlflow-ui`")
    if summary.failed:
        print(f"FAILED: {', '.join(summary.failed)}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("init", help="create DAGSTER_HOME under the shared drive and register experiments")
    p.set_defaults(func=cmd_init)

    p = subparsers.add_parser("register", help="add experiment partitions for config/experiments/*.yaml")
    p.add_argument("experiments", nargs="*", help="experiment names (default: every YAML file)")
    p.set_defaults(func=cmd_register)

    p = subparsers.add_parser("generate", help="write a demo dataset (any size) as CSV or parquet")
    p.add_argument("generator", choices=DEMO_EXPERIMENTS)
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output file (.csv or .parquet)")
    p.set_defaults(func=cmd_generate)

    p = subparsers.add_parser("demo", help="materialize every asset for the demo experiments and summarize")
    p.add_argument("experiments", nargs="*", help=f"experiments (default: {', '.join(DEMO_EXPERIMENTS)})")
    p.add_argument(
        "--select",
        default=None,
        help="comma-separated assets to materialize (default: every automated asset); their parents must exist",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print Dagster's event log here (every step event) instead of progress bars and a log file",
    )
    p.set_defaults(func=cmd_demo)
