"""Data assets: raw dataset, its fingerprint, and the seeded train/test split."""

import hashlib
import json

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_assets.data import loading, splitting
from pipeline_assets.partitions import experiment_partitions_def
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive
from core.atomic import atomic_path, atomic_write_json


def write_parquet(table: pa.Table, path) -> str:
    """Write atomically with fixed writer options (same table → same bytes); return the SHA-256."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)
    return loading.sha256_file(path)


def _schema_metadata(table: pa.Table) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in table.schema])


@dg.asset(partitions_def=experiment_partitions_def, group_name="data", kinds={"parquet"})
def raw_dataset(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """The experiment's source data, validated against its config and stored as raw.parquet."""
    experiment = catalog.load(context.partition_key)
    source = loading.load_source(experiment)
    table = loading.validate_source(source.table, experiment, source.description)
    out = storage.dataset_path(experiment.config.name, "raw")
    digest = write_parquet(table, out)
    context.log.info(f"{source.description}: {table.num_rows} rows × {table.num_columns} columns → {out}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.num_rows,
            "dagster/column_schema": _schema_metadata(table),
            "columns": table.num_columns,
            "bytes": out.stat().st_size,
            "source": source.description,
            "path": dg.MetadataValue.path(str(out)),
        },
        # Same bytes → same data version, so an identical rerun leaves downstream fresh.
        data_version=dg.DataVersion(digest),
    )


@dg.asset(partitions_def=experiment_partitions_def, group_name="data", deps=[raw_dataset], kinds={"json"})
def dataset_fingerprint(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """SHA-256 of the source bytes, schema hash and row count; its data version drives staleness."""
    experiment = catalog.load(context.partition_key)
    name = experiment.config.name
    raw_path = storage.dataset_path(name, "raw")
    schema = pq.read_schema(raw_path)
    raw_sha = loading.sha256_file(raw_path)
    source_file = experiment.source_path
    fingerprint = {
        "experiment": name,
        "source": str(source_file) if source_file else f"generator:{experiment.config.dataset.generator}",
        # Generated data has no file of its own: its canonical bytes are raw.parquet.
        "source_sha256": loading.sha256_file(source_file) if source_file else raw_sha,
        "raw_parquet_sha256": raw_sha,
        "schema_hash": loading.schema_hash(schema),
        "rows": pq.read_metadata(raw_path).num_rows,
        "columns": len(schema.names),
    }
    fingerprint["fingerprint"] = hashlib.sha256(
        json.dumps(fingerprint, sort_keys=True).encode("utf-8")
    ).hexdigest()
    out = atomic_write_json(storage.dataset_dir(name) / "fingerprint.json", fingerprint)
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
    group_name="data",
    deps=[raw_dataset, dataset_fingerprint],
    kinds={"parquet"},
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
        digests[split] = write_parquet(table, storage.dataset_path(config.name, split))
    meta = {**result.meta, "experiment": config.name, "train_sha256": digests["train"], "test_sha256": digests["test"]}
    atomic_write_json(storage.dataset_dir(config.name) / "meta.json", meta)
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
        data_version=dg.DataVersion(hashlib.sha256((digests["train"] + digests["test"]).encode()).hexdigest()),
    )
