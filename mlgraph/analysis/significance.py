"""Batch vs streaming: repeated timed runs and seeded permutation tests on latency and throughput."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlgraph.preprocessing import engine

N_RESAMPLES = 9999
COLUMNS = [
    "latency_pvalue",
    "throughput_pvalue",
    "latency_mean_delta_s",
    "throughput_mean_delta_rows_s",
    "runs_per_mode",
    "chunk_size",
    "batch_latency_mean_s",
    "streaming_latency_mean_s",
    "batch_throughput_mean_rows_s",
    "streaming_throughput_mean_rows_s",
    "n_resamples",
    "seed",
]


def timed_runs(source: Path, options: engine.EngineOptions, chunk_size: int, runs: int) -> list[dict[str, Any]]:
    """`runs` batch and `runs` streaming runs, interleaved so drift in machine load hits both alike.

    One untimed run of each first: the first call pays imports and cold caches.
    """
    engine.run_batch(source, options, collect=False)
    engine.run_streaming(source, options, chunk_size=chunk_size)
    out = []
    for i in range(runs):
        for mode in ("batch", "streaming"):
            if mode == "batch":
                result = engine.run_batch(source, options, collect=False)
            else:
                result = engine.run_streaming(source, options, chunk_size=chunk_size)
            out.append(
                {
                    "run": i,
                    "mode": mode,
                    "latency_s": result.latency_s,
                    "rows": result.rows_in,
                    "throughput_rows_s": result.throughput_rows_s,
                    "peak_memory_mb": result.peak_memory_mb,
                }
            )
    return out


def permutation_pvalue(a: Sequence[float], b: Sequence[float], seed: int, n_resamples: int = N_RESAMPLES) -> float:
    """Two-sided permutation test of mean(a) − mean(b), seeded."""
    from scipy.stats import permutation_test

    def mean_difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    result = permutation_test(
        (np.asarray(a, dtype=float), np.asarray(b, dtype=float)),
        mean_difference,
        permutation_type="independent",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)


def significance_row(
    runs: Sequence[dict[str, Any]], chunk_size: int, seed: int, n_resamples: int = N_RESAMPLES
) -> dict[str, Any]:
    """significance_tests.csv's row: p-values and mean deltas (streaming − batch)."""
    by_mode = {m: [r for r in runs if r["mode"] == m] for m in ("batch", "streaming")}
    latency = {m: [r["latency_s"] for r in rs] for m, rs in by_mode.items()}
    throughput = {m: [r["throughput_rows_s"] for r in rs] for m, rs in by_mode.items()}
    return {
        "latency_pvalue": permutation_pvalue(latency["streaming"], latency["batch"], seed, n_resamples),
        "throughput_pvalue": permutation_pvalue(throughput["streaming"], throughput["batch"], seed + 1, n_resamples),
        "latency_mean_delta_s": statistics.fmean(latency["streaming"]) - statistics.fmean(latency["batch"]),
        "throughput_mean_delta_rows_s": statistics.fmean(throughput["streaming"])
        - statistics.fmean(throughput["batch"]),
        "runs_per_mode": len(latency["batch"]),
        "chunk_size": chunk_size,
        "batch_latency_mean_s": statistics.fmean(latency["batch"]),
        "streaming_latency_mean_s": statistics.fmean(latency["streaming"]),
        "batch_throughput_mean_rows_s": statistics.fmean(throughput["batch"]),
        "streaming_throughput_mean_rows_s": statistics.fmean(throughput["streaming"]),
        "n_resamples": n_resamples,
        "seed": seed,
    }
