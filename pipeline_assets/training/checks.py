"""Checks on the training assets (the baseline gate lives in champion_model: it decides promotion)."""

import dagster as dg
import pandas as pd

from pipeline_assets.training.assets import candidate_models
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive

MAX_OVERLAP_ROWS = 0


def overlapping_rows(train: pd.DataFrame, test: pd.DataFrame) -> int:
    """Test rows whose every column value also occurs as a whole row of the training data."""
    columns = list(test.columns)
    if list(train.columns) != columns:
        train = train[columns]
    train_hashes = set(pd.util.hash_pandas_object(train, index=False).tolist())
    return int(sum(h in train_hashes for h in pd.util.hash_pandas_object(test, index=False).tolist()))


@dg.asset_check(asset=candidate_models)
def candidate_models_no_test_leakage(
    context: dg.AssetCheckExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.AssetCheckResult:
    """No test row appears in the data the candidates were trained on (forecasting: test is strictly later)."""
    config = catalog.load(context.partition_key).config
    train = pd.read_parquet(storage.dataset_path(config.name, "train"))
    test = pd.read_parquet(storage.dataset_path(config.name, "test"))
    overlap = overlapping_rows(train, test)
    metadata: dict = {"overlapping_rows": overlap, "overlapping_rows_limit": MAX_OVERLAP_ROWS, "test_rows": len(test)}
    passed = overlap <= MAX_OVERLAP_ROWS
    if config.task == "forecasting" and len(train) and len(test):
        last_train, first_test = train[config.time_column].max(), test[config.time_column].min()
        metadata.update({"last_train_time": str(last_train), "first_test_time": str(first_test)})
        passed = passed and bool(first_test > last_train)
    return dg.AssetCheckResult(passed=passed, metadata=metadata)
