"""pipeline_report.json: one document with every section of a run, built from the files on the drive."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from mlgraph.preprocessing.operators import OPERATORS


def chunk_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Transform-pass chunks of one constraint: counts, memory, retries, time per operator."""
    transform = [r for r in records if r["stage"] == "transform"]
    accepted = [r for r in transform if not r["memory_exceeded"]]
    memory = [r["memory_mb"] for r in accepted]
    return {
        "chunks": len(accepted),
        "rows": sum(r["rows"] for r in accepted),
        "input_bytes": sum(r["input_bytes"] for r in accepted),
        "attempts_over_limit": sum(1 for r in records if r["memory_exceeded"]),
        "attempts_over_limit_by_stage": {
            stage: sum(1 for r in records if r["memory_exceeded"] and r["stage"] == stage)
            for stage in ("statistics", "fit", "transform")
        },
        "max_retries": max((r["retries"] for r in records), default=0),
        "spilled_chunks": sum(1 for r in accepted if r["spilled"]),
        "chunk_sizes_used": sorted({r["chunk_size_used"] for r in accepted}),
        "memory_mb_max": max(memory, default=0.0),
        "memory_mb_mean": statistics.fmean(memory) if memory else 0.0,
        "operator_seconds": {op: sum(r[f"{op}_s"] for r in accepted) for op in OPERATORS},
    }


def build_report(
    experiment: str,
    task: str,
    fingerprint: Mapping[str, Any],
    manifest: Mapping[str, Any],
    records_by_constraint: Mapping[str, Sequence[Mapping[str, Any]]],
    constraint_rows: Sequence[Mapping[str, Any]],
    significance: Mapping[str, Any] | None,
    batch_summary: Mapping[str, Any] | None,
    checks: Mapping[str, Any],
    run_id: str | None,
) -> dict[str, Any]:
    per_constraint = {key: chunk_summary(records) for key, records in sorted(records_by_constraint.items())}
    return {
        "experiment": experiment,
        "task": task,
        "dagster_run_id": run_id,
        "dataset_fingerprint": dict(fingerprint),
        "reproducibility": dict(manifest),
        "chunk_metrics": {
            "per_constraint": per_constraint,
            "total_chunks": sum(s["chunks"] for s in per_constraint.values()),
            "total_attempts_over_limit": sum(s["attempts_over_limit"] for s in per_constraint.values()),
        },
        "constraint_experiment": [dict(r) for r in constraint_rows],
        "significance": dict(significance) if significance else None,
        "batch": dict(batch_summary) if batch_summary else None,
        "checks": dict(checks),
    }
