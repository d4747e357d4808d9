"""Training commands: `promote` (show the champion, roll it back) and `compare` (the execution table)."""

from __future__ import annotations

import argparse
import json
import sys


def _experiment(name: str):
    from mlgraph.core.catalog import ConfigCatalog

    return ConfigCatalog().load(name)


def cmd_promote(args: argparse.Namespace) -> int:
    from mlgraph.core.experiment import ConfigError
    from mlgraph.training.promotion import PromotionStore, rollback
    from resources.storage import SharedDrive
    from resources.tracking import MlflowTracking

    try:
        config = _experiment(args.experiment).config
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    storage = SharedDrive()
    store = PromotionStore(storage.promotion_dir(config.config_hash))
    try:
        if args.rollback:
            rolled_back, restored = rollback(store, MlflowTracking().client(), storage.models_dir(config.name))
            print(
                f"{config.name}: rolled back {rolled_back.get('model_name') or rolled_back.get('model_type')} (run {rolled_back.get('run_id')}, "
                f"v{rolled_back.get('model_version')}) → {restored.get('model_name') or restored.get('model_type')} (run {restored.get('run_id')}, "
                f"v{restored.get('model_version')}); alias 'champion' moved"
            )
            return 0
        current = store.current()
    except ValueError as exc:
        print(f"{config.name}: {exc}", file=sys.stderr)
        return 1
    if current is None:
        print(f"{config.name}: no champion promoted for config hash {config.config_hash[:12]}… yet", file=sys.stderr)
        return 1
    print(json.dumps(current, indent=2, sort_keys=True))
    stack = store.stack()
    print(
        f"{len(stack)} promotion(s) in force; `--rollback` restores "
        + (
            f"{stack[-2].get('model_name') or stack[-2].get('model_type')} (run {stack[-2].get('run_id')})"
            if len(stack) > 1
            else "nothing (no previous champion)"
        )
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mlgraph.core.tracking import redact_url, with_retry
    from mlgraph.training.compare import filter_rows, render, resolve_column, run_rows, sort_rows
    from resources.tracking import MlflowTracking

    tracking = MlflowTracking()
    client = tracking.client()
    experiment = with_retry(client.get_experiment_by_name, tracking.experiment_name(args.experiment))
    if experiment is None:
        print(
            f"no MLflow experiment {tracking.experiment_name(args.experiment)!r} at {redact_url(tracking.resolved_tracking_uri)}. "
            "Fix: materialize candidate_models for it first, or check MLFLOW_TRACKING_URI / SHARED_DRIVE.",
            file=sys.stderr,
        )
        return 2
    try:
        if args.sweep:
            from mlgraph.training.compare import sweep_rows

            rows = sweep_rows(client, experiment.experiment_id, args.sweep, args.reduce)
        else:
            rows = run_rows(client, experiment.experiment_id, level=args.level)
    except (KeyError, ValueError) as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return 2
    sort_key, descending = args.sort, args.desc
    if sort_key and sort_key.startswith("-"):
        sort_key, descending = sort_key[1:], True
    try:
        rows = filter_rows(rows, args.filter or [])
        if sort_key:
            rows = sort_rows(rows, sort_key, descending)
        columns = None
        if args.columns:
            from mlgraph.training.compare import columns_of

            available = columns_of(rows)
            columns = [resolve_column(c.strip(), available) for c in args.columns.split(",") if c.strip()]
    except (KeyError, ValueError) as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return 2
    if args.limit:
        rows = rows[: args.limit]
    sys.stdout.write(render(rows, args.format, columns))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("promote", help="show an experiment's champion, or roll back to the previous one")
    p.add_argument("--experiment", required=True)
    p.add_argument(
        "--rollback",
        action="store_true",
        help="restore the previous champion: pointer (current.json), history line, registry alias 'champion'",
    )
    p.set_defaults(func=cmd_promote)

    p = subparsers.add_parser("compare", help="compare an experiment's executions (MLflow runs) in one table")
    p.add_argument("--experiment", required=True)
    p.add_argument(
        "--sort",
        metavar="METRIC",
        help="column to sort by (e.g. test_roc_auc, duration_s; '-X' or --desc for descending)",
    )
    p.add_argument("--desc", action="store_true", help="sort descending")
    p.add_argument(
        "--filter",
        action="append",
        metavar="KEY=VALUE",
        help="keep rows where KEY=VALUE (also !=, >, <, >=, <=); repeatable",
    )
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument(
        "--level",
        choices=("execution", "model", "family"),
        default="execution",
        help="one row per execution (parent run, default) or per trained model spec (child run); "
        "'family' is the old spelling of 'model'",
    )
    p.add_argument(
        "--sweep",
        metavar="NAME",
        help="one row per trial of the model spec NAME's newest sweep (inputs, metrics, list metrics reduced)",
    )
    p.add_argument(
        "--reduce",
        choices=("last", "min", "max", "mean"),
        default="last",
        help="with --sweep: how a per-epoch or per-fold list metric becomes one number (default last)",
    )
    p.add_argument("--columns", help="comma-separated columns to show (default: all; constant params folded in tables)")
    p.add_argument("--limit", type=int, default=None, help="show at most this many rows")
    p.set_defaults(func=cmd_compare)
