"""Data assets: raw dataset, its fingerprint, and the seeded train/test split."""

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from mlgraph.core.atomic import atomic_write_json
from mlgraph.data import datasets, loading, splitting
from pipeline_assets.data.source_assets import EXPERIMENT_SOURCE
from pipeline_assets.partitions import experiment_partitions_def
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive


def _schema_metadata(table: pa.Table) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in table.schema])


# code_version 2: empty and NA-spelled cells are read as nulls in every column type.
@dg.asset(partitions_def=experiment_partitions_def, deps=[EXPERIMENT_SOURCE], kinds={"parquet"}, code_version="2")
def raw_dataset(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """The experiment's source data, validated against its config and stored as raw.parquet."""
    experiment = catalog.load(context.partition_key)
    source = loading.load_source(experiment)
    table = loading.validate_source(source.table, experiment, source.description)
    out = storage.dataset_path(experiment.config.name, "raw")
    digest = datasets.write_parquet(table, out)
    context.log.info(f"{source.description}: {table.num_rows} rows × {table.num_columns} columns → {out}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.num_rows,
            "dagster/column_schema": _schema_metadata(table),
            "columns": table.num_columns,
            # Empty and NA-spelled cells (dataset.na_values) are nulls in every column type.
            "missing_cells": sum(column.null_count for column in table.columns),
            "cells_read_as_missing": source.cells_read_as_missing,
            "bytes": out.stat().st_size,
            "source": source.description,
            "path": dg.MetadataValue.path(str(out)),
        },
        # Same bytes → same data version, so an identical rerun leaves downstream fresh.
        data_version=dg.DataVersion(digest),
    )


@dg.asset(partitions_def=experiment_partitions_def, deps=[raw_dataset], kinds={"json"}, code_version="1")
def dataset_fingerprint(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """SHA-256 of the source bytes, schema hash and row count; its data version drives staleness."""
    experiment = catalog.load(context.partition_key)
    name = experiment.config.name
    fingerprint = datasets.build_fingerprint(
        name, storage.dataset_path(name, "raw"), experiment.source_path, experiment.config.dataset.generator
    )
    out = atomic_write_json(storage.fingerprint_path(name), fingerprint)
    return dg.MaterializeResult(
        metadata={
            "source_sha256": fingerprint["source_sha256"],
            "schema_hash": fingerprint["schema_hash"],
            "dagster/row_count": fingerprint["rows"],
            "path": dg.MetadataValue.path(str(out)),
        },
        data_version=dg.DataVersion(fingerprint["fingerprint"]),
    )


@dg.asset(
    partitions_def=experiment_partitions_def,
    deps=[raw_dataset, dataset_fingerprint],
    kinds={"parquet"},
    code_version="2",  # 2: exclude_columns dropped here; meta.json counts missing cells
)
def train_test_split(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """Seeded train/test split (stratified, chronological or shuffled by task) with optional sampling."""
    experiment = catalog.load(context.partition_key)
    config = experiment.config
    raw = pq.read_table(storage.dataset_path(config.name, "raw")).to_pandas()
    result = splitting.split_dataset(raw, config)
    digests = {}
    for split, frame in (("train", result.train), ("test", result.test)):
        table = pa.Table.from_pandas(frame, preserve_index=False)
        digests[split] = datasets.write_parquet(table, storage.dataset_path(config.name, split))
    meta = {**result.meta, "experiment": config.name, "train_sha256": digests["train"], "test_sha256": digests["test"]}
    atomic_write_json(storage.dataset_meta(config.name), meta)
    context.log.info(
        f"{config.name}: {meta['split_method']} split {meta['train_rows_before']}/{meta['test_rows_before']} "
        f"→ sampled ({meta['strategy']}) {meta['train_rows_after']}/{meta['test_rows_after']}"
    )
    return dg.MaterializeResult(
        metadata={
            "train_rows": meta["train_rows_after"],
            "test_rows": meta["test_rows_after"],
            "split_method": meta["split_method"],
            "sampling": f"{meta['strategy']} (seed {meta['seed']})",
            "config_hash": config.config_hash,
            "dagster/row_count": meta["train_rows_after"] + meta["test_rows_after"],
        },
        data_version=dg.DataVersion(datasets.splits_version(digests["train"], digests["test"])),
    )
