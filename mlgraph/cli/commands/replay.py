"""`mlgraph replay`: send an experiment's events to a running `mlgraph serve` at a fixed arrival rate (open
loop; see mlgraph/deployment/loadgen.py), or step the rate up to saturation with `--sweep`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mlgraph.deployment.loadgen import DEFAULT_URL


def _events(args: argparse.Namespace) -> list[dict[str, Any]]:
    from mlgraph.core.catalog import ConfigCatalog
    from mlgraph.core.drive import DriveLayout
    from mlgraph.deployment import capacity

    config = ConfigCatalog(args.config_dir).load(args.experiment).config
    drive = DriveLayout.at(args.drive)
    if args.source:
        return capacity.source_events(Path(args.source), drive, config)
    return capacity.held_out_events(drive, config)


def _progress(total_s: float):
    def show(result, elapsed: float) -> None:
        done = min(1.0, elapsed / total_s) if total_s else 1.0
        bar = "#" * int(done * 30)
        sys.stderr.write(
            f"\r[{bar:<30}] {elapsed:5.1f}/{total_s:g} s  sent {result.sent:,}  answered {result.answered:,}  "
            f"errors {sum(result.errors.values()):,}"
        )
        sys.stderr.flush()

    return show


def _print_run(summary: dict[str, Any]) -> None:
    lat, queue = summary["latency_ms"], summary["queue_delay_ms"]
    print(
        f"offered {summary['offered_rps']:,.1f}/s  achieved {summary['achieved_rps']:,.1f}/s "
        f"({(summary['achieved_share'] or 0):.1%})  over {summary['elapsed_s']:.1f} s, {summary['connections']} connections"
    )
    print(f"answered {summary['answered']:,} of {summary['scheduled']:,}  ok {summary['ok']:,}")
    print("errors: " + (", ".join(f"{k}: {v:,}" for k, v in summary["errors"].items()) or "none"))
    print("latency from intended send (ms): " + "  ".join(f"{k[:-3]} {v}" for k, v in lat.items()))
    print("queue delay, intended → sent (ms): " + "  ".join(f"{k[:-3]} {v}" for k, v in queue.items()))


def cmd_replay(args: argparse.Namespace) -> int:
    from mlgraph.deployment import loadgen, saturation

    try:
        endpoint = loadgen.parse_url(args.url, args.path)
        requests = loadgen.encode_requests(endpoint, _events(args))
    except (loadgen.ReplayError, FileNotFoundError, ValueError) as exc:
        print(f"mlgraph replay: {exc}", file=sys.stderr)
        return 2
    tty = sys.stderr.isatty() and not args.json
    if args.sweep:
        from mlgraph.core.catalog import ConfigCatalog
        from mlgraph.deployment.capacity import slo_of

        config = ConfigCatalog(args.config_dir).load(args.experiment).config
        default = slo_of(config)
        slo = saturation.SLO(args.p99_ms or default.p99_ms, args.min_rps or default.min_rps)
        settings = saturation.SweepSettings(
            start_rps=args.rate, step_seconds=args.duration, connections=args.connections, factor=args.factor
        )

        def step(row: dict[str, Any]) -> None:
            if not args.json:
                verdict = "ok" if row["passed"] else f"saturated: {row['reason']}"
                print(
                    f"{row['offered_rps']:>9,.1f}/s → {row['achieved_rps']:>9,.1f}/s  "
                    f"p99 {row['latency_ms']['p99_ms']} ms  {verdict}",
                    file=sys.stderr if tty else sys.stdout,
                )

        sweep = saturation.run_sweep(endpoint, requests, slo, settings, step)
        out = Path(args.out or f"capacity-{args.experiment}")
        csv_path = saturation.write_curve_csv(sweep, out.with_suffix(".csv"))
        png = saturation.curve_plot(sweep, out.with_suffix(".png"), f"{args.experiment}: {endpoint.url}, open loop")
        result = {**sweep.summary(), "curve": saturation.curve_rows(sweep), "csv": str(csv_path), "png": str(png)}
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"saturation point: {sweep.saturation_rps:,.1f} requests/s within p99 {slo.p99_ms:g} ms "
                f"({'meets' if sweep.meets_slo else 'below'} min_rps {slo.min_rps:g}"
                f"{'' if sweep.saturated else '; not saturated up to the largest step'})"
            )
            print(f"curve: {csv_path}, {png}")
        return 0
    progress = _progress(args.duration) if tty else None
    run = loadgen.replay(endpoint, requests, args.rate, args.duration, args.connections, args.timeout, progress)
    if tty:
        sys.stderr.write("\n")
    summary = run.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        _print_run(summary)
    return 0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not positive")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "replay", help="send events to a running `mlgraph serve` at a fixed rate (open loop), or sweep to saturation"
    )
    p.add_argument("--experiment", required=True, help="experiment name (config/experiments/<name>.yaml)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--source", help="events: CSV, parquet or JSONL rows with the experiment's feature columns")
    source.add_argument("--from-test-split", action="store_true", help="events: the test split on the shared drive")
    p.add_argument("--rate", type=_positive, required=True, help="requests/s offered (with --sweep: the first step)")
    p.add_argument("--duration", type=_positive, default=10.0, help="seconds (with --sweep: per step; default 10)")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
    p.add_argument("--path", default="/predict", help="endpoint (default /predict)")
    p.add_argument("--timeout", type=_positive, default=10.0, help="seconds before a request counts as timed out")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--sweep", action="store_true", help="step the rate up until the service misses the SLO")
    p.add_argument("--factor", type=_positive, default=1.5, help="--sweep: each step's rate × this (default 1.5)")
    p.add_argument("--p99-ms", type=_positive, default=None, help="--sweep: SLO p99 (default: deployment.slo)")
    p.add_argument("--min-rps", type=_positive, default=None, help="--sweep: SLO min_rps (default: deployment.slo)")
    p.add_argument("--out", default=None, help="--sweep: curve file stem (default capacity-<experiment>)")
    p.add_argument("--drive", default=None, help="shared drive root (default $SHARED_DRIVE)")
    p.add_argument("--config-dir", default=None, help="config directory (default $MLGRAPH_CONFIG_DIR or config/)")
    p.set_defaults(func=cmd_replay)
