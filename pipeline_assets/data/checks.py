"""Checks on the data assets: observed values next to the bar they are held to."""

import json

import dagster as dg
import pyarrow.parquet as pq

from mlgraph.data.quality import id_like_columns, split_report
from pipeline_assets.data.assets import raw_dataset, train_test_split
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive

MAX_NULL_FRACTION = 0.5


@dg.asset_check(asset=raw_dataset)
def raw_dataset_missing_values(
    context: dg.AssetCheckExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.AssetCheckResult:
    """No feature column is more than half missing (imputation would invent most of it)."""
    excluded = set(catalog.load(context.partition_key).config.exclude_columns)
    table = pq.read_table(storage.dataset_path(context.partition_key, "raw"))
    fractions = {
        name: table[name].null_count / max(table.num_rows, 1) for name in table.column_names if name not in excluded
    }
    worst = max(fractions, key=fractions.get)
    return dg.AssetCheckResult(
        passed=fractions[worst] <= MAX_NULL_FRACTION,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "worst_column": worst,
            "worst_null_fraction": round(fractions[worst], 6),
            "null_fraction_limit": MAX_NULL_FRACTION,
            "columns_with_nulls": sum(1 for f in fractions.values() if f > 0),
        },
    )


@dg.asset_check(asset=raw_dataset)
def raw_dataset_id_columns(
    context: dg.AssetCheckExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.AssetCheckResult:
    """No feature column looks like a row id (unique, monotonic whole numbers such as R's rownames)."""
    loaded = catalog.load(context.partition_key)
    config = loaded.config
    skip = {config.target, config.time_column, *config.exclude_columns} - {None}
    table = pq.read_table(storage.dataset_path(config.name, "raw"))
    found = id_like_columns(table, skip)
    metadata: dict[str, dg.RawMetadataValue] = {
        "id_like_columns": ", ".join(found) or "none",
        "excluded_columns": ", ".join(config.exclude_columns) or "none",
        "rows": table.num_rows,
    }
    if found:
        names = json.dumps([*config.exclude_columns, *found])
        metadata["fix"] = (
            f"If these are row ids rather than features, set `exclude_columns: {names}` in {loaded.path}; "
            "a model fed a row id learns the row order, not the data."
        )
    return dg.AssetCheckResult(passed=not found, severity=dg.AssetCheckSeverity.WARN, metadata=metadata)


@dg.asset_check(asset=train_test_split, blocking=True)
def train_test_split_proportions(
    context: dg.AssetCheckExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.AssetCheckResult:
    """Test share matches the config; classes keep their ratio; forecasting test rows come after train."""
    config = catalog.load(context.partition_key).config
    meta = json.loads(storage.dataset_meta(config.name).read_text())
    train = pq.read_table(storage.dataset_path(config.name, "train"))
    test = pq.read_table(storage.dataset_path(config.name, "test"))
    report = split_report(meta, train, test, config)
    return dg.AssetCheckResult(passed=report.passed, metadata=report.metadata)
