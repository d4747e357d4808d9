"""Checks on the data assets: observed values next to the bar they are held to."""

import json

import dagster as dg
import pyarrow.parquet as pq

from pipeline_assets.data.assets import raw_dataset, train_test_split
from pipeline_assets.data.quality import split_report
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive

MAX_NULL_FRACTION = 0.5


@dg.asset_check(asset=raw_dataset)
def raw_dataset_missing_values(context: dg.AssetCheckExecutionContext, storage: SharedDrive) -> dg.AssetCheckResult:
    """No column is more than half missing (imputation would invent most of it)."""
    table = pq.read_table(storage.dataset_path(context.partition_key, "raw"))
    fractions = {name: table[name].null_count / max(table.num_rows, 1) for name in table.column_names}
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

