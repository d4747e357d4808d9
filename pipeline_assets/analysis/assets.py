"""Experiment-level analysis of the constraint sweep: table, significance, plots, manifest, report."""

import json

import dagster as dg

from mlgraph.analysis import manifest, pipeline_summary, plots, significance, sweep
from mlgraph.core.atomic import atomic_write_json, atomic_write_text
from mlgraph.core.constraints import Constraint
from mlgraph.core.drive import FEATURES_PARQUET, FIT_JSON, STREAMING_CHUNKS_JSONL, SUMMARY_JSON
from mlgraph.core.markdown import md_image, md_table
from mlgraph.preprocessing import engine, outputs, validation
from mlgraph.preprocessing.probe_model import ACCURACY_COLUMN, ACCURACY_LABEL, METRIC_COLUMNS
from pipeline_assets.partitions import (
    constraint_partitions_def,
    experiment_from_constraints_mapping,
    experiment_partitions_def,
)
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive
from resources.warehouse import Warehouse

# By key: importing another group's assets here would make the loader claim them for this group.
TRAIN_TEST_SPLIT = dg.AssetKey("train_test_split")
BATCH_FEATURES = dg.AssetKey("batch_features")
CONSTRAINT_PROBE_RESULT = dg.AssetKey("constraint_probe_result")
SIGNIFICANCE_RUN_COLUMNS = ["run", "mode", "latency_s", "rows", "throughput_rows_s", "peak_memory_mb"]


def _constraint_dirs(storage: SharedDrive, experiment: str) -> dict:
    return {key: storage.constraint_dir(experiment, key) for key in constraint_partitions_def.get_partition_keys()}


@dg.asset(
    partitions_def=experiment_partitions_def,
    deps=[dg.AssetDep(CONSTRAINT_PROBE_RESULT, partition_mapping=experiment_from_constraints_mapping)],
    kinds={"csv", "duckdb"},
    code_version="1",
)
def constraint_sweep_table(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog, warehouse: Warehouse
) -> dg.MaterializeResult:
    """One row per resource constraint: preprocessing latency, peak memory, training time, probe metrics."""
    experiment = context.partition_key
    config = catalog.load(experiment).config
    dirs = _constraint_dirs(storage, experiment)
    rows, missing = sweep.collect_runs({key: storage.constraint_run_json(experiment, key) for key in dirs})
    if not rows:
        raise dg.Failure(
            description=f"{experiment}: no constraint has a probe result under "
            f"{storage.constraints_root(experiment)}. Fix: materialize constraint_probe_result for this "
            "experiment's constraint partitions (constraint_sweep_job) first."
        )
    if missing:
        context.log.warning(f"{experiment}: {len(missing)} constraint(s) not materialized yet: {', '.join(missing)}")
    table_path = atomic_write_text(
        storage.constraint_experiment_csv(experiment), outputs.csv_text(rows, sweep.columns_for(config.task))
    )
    present = [r["constraint"] for r in rows]
    # The experiment-level chunk reports hold every constraint's records, each tagged with its key.
    chunks_path = atomic_write_text(
        storage.streaming_chunks_jsonl(experiment), outputs.jsonl_text(sweep.combined_chunk_records(dirs, present))
    )
    profile_path = atomic_write_text(
        storage.operator_profile_csv(experiment),
        outputs.csv_text(sweep.combined_profile_rows(dirs, present), ["constraint", *outputs.PROFILE_COLUMNS]),
    )
    with warehouse.get_connection() as connection:
        stored = sweep.replace_in_warehouse(connection, experiment, rows)
    shown = ["constraint", "preprocessing_latency_s", "peak_memory_mb", "training_time_s", *METRIC_COLUMNS[config.task]]
    return dg.MaterializeResult(
        metadata={
            "constraints": len(rows),
            "missing_constraints": dg.MetadataValue.json(missing),
            "warehouse_table": sweep.WAREHOUSE_TABLE,
            "warehouse_rows": stored,
            "table": dg.MetadataValue.md(md_table(shown, rows)),
            "path": dg.MetadataValue.path(str(table_path)),
            "chunk_records": dg.MetadataValue.path(str(chunks_path)),
            "operator_profile": dg.MetadataValue.path(str(profile_path)),
        }
    )


@dg.asset(partitions_def=experiment_partitions_def, deps=[TRAIN_TEST_SPLIT], kinds={"csv"}, code_version="1")
def significance_tests(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """Seeded permutation tests of streaming vs batch latency and throughput over repeated runs."""
    experiment = context.partition_key
    config = catalog.load(experiment).config
    # The smallest chunk size of the grid: the most "streaming" of the configurations.
    chunk_size = min(Constraint.parse(k).chunk_size for k in constraint_partitions_def.get_partition_keys())
    runs = significance.timed_runs(
        storage.dataset_path(experiment, "train"),
        engine.EngineOptions.from_config(config),
        chunk_size,
        config.preprocessing.significance_runs,
    )
    row = significance.significance_row(runs, chunk_size, seed=config.seed)
    path = atomic_write_text(storage.significance_tests_csv(experiment), outputs.csv_text([row], significance.COLUMNS))
    atomic_write_text(storage.significance_runs_csv(experiment), outputs.csv_text(runs, SIGNIFICANCE_RUN_COLUMNS))
    context.log.info(
        f"{experiment}: latency p={row['latency_pvalue']:.4f} (Δ {row['latency_mean_delta_s'] * 1e3:+.2f} ms), "
        f"throughput p={row['throughput_pvalue']:.4f} over {row['runs_per_mode']} runs per mode"
    )
    return dg.MaterializeResult(
        metadata={
            **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()},
            "path": dg.MetadataValue.path(str(path)),
        }
    )


