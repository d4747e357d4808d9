"""Checks on the streaming features: they equal the batch features, and no chunk broke its memory limit."""

import dagster as dg

from mlgraph.core.constraints import Constraint
from mlgraph.core.drive import FEATURES_PARQUET, STREAMING_CHUNKS_JSONL
from mlgraph.preprocessing import outputs, validation
from pipeline_assets.partitions import experiment_from_constraints_mapping
from pipeline_assets.preprocessing.assets import batch_features, streaming_features
from resources.storage import SharedDrive


def _keys(context: dg.AssetCheckExecutionContext) -> tuple[str, str]:
    keys = context.multi_partition_key.keys_by_dimension
    return keys["experiment"], keys["constraint"]


@dg.asset_check(
    asset=streaming_features,
    blocking=True,
    # Read from the drive, not loaded as an input: declared so the graph shows the check depends on it.
    additional_deps=[dg.AssetDep(batch_features, partition_mapping=experiment_from_constraints_mapping)],
)
def streaming_features_match_batch(context: dg.AssetCheckExecutionContext, storage: SharedDrive) -> dg.AssetCheckResult:
    """Same columns, same rows and values within 1e-9 as batch_features (whole-data statistics)."""
    experiment, constraint = _keys(context)
    report = validation.features_agree(
        storage.constraint_file(experiment, constraint, FEATURES_PARQUET),
        storage.batch_file(experiment, FEATURES_PARQUET),
    )
    metadata = {
        "max_abs_diff": float(report.get("max_abs_diff", float("inf"))),
        "max_abs_diff_limit": validation.TOLERANCE,
        "same_columns": bool(report.get("same_columns", False)),
        "same_rows": bool(report.get("same_rows", False)),
        "rows": dg.MetadataValue.json(report.get("rows", [])),
    }
    if report.get("missing_files"):
        metadata["missing_files"] = dg.MetadataValue.json(report["missing_files"])
        metadata["fix"] = f"materialize batch_features for partition {experiment!r} first"
    if report.get("mismatched_columns"):
        metadata["mismatched_columns"] = dg.MetadataValue.json(report["mismatched_columns"])
    return dg.AssetCheckResult(passed=bool(report["passed"]), metadata=metadata)


@dg.asset_check(asset=streaming_features)
def streaming_features_memory_within_limit(
    context: dg.AssetCheckExecutionContext, storage: SharedDrive
) -> dg.AssetCheckResult:
    """After halving and retrying, every accepted chunk's working memory is within the memory limit."""
    experiment, constraint = _keys(context)
    records = outputs.read_records(storage.constraint_file(experiment, constraint, STREAMING_CHUNKS_JSONL))
    report = validation.memory_compliance(records, Constraint.parse(constraint).memory_limit_mb)
    return dg.AssetCheckResult(passed=report["passed"], metadata={k: v for k, v in report.items() if k != "passed"})
