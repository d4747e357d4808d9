"""Checks on the analysis assets: the manifest verifies, the sweep covers the constraint grid."""

import dagster as dg

from mlgraph.analysis import manifest
from mlgraph.preprocessing import outputs
from pipeline_assets.analysis.assets import constraint_sweep_table, run_manifest
from pipeline_assets.partitions import constraint_partitions_def
from resources.storage import SharedDrive


@dg.asset_check(asset=run_manifest, blocking=True)
def run_manifest_verifies(context: dg.AssetCheckExecutionContext, storage: SharedDrive) -> dg.AssetCheckResult:
    """Every SHA-256 the manifest records matches the file on the drive right after it was written."""
    differences = manifest.verify_manifest(storage.run_manifest_json(context.partition_key))
    return dg.AssetCheckResult(
        passed=not differences,
        metadata={
            "differences": len(differences),
            "differences_limit": 0,
            "details": dg.MetadataValue.json(differences),
        },
    )


@dg.asset_check(asset=constraint_sweep_table)
def constraint_sweep_table_covers_grid(
    context: dg.AssetCheckExecutionContext, storage: SharedDrive
) -> dg.AssetCheckResult:
    """The sweep table has a row for every constraint partition of config/constraints.yaml."""
    rows = outputs.read_csv_rows(storage.constraint_experiment_csv(context.partition_key))
    expected = constraint_partitions_def.get_partition_keys()
    missing = sorted(set(expected) - {r["constraint"] for r in rows})
    return dg.AssetCheckResult(
        passed=not missing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"constraints": len(rows), "expected": len(expected), "missing": dg.MetadataValue.json(missing)},
    )