@dg.asset(partitions_def=experiment_partitions_def, deps=[constraint_sweep_table], kinds={"png"}, code_version="1")
def tradeoff_plots(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """Latency, peak memory and probe accuracy across the constraint sweep, as three PNG plots."""
    experiment = context.partition_key
    config = catalog.load(experiment).config
    rows = outputs.read_csv_rows(storage.constraint_experiment_csv(experiment))
    paths = plots.draw_tradeoff_plots(
        rows,
        ACCURACY_COLUMN[config.task],
        ACCURACY_LABEL[config.task],
        {name: storage.plot_path(experiment, name) for name in plots.PLOTS},
        experiment,
    )
    return dg.MaterializeResult(
        metadata={
            **{name: dg.MetadataValue.md(md_image(path, name)) for name, path in paths.items()},
            **{f"{name}_path": dg.MetadataValue.path(str(path)) for name, path in paths.items()},
        }
    )


@dg.asset(
    partitions_def=experiment_partitions_def,
    deps=[constraint_sweep_table, significance_tests, tradeoff_plots, BATCH_FEATURES],
    kinds={"json"},
    code_version="1",
)
def run_manifest(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """Reproducibility manifest: config hash, dataset and artifact SHA-256s, seeds, versions, commit, run id."""
    experiment = context.partition_key
    loaded = catalog.load(experiment)
    run_outputs = (FEATURES_PARQUET, FIT_JSON)
    candidates = [
        *(storage.dataset_path(experiment, split) for split in ("raw", "train", "test")),
        storage.fingerprint_path(experiment),
        storage.dataset_meta(experiment),
        *(storage.batch_dir(experiment) / name for name in run_outputs),
        *(directory / name for directory in _constraint_dirs(storage, experiment).values() for name in run_outputs),
        *(storage.constraint_run_json(experiment, key) for key in constraint_partitions_def.get_partition_keys()),
        storage.constraint_experiment_csv(experiment),
        storage.significance_tests_csv(experiment),
        *(storage.plot_path(experiment, name) for name in plots.PLOTS),
    ]
    fingerprint = json.loads(storage.fingerprint_path(experiment).read_text())
    document = manifest.build_manifest(
        storage.root_path,
        experiment,
        loaded.config,
        loaded.path,
        [p for p in candidates if p.exists()],
        context.run.run_id,
        fingerprint,
    )
    path = atomic_write_json(storage.run_manifest_json(experiment), document)
    return dg.MaterializeResult(
        metadata={
            "config_hash": document["config_hash"],
            "dataset_sha256": document["dataset"]["sha256"] or "",
            "files": len(document["files"]),
            "git_commit": document["git"]["commit"] or "unknown",
            "path": dg.MetadataValue.path(str(path)),
        }
    )


def _report_checks(storage: SharedDrive, experiment: str, present: dict, records: dict) -> dict:
    """The pipeline's checks, re-run over the files as they are now (the report states them all)."""
    batch_features = storage.batch_dir(experiment) / FEATURES_PARQUET
    differences = manifest.verify_manifest(storage.run_manifest_json(experiment))
    return {
        "streaming_features_match_batch": {
            k: validation.features_agree(d / FEATURES_PARQUET, batch_features) for k, d in present.items()
        },
        "streaming_features_memory_within_limit": {
            k: validation.memory_compliance(records[k], Constraint.parse(k).memory_limit_mb) for k in present
        },
        "run_manifest_verifies": {"differences": differences, "passed": not differences},
    }


@dg.asset(partitions_def=experiment_partitions_def, deps=[run_manifest], kinds={"json"}, code_version="1")
def run_summary(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """Complete run summary: fingerprint, reproducibility, chunk metrics, sweep, significance, checks."""
    experiment = context.partition_key
    config = catalog.load(experiment).config
    dirs = _constraint_dirs(storage, experiment)
    present = {k: d for k, d in dirs.items() if (d / STREAMING_CHUNKS_JSONL).exists()}
    records = {k: outputs.read_records(d / STREAMING_CHUNKS_JSONL) for k, d in present.items()}
    checks = _report_checks(storage, experiment, present, records)
    significance_rows = outputs.read_csv_rows(storage.significance_tests_csv(experiment))
    batch_dir = storage.batch_dir(experiment)
    report = pipeline_summary.build_report(
        experiment=experiment,
        task=config.task,
        fingerprint=json.loads(storage.fingerprint_path(experiment).read_text()),
        manifest=json.loads(storage.run_manifest_json(experiment).read_text()),
        records_by_constraint=records,
        constraint_rows=[_numbers(r) for r in outputs.read_csv_rows(storage.constraint_experiment_csv(experiment))],
        significance=_numbers(significance_rows[0]) if significance_rows else None,
        batch_summary=outputs.read_summary(batch_dir) if (batch_dir / SUMMARY_JSON).exists() else None,
        checks=checks,
        run_id=context.run.run_id,
    )
    path = atomic_write_json(storage.pipeline_report_json(experiment), report)
    failed = [
        f"{name}:{key}"
        for name, results in checks.items()
        if name != "run_manifest_verifies"
        for key, result in results.items()
        if not result["passed"]
    ]
    return dg.MaterializeResult(
        metadata={
            "constraints": len(present),
            "total_chunks": report["chunk_metrics"]["total_chunks"],
            "failed_checks": dg.MetadataValue.json(failed),
            "path": dg.MetadataValue.path(str(path)),
        }
    )


def _numbers(row: dict) -> dict:
    """CSV strings back to numbers where they are numbers."""
    out = {}
    for key, value in row.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            out[key] = value
            continue
        out[key] = int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    return out
