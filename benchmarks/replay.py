"""Replay benchmark: `mlgraph serve` under an open-loop arrival rate, and its saturation point.

0. Baseline, same run: the same replay against the service with batching off (`--max-batch-rows 1`).
1. Replays `--rate` events/s (default 2,000) for `--duration` s (default 60) from the test split of the
   classification champion (student_engagement) against `mlgraph serve` with the prediction log on;
   reports offered vs achieved rate, latency percentiles from intended send time, errors, and lost log
   lines: 2xx answers minus prediction-log lines after the service stopped (SIGTERM drains the log).
2. Sweeps the rate to saturation with the serving_capacity asset's settings (prediction log on, as the
   asset measures) and compares the saturation point with the one the asset recorded.

The drive: `--drive` (default $SHARED_DRIVE) after `make demo` has materialized student_engagement —
the service and the sweep then run on a copy of what serving needs (so the replayed rows never enter
the demo's prediction log), and the asset's record is read from the drive. Without a promoted champion
there, a temporary drive is built as benchmarks/serving.py builds it (an ONNX logistic regression on
the demo generator's data) and the asset's measurement (mlgraph.deployment.capacity.measure, what the
asset runs) is taken on it first.

    .venv/bin/python benchmarks/replay.py [--duration 60] [--rate 2000] [--drive PATH]

Prints JSON. Target (issue 22): achieved ≥ 99 % of offered, p99 ≤ 10 ms, no lost log lines at 2,000/s
for 60 s; the benchmark's saturation point within 15 % of the asset's.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlgraph.core.catalog import ConfigCatalog
from mlgraph.core.drive import PROJECT_ROOT, DriveLayout, resolve_drive_root
from mlgraph.core.prediction_log import log_files
from mlgraph.deployment import capacity, loadgen, saturation
from mlgraph.deployment.champion import read_champion

EXPERIMENT = "student_engagement"
# What serving needs from the drive; the rest (state, MLflow, evaluation, logs) is left behind.
NEEDED = ("datasets", "models", "model-promotion", "artifacts")


def _copy_for_serving(source: Path, target: Path) -> Path:
    for name in NEEDED:
        if (source / name).exists():
            shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns("intermediate", "constraints"))
    return target


def _log_lines(drive: DriveLayout) -> int:
    return sum(f.read_bytes().count(b"\n") for f in log_files(drive.prediction_log_path(EXPERIMENT)))


def _replay(service: capacity.ServiceProcess, events: list, args: argparse.Namespace) -> tuple[dict, int]:
    """A warm-up second, then the measured replay: its summary (with the client's CPU share) and the warm-up's
    successful answers (they are in the prediction log too)."""
    endpoint = loadgen.parse_url(service.url)
    requests = loadgen.encode_requests(endpoint, events)
    warm = loadgen.replay(endpoint, requests, min(args.rate, 500.0), 1.0, args.connections)
    cpu = time.process_time()
    run = loadgen.replay(endpoint, requests, args.rate, args.duration, args.connections)
    client_cpu = (time.process_time() - cpu) / max(run.elapsed_s, 1e-9)
    return {**run.summary(), "client_cpu_share": round(client_cpu, 2)}, warm.ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of replay at --rate")
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--drive", default=None, help="drive after `make demo` (default $SHARED_DRIVE)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the saturation comparison")
    parser.add_argument("--no-baseline", action="store_true", help="skip the replay with batching off")
    args = parser.parse_args()
    load_before = list(os.getloadavg())
    source = resolve_drive_root(args.drive)
    with tempfile.TemporaryDirectory() as tmp:
        config_dir = PROJECT_ROOT / "config"
        config = ConfigCatalog(config_dir).load(EXPERIMENT).config
        try:
            read_champion(DriveLayout.at(source), config)
            root, built = _copy_for_serving(source, Path(tmp) / "shared"), False
        except (FileNotFoundError, ValueError):
            from tests.support.serving import build_drive, write_config_dir

            config_dir = write_config_dir(Path(tmp) / "config")
            root, built = Path(tmp) / "shared", True
            build_drive(root, config_dir)
            config = ConfigCatalog(config_dir).load(EXPERIMENT).config
        drive = DriveLayout.at(root)
        champion = read_champion(drive, config)
        events = capacity.held_out_events(drive, config)

        asset_record = None
        if built and not args.no_sweep:  # no demo drive: take the asset's measurement here, as the asset would
            asset_record = capacity.measure(drive, config, champion, config_dir).record
        elif not built:
            asset_record = capacity.read_record(DriveLayout.at(source).capacity_json(EXPERIMENT))

        # 0. The baseline, same run: the same replay with batching off (each request its own model call), its
        # prediction log in a scratch file on the drive.
        baseline = None
        if not args.no_baseline:
            (Path(root) / "scratch").mkdir(exist_ok=True)
            scratch = ("--prediction-log-path", str(Path(root) / "scratch" / "unbatched.jsonl"))
            with capacity.ServiceProcess(root, config_dir, EXPERIMENT, "--max-batch-rows", "1", *scratch) as service:
                service.wait_ready()
                baseline, _ = _replay(service, events, args)

        # 1. The fixed-rate replay, prediction log on.
        with capacity.ServiceProcess(root, config_dir, EXPERIMENT, log_path=Path(tmp) / "serve.log") as service:
            ready = service.wait_ready()
            summary, warm_ok = _replay(service, events, args)
        # After SIGTERM the service has drained its log; the copy started without one (warm-up lines included).
        logged = _log_lines(drive) - warm_ok

        # 2. The sweep, as the asset runs it (prediction log on).
        sweep_result = None
        if not args.no_sweep:
            with capacity.ServiceProcess(root, config_dir, EXPERIMENT) as service:
                service.wait_ready()
                endpoint = loadgen.parse_url(service.url)
                sweep = saturation.run_sweep(
                    endpoint,
                    loadgen.encode_requests(endpoint, events),
                    capacity.slo_of(config),
                    capacity.gate_settings(capacity.ASSET_SWEEP, capacity.slo_of(config)),
                )
            asset_rps = asset_record.get("saturation_rps") if asset_record else None
            sweep_result = {
                "benchmark_saturation_rps": sweep.saturation_rps,
                "asset_saturation_rps": asset_rps,
                "asset_measured_at": asset_record.get("measured_at") if asset_record else None,
                "relative_difference": round(abs(sweep.saturation_rps - asset_rps) / asset_rps, 3)
                if asset_rps
                else None,
                "within_15_percent": bool(asset_rps) and abs(sweep.saturation_rps - asset_rps) <= 0.15 * asset_rps,
                "curve": [
                    {k: r[k] for k in ("offered_rps", "achieved_rps", "p99_ms", "passed")}
                    for r in saturation.curve_rows(sweep)
                ],
            }
    lat = summary["latency_ms"]
    print(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "load_average_before": load_before,
                    "load_average_after": list(os.getloadavg()),
                },
                "drive": "temporary (built: no demo champion on the drive)" if built else str(source),
                "model": {"model_version": ready.get("model_version"), "runtime": ready.get("runtime")},
                "replay": summary,
                "baseline_unbatched": baseline
                and {
                    k: baseline[k]
                    for k in ("achieved_share", "errors", "latency_ms", "queue_delay_ms", "client_cpu_share")
                },
                "prediction_log": {"ok_answers": summary["ok"], "lines": logged, "lost": summary["ok"] - logged},
                "saturation": sweep_result,
                "target": {
                    "achieved_share_min": 0.99,
                    "p99_ms_max": 10.0,
                    "achieved_share": summary["achieved_share"],
                    "p99_ms": lat["p99_ms"],
                    "met": summary["achieved_share"] >= 0.99
                    and (lat["p99_ms"] or 1e9) <= 10.0
                    and summary["ok"] == logged
                    and not summary["errors"],
                },
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
