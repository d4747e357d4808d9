"""Inference benchmark of the champion's variants (native, ONNX FP32, ONNX INT8), one code path for the
`inference_benchmark` asset (LIGHT settings) and `benchmarks/inference.py` (FULL settings).

Per variant and thread count (1 and every core): one-row latency p50/p95/p99 after warm-up, throughput
at batch sizes 1–4096; per variant: load time, file size, peak RSS in a fresh process (rss_probe.py)
and the experiment's selection metric on the test split. Inputs are prepared before the clock starts
(a DataFrame for sklearn, a tensor for torch, the feed for ONNX Runtime): only the model is timed.
The Pareto front is accuracy against one-row p99 latency over every (variant, threads) point.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlgraph.core import metrics as core_metrics
from mlgraph.core.atomic import atomic_path, atomic_write_text
from mlgraph.core.drive import PROJECT_ROOT, DrivePaths
from mlgraph.core.experiment import ExperimentConfig
from mlgraph.deployment import gates, runtime
from mlgraph.deployment.champion import Champion, Evaluation, Rows, evaluation_split, read_champion
from mlgraph.training import metrics as mt
from mlgraph.training.candidates import available_cores
from mlgraph.training.model_files import read_split

BATCH_SIZES = (1, 8, 64, 512, 4096)
WAREHOUSE_TABLE = "inference_benchmark"
COLUMNS = [
    "experiment",
    "model_version",
    "run_id",
    "family",
    "variant",
    "threads",
    "batch_size",
    "throughput_rows_per_s",
    "batch_p50_ms",
    "latency_p50_us",
    "latency_p95_us",
    "latency_p99_us",
    "latency_runs",
    "peak_rss_mb",
    "model_bytes",
    "load_seconds",
    "metric",
    "metric_value",
    "pareto_optimal",
    "settings",
    "measured_at",
]
RSS_TIMEOUT_S = 300


@dataclass(frozen=True)
class BenchSettings:
    name: str
    warmup: int  # one-row calls before the latency clock starts
    latency_runs: int  # timed one-row calls
    min_seconds: float  # per throughput point, at least this long ...
    min_repeats: int  # ... and at least this many batches
    rss_rows: int  # rows the fresh process predicts for peak RSS
    latency_seconds: float  # stop timing one-row calls after this long (once MIN_LATENCY_RUNS are in)
    batch_sizes: tuple[int, ...] = BATCH_SIZES


MIN_LATENCY_RUNS = 30
# The asset's settings keep `mlgraph demo` within its time budget; the script measures properly.
LIGHT = BenchSettings(
    "light", warmup=10, latency_runs=200, min_seconds=0.02, min_repeats=2, rss_rows=256, latency_seconds=0.5
)
FULL = BenchSettings(
    "full", warmup=200, latency_runs=3000, min_seconds=0.5, min_repeats=3, rss_rows=4096, latency_seconds=10.0
)
SETTINGS = {s.name: s for s in (LIGHT, FULL)}


@dataclass(frozen=True)
class Variant:
    name: str
    path: Path

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size


def variants(champion: Champion, fp32: Path | None, int8: Path | None) -> list[Variant]:
    """Native always; ONNX FP32 and INT8 when they exist (their gates passed, or nothing downstream runs)."""
    found = [Variant(runtime.NATIVE, champion.model_path)]
    found += [Variant(name, path) for name, path in ((runtime.ONNX_FP32, fp32), (runtime.ONNX_INT8, int8)) if path]
    return found


def thread_counts() -> tuple[int, ...]:
    return tuple(sorted({1, available_cores()}))


def load(variant: Variant, champion: Champion, native: Any, threads: int) -> runtime.Predictor:
    if variant.name == runtime.NATIVE:
        return runtime.native_predictor(champion, native, threads)
    return runtime.onnx_predictor(variant.name, champion.task, variant.path, threads)


def load_seconds(variant: Variant, champion: Champion) -> float:
    start = time.perf_counter()
    if variant.name == runtime.NATIVE:
        champion.load()
    else:
        runtime.session(variant.path)
    return time.perf_counter() - start


def one_row_latency(predictor: runtime.Predictor, rows: Rows, settings: BenchSettings) -> dict[str, float]:
    """p50/p95/p99 in µs of single-row calls, cycling through up to 64 different rows."""
    prepared = predictor.prepare(rows.take(slice(0, 64)))
    singles = [predictor.row(prepared, i) for i in range(min(64, len(rows)))]
    times: list[int] = []
    with runtime.native_threads(predictor.threads):
        for i in range(settings.warmup):
            predictor.predict(singles[i % len(singles)])
        deadline = time.perf_counter() + settings.latency_seconds
        while len(times) < settings.latency_runs and (len(times) < MIN_LATENCY_RUNS or time.perf_counter() < deadline):
            start = time.perf_counter_ns()
            predictor.predict(singles[len(times) % len(singles)])
            times.append(time.perf_counter_ns() - start)
    p50, p95, p99 = np.percentile(np.asarray(times) / 1e3, [50, 95, 99])
    return {
        "latency_p50_us": float(p50),
        "latency_p95_us": float(p95),
        "latency_p99_us": float(p99),
        "latency_runs": len(times),
    }


def throughput(predictor: runtime.Predictor, rows: Rows, batch: int, settings: BenchSettings) -> dict[str, float]:
    prepared = predictor.prepare(rows.tile(batch))
    times: list[float] = []
    with runtime.native_threads(predictor.threads):
        predictor.predict(prepared)  # warm-up: first-call allocations
        start = time.perf_counter()
        while len(times) < settings.min_repeats or time.perf_counter() - start < settings.min_seconds:
            t0 = time.perf_counter()
            predictor.predict(prepared)
            times.append(time.perf_counter() - t0)
    return {"throughput_rows_per_s": batch * len(times) / sum(times), "batch_p50_ms": float(np.median(times) * 1e3)}


def accuracy(
    config: ExperimentConfig,
    evaluation: Evaluation,
    threshold: float | None,
    predictions: np.ndarray,
    metric: str | None = None,
) -> float:
    """The selection metric (`metric`, else the experiment's) on the test split, computed the way
    evaluation_metrics does."""
    metric, y = metric or config.selection_metric, evaluation.y_true
    if config.task == "classification" and predictions.ndim == 2:  # multiclass: (n, k) probabilities
        return core_metrics.multiclass_metrics(y, predictions)[metric]
    if config.task == "classification":
        return core_metrics.classification_metrics(y, predictions, threshold if threshold is not None else 0.5)[metric]
    if config.task == "forecasting":
        weights = config.selection.composite_weights
        return mt.forecast_metrics(y, predictions, weights, evaluation.error_unit)[metric]
    return core_metrics.regression_metrics(y, predictions)[metric]


def _probe_inputs(variant: Variant, champion: Champion, rows: Rows, directory: Path) -> tuple[str, Path]:
    if variant.name != runtime.NATIVE:
        path = directory / f"{variant.name}.npz"
        np.savez(
            path,
            **runtime.onnx_feed(
                rows, [{"name": i.name, "type": i.type} for i in runtime.session(variant.path).get_inputs()]
            ),
        )
        return "onnx", path
    if champion.task == "forecasting":
        path = directory / "windows.npy"
        np.save(path, rows.windows)
        return "native_torch", path
    path = directory / "frame.pkl"
    rows.frame.to_pickle(path)
    return "native_sklearn", path


def peak_rss(variants_: Sequence[Variant], champion: Champion, rows: Rows) -> dict[str, float]:
    """Peak RSS (MB) of each variant in its own fresh process, all started together (RSS is per process)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="mlgraph-rss-") as tmp:
        procs = {}
        for variant in variants_:
            kind, inputs = _probe_inputs(variant, champion, rows, Path(tmp))
            cmd = [
                sys.executable,
                "-m",
                "mlgraph.deployment.rss_probe",
                kind,
                str(variant.path),
                str(inputs),
                champion.family,
            ]
            procs[variant.name] = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=PROJECT_ROOT
            )
        result = {}
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=RSS_TIMEOUT_S)
            if proc.returncode != 0:
                raise RuntimeError(f"peak-RSS probe of {name} failed (exit {proc.returncode}): {err.strip()[-2000:]}")
            result[name] = json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]
    return result


