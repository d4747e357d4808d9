"""Preprocessing assets: streaming features per resource constraint, the probe model run, batch features."""

import json

import dagster as dg
import pyarrow.parquet as pq

from mlgraph.core.atomic import atomic_write_json
from mlgraph.core.constraints import Constraint
from mlgraph.core.drive import FEATURES_PARQUET
from mlgraph.core.hashing import sha256_file
from mlgraph.core.markdown import md_table
from mlgraph.preprocessing import engine, outputs, probe_model
from pipeline_assets.partitions import experiment_constraint_partitions_def, experiment_partitions_def
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive

# By key: importing another group's asset here would make the loader claim it for this group.
TRAIN_TEST_SPLIT = dg.AssetKey("train_test_split")


def _constraint_partition(context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog):
    """(experiment, constraint key, experiment config, Constraint, per-constraint output dir) of this partition."""
    keys = context.partition_key.keys_by_dimension
    experiment, constraint_key = keys["experiment"], keys["constraint"]
    return (
        experiment,
        constraint_key,
        catalog.load(experiment).config,
        Constraint.parse(constraint_key),
        storage.constraint_dir(experiment, constraint_key),
    )


def _operator_table(result: engine.RunResult) -> dg.MetadataValue:
    last_stage = result.records[-1].stage
    rows = [r for r in result.records if r.stage == last_stage and not r.memory_exceeded]
    lines = []
    for op in engine.OPERATORS:
        total = sum(r.operator_seconds()[op] for r in rows)
        lines.append([op, f"{total:.4f}", f"{total / max(len(rows), 1):.5f}"])
    return dg.MetadataValue.md(md_table(["operator", "total s", "mean s/chunk"], lines, align=["", "r", "r"]))


def _run_metadata(result: engine.RunResult, path) -> dict:
    fit = result.fit
    return {
        "dagster/row_count": result.rows_out,
        "rows_in": result.rows_in,
        "columns": len(fit.output_columns),
        "selected_numeric_features": len(fit.selected),
        "dropped_correlated": dg.MetadataValue.json(fit.dropped_correlated),
        "latency_s": round(result.latency_s, 4),
        "throughput_rows_s": round(result.throughput_rows_s, 1),
        "peak_memory_mb": round(result.peak_memory_mb, 3),
        "threads": result.threads,
        "operators": _operator_table(result),
        "fit_id": fit.fit_id,
        "path": dg.MetadataValue.path(str(path)),
    }


@dg.asset(
    partitions_def=experiment_constraint_partitions_def,
    deps=[TRAIN_TEST_SPLIT],
    kinds={"parquet"},
    code_version="1",
)
def streaming_features(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """Features built chunk by chunk under the partition's chunk size, memory limit and compute cap."""
    experiment, constraint_key, config, constraint, out_dir = _constraint_partition(context, storage, catalog)
    features_path = storage.constraint_file(experiment, constraint_key, FEATURES_PARQUET)
    result = engine.run_streaming(
        source=storage.dataset_path(experiment, "train"),
        options=engine.EngineOptions.from_config(config),
        chunk_size=constraint.chunk_size,
        memory_limit_mb=constraint.memory_limit_mb,
        compute_limit=constraint.compute_limit,
        spill_dir=storage.intermediate_dir(experiment, constraint_key) if config.preprocessing.spill_to_disk else None,
        output=features_path,
    )
    outputs.write_run_outputs(out_dir, result, {"experiment": experiment, "constraint": constraint_key})
    if result.started_over:
        context.log.warning(f"{experiment} [{constraint_key}]: resume {result.resume}")
    context.log.info(
        f"{experiment} [{constraint_key}]: {result.rows_in} rows in {result.chunks} chunks, "
        f"{result.retries} attempt(s) over the memory limit, {result.resumed_chunks} resumed (resume: "
        f"{result.resume}), {result.latency_s:.3f}s, peak {result.peak_memory_mb:.2f} MB, {result.threads} thread(s)"
    )
    return dg.MaterializeResult(
        metadata={
            **_run_metadata(result, features_path),
            "chunks": result.chunks,
            "attempts_over_limit": result.retries,
            "resumed_chunks": result.resumed_chunks,
            "resume": result.resume,
            "final_chunk_size": result.final_chunk_size,
            "memory_limit_mb": constraint.memory_limit_mb,
            "compute_limit": constraint.compute_limit,
        },
        # Features are deterministic for a given input and chunk size (timings are not part of them).
        data_version=dg.DataVersion(sha256_file(features_path)),
    )


@dg.asset(
    partitions_def=experiment_constraint_partitions_def,
    deps=[streaming_features],
    kinds={"sklearn"},
    code_version="1",
)
def constraint_probe_result(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """The experiment's probe model trained on this constraint's features, under its compute cap."""
    experiment, constraint_key, config, constraint, out_dir = _constraint_partition(context, storage, catalog)
    fit = outputs.read_fit(out_dir)
    train = pq.read_table(storage.constraint_file(experiment, constraint_key, FEATURES_PARQUET))
    # The test split goes through the same operators with the statistics fitted on train.
    test = engine.transform_table(pq.read_table(storage.dataset_path(experiment, "test")), fit)
    result = probe_model.train_probe(
        config.task,
        train,
        test,
        config.target,
        compute_limit=constraint.compute_limit,
        time_column=config.time_column,
        window=config.forecast.window,
        seed=config.seed,
    )
    row = probe_model.constraint_run_row(
        experiment, constraint_key, config.task, constraint, outputs.read_summary(out_dir), result
    )
    path = atomic_write_json(storage.constraint_run_json(experiment, constraint_key), row)
    context.log.info(f"{experiment} [{constraint_key}]: {result.model} {json.dumps(result.metrics)}")
    return dg.MaterializeResult(
        metadata={
            **{k: round(v, 6) for k, v in result.metrics.items()},
            "training_time_s": round(result.training_time_s, 4),
            "probe_model": result.model,
            "threads": result.threads,
            "train_rows": result.train_rows,
            "test_rows": result.test_rows,
            "path": dg.MetadataValue.path(str(path)),
        }
    )


@dg.asset(partitions_def=experiment_partitions_def, deps=[TRAIN_TEST_SPLIT], kinds={"parquet"}, code_version="1")
def batch_features(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """The same four operators on the whole train split in memory: the reference streaming must match."""
    experiment = context.partition_key
    config = catalog.load(experiment).config
    features_path = storage.batch_file(experiment, FEATURES_PARQUET)
    result = engine.run_batch(
        storage.dataset_path(experiment, "train"),
        engine.EngineOptions.from_config(config),
        output=features_path,
        collect=False,
    )
    outputs.write_run_outputs(storage.batch_dir(experiment), result, {"experiment": experiment})
    return dg.MaterializeResult(
        metadata=_run_metadata(result, features_path),
        data_version=dg.DataVersion(sha256_file(features_path)),
    )
