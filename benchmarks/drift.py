"""Drift report over a large prediction log: the production reader against a naive `json.loads` per line.

Writes a prediction log of `--rows` records (default 1,000,000) × `--features` features (18 numeric,
2 categorical by default) in the mlgraph/core/prediction_log.py format, rotated every 250,000 records as the
service rotates it, then times `mlgraph.monitoring.drift.build_report` with `window = rows`
(every record in the report) and, in the same run, the naive reader: every line through `json.loads`
into per-feature lists, then the same statistics (the baseline the pyarrow block reader replaces).
Target (issue #12): ≤ 10 s for 1M × 20 on 2 cores. Two features of the newest half are shifted by 8σ
(4σ over the whole window), so both readers must find drift. Also timed: the default 5,000-record window
at the end of the same log, what `drift_sensor` pays per experiment and tick.

    .venv/bin/python benchmarks/drift.py [--rows 1000000] [--features 20] [--keep DIR]

Prints JSON.
"""

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlgraph.core.drive import DriveLayout
from mlgraph.core.experiment import ExperimentConfig
from mlgraph.core.prediction_log import rotated_name
from mlgraph.monitoring import drift
from mlgraph.monitoring.baseline import compute_baseline, read_baseline, write_baseline
from mlgraph.monitoring.window import Window, newest, parse_record

ROTATE_EVERY = 250_000
CATEGORIES = ["basic", "plus", "pro", "team"]


def frame(rows: int, numeric: list[str], categorical: list[str], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {n: rng.normal(i, 1 + i / 10, rows) for i, n in enumerate(numeric)}
    data.update({c: rng.choice(CATEGORIES, rows) for c in categorical})
    data["y"] = rng.choice([0, 1], rows, p=[0.7, 0.3])
    return pd.DataFrame(data)


def write_log(drive: DriveLayout, data: pd.DataFrame, numeric: list[str], categorical: list[str]) -> int:
    """The log, oldest rotated file first; returns its total size in bytes."""
    current = drive.prediction_log_path("bench")
    current.parent.mkdir(parents=True, exist_ok=True)
    start = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    columns = {n: np.round(data[n].to_numpy(), 6).tolist() for n in numeric}
    columns.update({c: data[c].tolist() for c in categorical})
    predictions = data["y"].tolist()
    names = numeric + categorical
    pieces = range(0, len(data), ROTATE_EVERY)
    for number, first in enumerate(pieces):
        last = min(first + ROTATE_EVERY, len(data))
        path = current if number == len(pieces) - 1 else rotated_name(current, start + dt.timedelta(hours=number))
        with open(path, "w", encoding="utf-8") as handle:
            for i in range(first, last):
                record = {
                    "time": (start + dt.timedelta(milliseconds=i)).isoformat(),
                    "request_id": f"r{i}",
                    "row": 0,
                    "model_version": "1",
                    "inputs": {n: columns[n][i] for n in names},
                    "output": {"prediction": predictions[i], "probability": 0.4},
                }
                handle.write(json.dumps(record) + "\n")
    return sum(p.stat().st_size for p in current.parent.iterdir())


def naive_window(current: Path, size: int, numeric: list[str], categorical: list[str]) -> Window:
    """Every line through json.loads, features gathered in Python lists and Counters."""
    blocks, _ = newest(current, size)
    window = Window(categorical={c: Counter() for c in categorical})
    values = {n: [] for n in numeric}
    times = []
    for block in blocks:
        for line in block.split(b"\n"):
            if not line.strip():
                continue
            record = parse_record(line)
            if record is None:
                window.bad_lines += 1
                continue
            inputs = record["inputs"]
            for n in numeric:
                value = inputs.get(n)
                values[n].append(float(value) if isinstance(value, int | float) else np.nan)
            for c in categorical:
                window.categorical[c][inputs.get(c)] += 1
            window.predictions[str(record["output"].get("prediction"))] += 1
            times.append(record.get("time"))
    window.rows = len(times)
    window.numeric = {n: np.asarray(v, dtype=np.float64) for n, v in values.items()}
    window.first_time, window.last_time = min(times), max(times)
    return window


def naive_report(window: Window, baseline: dict, config: ExperimentConfig) -> list[str]:
    """The drifted features of the naive window, by the same rules."""
    features = {n: drift.numeric_drift(window.numeric[n], baseline["numeric"][n], 3.0) for n in window.numeric}
    features.update(
        {
            c: drift.categorical_drift(counts, baseline["categorical"][c], config.drift)
            for c, counts in window.categorical.items()
        }
    )
    return [n for n, f in features.items() if f["drift"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="write the drive here and keep it")
    args = parser.parse_args()
    numeric = [f"x{i}" for i in range(args.features - 2)]
    categorical = ["plan", "region"]
    config = ExperimentConfig.model_validate(
        {
            "name": "bench",
            "task": "classification",
            "dataset": {"generator": "student_engagement"},
            "target": "y",
            "columns": dict.fromkeys(categorical, "categorical"),
            "drift": {"window": args.rows},
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        drive = DriveLayout.at(args.keep or tmp)
        training = frame(50_000, numeric, categorical, 0)
        write_baseline(drive, "bench", compute_baseline(training, config, {"model_version": "1"}))
        served = frame(args.rows, numeric, categorical, 1)
        newest = served.index >= args.rows // 2
        for name in numeric[:2]:
            served.loc[newest, name] += 4 * 2 * (1 + numeric.index(name) / 10)  # the newest half: +8σ, mean +4σ
        started = time.perf_counter()
        log_bytes = write_log(drive, served, numeric, categorical)
        write_seconds = time.perf_counter() - started

        import pyarrow.json  # noqa: F401 - imports warm, as in the service and the sensor after their first report
        import scipy.stats  # noqa: F401

        started = time.perf_counter()
        report = drift.build_report(drive, config)
        report_seconds = time.perf_counter() - started

        # What drift_sensor pays per tick and experiment: the default window at the end of the same log.
        small = config.model_copy(update={"drift": config.drift.model_copy(update={"window": 5000})})
        started = time.perf_counter()
        drift.build_report(drive, small)
        window_5000_seconds = time.perf_counter() - started

        current = drive.prediction_log_path("bench")
        started = time.perf_counter()
        window = naive_window(current, args.rows, numeric, categorical)
        naive_drifted = naive_report(window, read_baseline(drive, "bench"), config)
        naive_seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "rows": args.rows,
                "features": args.features,
                "log_files": -(-args.rows // ROTATE_EVERY),
                "log_mb": round(log_bytes / 2**20, 1),
                "write_seconds": round(write_seconds, 2),
                "report_seconds": round(report_seconds, 2),
                "report_rows_per_second": round(args.rows / report_seconds),
                "window_5000_report_seconds": round(window_5000_seconds, 3),
                "naive_json_loads_seconds": round(naive_seconds, 2),
                "speedup": round(naive_seconds / report_seconds, 1),
                "status": report["status"],
                "drifted_features": report["drifted_features"],
                "naive_drifted_features": naive_drifted,
                "target_seconds": 10,
                "cpus": os.cpu_count(),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "python": platform.python_version(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