def pareto_front(points: Mapping[str, tuple[float, float]], lower_is_better: bool) -> list[str]:
    """Keys whose (latency, metric) no other point matches or beats on both with one strictly better.

    Metrics equal to 6 decimals tie: FP32 float noise (1e-8) must not make a slower variant "more accurate".
    """

    def score(value: float) -> float:
        return round(-value if lower_is_better else value, 6)

    front = []
    for key, (latency, metric) in points.items():
        dominated = any(
            lat <= latency and score(m) >= score(metric) and (lat < latency or score(m) > score(metric))
            for other, (lat, m) in points.items()
            if other != key
        )
        if not dominated:
            front.append(key)
    return sorted(front, key=lambda k: points[k][0])


def point_key(row: Mapping[str, Any]) -> str:
    return f"{row['variant']}@{row['threads']}t"


def run_benchmark(
    config: ExperimentConfig,
    champion: Champion,
    native: Any,
    variants_: Sequence[Variant],
    evaluation: Evaluation,
    settings: BenchSettings,
    threads: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """One row per variant × threads × batch size, with the columns of COLUMNS."""
    threads = tuple(threads or thread_counts())
    rss = peak_rss(variants_, champion, evaluation.rows.tile(settings.rss_rows))
    metric = champion.metric or config.selection_metric  # what it was promoted on (multiclass default differs)
    measured_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    rows: list[dict[str, Any]] = []
    for variant in variants_:
        loaded = load_seconds(variant, champion)
        predictors = {t: load(variant, champion, native, t) for t in threads}
        metric_value = accuracy(config, evaluation, champion.threshold, predictors[threads[0]](evaluation.rows), metric)
        for t, predictor in predictors.items():
            latency = one_row_latency(predictor, evaluation.rows, settings)
            for batch in settings.batch_sizes:
                rows.append(
                    {
                        "experiment": champion.experiment,
                        "model_version": champion.model_version,
                        "run_id": champion.run_id,
                        "family": champion.family,
                        "variant": variant.name,
                        "threads": t,
                        "batch_size": batch,
                        **throughput(predictor, evaluation.rows, batch, settings),
                        **latency,
                        "peak_rss_mb": rss[variant.name],
                        "model_bytes": variant.bytes,
                        "load_seconds": loaded,
                        "metric": metric,
                        "metric_value": metric_value,
                        "settings": settings.name,
                        "measured_at": measured_at,
                    }
                )
    points = {point_key(r): (r["latency_p99_us"], r["metric_value"]) for r in rows}
    front = set(pareto_front(points, core_metrics.lower_is_better(metric)))
    for row in rows:
        row["pareto_optimal"] = point_key(row) in front
    return rows


@dataclass(frozen=True)
class Measured:
    champion: Champion
    variants: list[Variant]
    not_benchmarked: dict[str, str]  # variant → why it has no file (no faithful export, nothing quantizable)
    rows: list[dict[str, Any]]


def benchmark_champion(drive: DrivePaths, config: ExperimentConfig, settings: BenchSettings) -> Measured:
    """Benchmark the current champion and whichever ONNX variants its reports name (hashes verified)."""
    champion = read_champion(drive, config)
    native = champion.load()
    served = gates.served_onnx(drive, champion)
    paths = {name: v for name, v in served.items() if isinstance(v, Path)}
    found = variants(champion, paths.get(runtime.ONNX_FP32), paths.get(runtime.ONNX_INT8))
    train, test = read_split(drive, config.name, "train"), read_split(drive, config.name, "test")
    rows = run_benchmark(config, champion, native, found, evaluation_split(config, train, test, native), settings)
    return Measured(champion, found, {n: v for n, v in served.items() if isinstance(v, str)}, rows)


def pareto_points(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One point per (variant, threads): its one-row latency figures, metric and Pareto flag."""
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        seen.setdefault(
            point_key(row),
            {
                "point": point_key(row),
                **{
                    k: row[k]
                    for k in (
                        "variant",
                        "threads",
                        "latency_p50_us",
                        "latency_p99_us",
                        "metric_value",
                        "pareto_optimal",
                        "peak_rss_mb",
                        "model_bytes",
                    )
                },
            },
        )
    return list(seen.values())


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    return atomic_write_text(path, pd.DataFrame(list(rows), columns=COLUMNS).to_csv(index=False))


def pareto_plot(rows: Sequence[Mapping[str, Any]], metric: str, path: Path, title: str) -> Path:
    """Metric against one-row p99 latency (log scale), Pareto-optimal points joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = pareto_points(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for p in points:
        ax.scatter(
            p["latency_p99_us"],
            p["metric_value"],
            s=60 if p["pareto_optimal"] else 30,
            marker="o" if p["pareto_optimal"] else "x",
            color="tab:blue" if p["pareto_optimal"] else "tab:gray",
        )
        ax.annotate(
            p["point"], (p["latency_p99_us"], p["metric_value"]), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    front = sorted((p for p in points if p["pareto_optimal"]), key=lambda p: p["latency_p99_us"])
    ax.plot([p["latency_p99_us"] for p in front], [p["metric_value"] for p in front], color="tab:blue", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("one-row p99 latency (µs, log scale)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def store_rows(connection: Any, rows: Sequence[Mapping[str, Any]]) -> int:
    """Replace this champion version's rows of the warehouse table (other versions stay, for comparisons)."""
    frame = pd.DataFrame(list(rows), columns=COLUMNS)
    connection.register("benchmark_rows", frame)
    try:
        connection.execute(f"CREATE TABLE IF NOT EXISTS {WAREHOUSE_TABLE} AS SELECT * FROM benchmark_rows LIMIT 0")
        connection.execute("BEGIN TRANSACTION")
        connection.execute(
            f"DELETE FROM {WAREHOUSE_TABLE} WHERE experiment = ? AND model_version = ?",
            [frame["experiment"].iloc[0], frame["model_version"].iloc[0]],
        )
        connection.execute(f"INSERT INTO {WAREHOUSE_TABLE} BY NAME SELECT * FROM benchmark_rows")
        connection.execute("COMMIT")
    finally:
        connection.unregister("benchmark_rows")
    return len(frame)


def previous_champion_rows(connection: Any, experiment: str, model_version: str, settings: str) -> list[dict[str, Any]]:
    """The most recently benchmarked other champion version of this experiment, measured with the same
    settings (empty when none)."""
    exists = connection.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [WAREHOUSE_TABLE]
    ).fetchall()[0][0]
    if not exists:
        return []
    frame = connection.execute(
        f"SELECT * FROM {WAREHOUSE_TABLE} WHERE experiment = $1 AND model_version <> $2 AND settings = $3 AND "
        f"measured_at = (SELECT max(measured_at) FROM {WAREHOUSE_TABLE} "
        "WHERE experiment = $1 AND model_version <> $2 AND settings = $3)",
        [experiment, model_version, settings],
    ).df()
    return frame.to_dict("records")


def _change(current: float, previous: float, higher_is_better: bool) -> str:
    if not (current > 0 and previous > 0):
        return "n/a"
    ratio = current / previous if higher_is_better else previous / current
    return f"{ratio:.2f}× faster" if ratio >= 1 else f"{1 / ratio:.2f}× slower"


def compare_with_previous(current: Sequence[Mapping[str, Any]], previous: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Per variant at one thread: one-row p50 and largest-batch throughput against the previous champion."""

    def index(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], Mapping[str, Any]]:
        return {(r["variant"], int(r["batch_size"])): r for r in rows if int(r["threads"]) == 1}

    now, before = index(current), index(previous)
    largest = max((b for _, b in now), default=0)
    out = []
    for (variant, batch), row in sorted(now.items()):
        old = before.get((variant, batch))
        if old is None:
            continue
        if batch == 1:
            out.append(
                {
                    "variant": variant,
                    "figure": "one-row p50 (µs)",
                    "current": row["latency_p50_us"],
                    "previous": old["latency_p50_us"],
                    "previous_version": old["model_version"],
                    "change": _change(row["latency_p50_us"], old["latency_p50_us"], higher_is_better=False),
                }
            )
        if batch == largest:
            out.append(
                {
                    "variant": variant,
                    "figure": f"rows/s at batch {batch}",
                    "current": row["throughput_rows_per_s"],
                    "previous": old["throughput_rows_per_s"],
                    "previous_version": old["model_version"],
                    "change": _change(row["throughput_rows_per_s"], old["throughput_rows_per_s"], True),
                }
            )
    return out


def mlflow_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Flat MLflow metric names for the champion's run: bench_<variant>_t<threads>_<figure>."""
    metrics: dict[str, float] = {}
    for r in rows:
        prefix = f"bench_{r['variant']}_t{r['threads']}"
        metrics[f"{prefix}_rows_per_s_b{r['batch_size']}"] = float(r["throughput_rows_per_s"])
        for key in ("latency_p50_us", "latency_p95_us", "latency_p99_us", "peak_rss_mb", "model_bytes"):
            metrics[f"{prefix}_{key}"] = float(r[key])
    return metrics
