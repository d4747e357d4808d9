"""Preprocessing assets in-process: one experiment × two constraints, artifacts checked by content."""

import json

import dagster as dg
import pyarrow.parquet as pq
import pytest

from mlgraph.cli.staging import materialize_experiments
from mlgraph.core.constraints import Constraint
from mlgraph.core.drive import FEATURES_PARQUET, OPERATOR_PROFILE_CSV, STREAMING_CHUNKS_JSONL
from mlgraph.preprocessing import engine, outputs
from mlgraph.preprocessing.compute import threads_for
from mlgraph.preprocessing.options import MB
from pipeline_assets.definitions import defs
from pipeline_assets.preprocessing.checks import streaming_features_match_batch
from tests.support.fixtures import shrink_experiment

DATA_KEYS = [dg.AssetKey(k) for k in ("raw_dataset", "dataset_fingerprint", "train_test_split")]
SWEEP_KEYS = [dg.AssetKey("streaming_features"), dg.AssetKey("constraint_probe_result")]
CONSTRAINTS = ["c2000-m256-p50", "c10000-m1024-p100"]


def sweep(instance, experiment):
    """Data + batch features, then each constraint partition in its own run; returns the runs' results."""
    summary = materialize_experiments(
        defs,
        instance,
        [experiment],
        selection=[*DATA_KEYS, dg.AssetKey("batch_features")],
        echo=lambda _: None,
        raise_on_error=True,
    )
    assert summary.failed == []
    job = defs.resolve_implicit_global_asset_job_def()
    return {
        key: job.execute_in_process(
            instance=instance,
            partition_key=dg.MultiPartitionKey({"experiment": experiment, "constraint": key}),
            asset_selection=SWEEP_KEYS,
        )
        for key in CONSTRAINTS
    }


@pytest.mark.parametrize(
    ("experiment", "rows", "metric", "floor"),
    [("student_engagement", 5000, "model_roc_auc", 0.6), ("demand_forecast", 4000, "model_accuracy_r2", 0.3)],
)
def test_streaming_features_and_constraint_runs(instance, shared_drive, config_dir, experiment, rows, metric, floor):
    shrink_experiment(config_dir, experiment, rows)
    results = sweep(instance, experiment)
    train_rows = pq.read_metadata(shared_drive / "datasets" / experiment / "train.parquet").num_rows
    batch = pq.read_table(shared_drive / "artifacts" / experiment / "batch" / FEATURES_PARQUET)
    largest_input_mb = {}
    for key, result in results.items():
        constraint = Constraint.parse(key)
        assert result.success
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert checks["streaming_features_match_batch"].passed
        assert checks["streaming_features_match_batch"].metadata["max_abs_diff"].value <= 1e-9
        assert checks["streaming_features_memory_within_limit"].passed
        metadata = result.asset_materializations_for_node("streaming_features")[0].metadata
        assert metadata["resume"].value == "fresh"

        directory = shared_drive / "artifacts" / experiment / "constraints" / key
        features = pq.read_table(directory / FEATURES_PARQUET)
        assert features.column_names == batch.column_names and features.num_rows == train_rows
        assert engine.compare_features(features, batch)["passed"]

        records = outputs.read_records(directory / STREAMING_CHUNKS_JSONL)
        transform = [r for r in records if r["stage"] == "transform"]
        assert [r["chunk_id"] for r in transform] == list(range(-(-train_rows // constraint.chunk_size)))
        assert all(r["chunk_size_used"] == constraint.chunk_size and r["spilled"] for r in transform)
        assert all(r["constraint"] == key and r["memory_mb"] <= constraint.memory_limit_mb for r in records)
        profile = outputs.read_csv_rows(directory / OPERATOR_PROFILE_CSV)
        assert list(profile[0]) == outputs.PROFILE_COLUMNS and len(profile) == len(transform)
        assert sum(int(p["input_bytes"]) for p in profile) > 0

        summary = outputs.read_summary(directory)
        assert summary["threads"] == threads_for(constraint.compute_limit)
        # A chunk's working memory counts at least its input: a bound that holds on any machine.
        largest_input_mb[constraint.chunk_size] = max(r["input_bytes"] for r in records) / MB
        assert summary["peak_memory_mb"] >= largest_input_mb[constraint.chunk_size] - 1e-4

        run = json.loads((directory / "constraint_run.json").read_text())
        assert run["threads"] == threads_for(constraint.compute_limit)
        assert floor < run[metric] <= 1.0 and run["training_time_s"] > 0
        assert run["chunk_size"] == constraint.chunk_size and run["memory_limit_mb"] == constraint.memory_limit_mb

        manifest = json.loads(
            (shared_drive / "artifacts" / experiment / "intermediate" / key / "manifest.json").read_text()
        )
        assert manifest["complete"] and len(manifest["chunks"]) == len(transform)
    # Bigger chunks need more working memory: their input alone is larger (the measured peaks'
    # ordering depends on the machine's threads and load; benchmarks/streaming.py reports it).
    assert largest_input_mb[10000] > largest_input_mb[2000]


def test_sweep_job_is_tagged_for_slurm():
    job = defs.resolve_job_def("constraint_sweep_job")
    assert job.tags["mlgraph/compute"] == "slurm" and job.tags["slurm/kind"] == "training"
    keys = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert keys == {"streaming_features", "constraint_probe_result"}
    defs.resolve_job_def("analysis_job")  # raises when the job is not defined


def test_match_batch_check_declares_that_it_reads_batch_features():
    (spec,) = streaming_features_match_batch.check_specs
    assert spec.blocking
    assert [dep.asset_key for dep in spec.additional_deps] == [dg.AssetKey("batch_features")]
