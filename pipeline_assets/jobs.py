"""Asset jobs; heavy ones carry Slurm tags so the run launcher can send them to the cluster."""

from __future__ import annotations

import dagster as dg

from pipeline_assets.partitions import experiment_partitions_def

data_job = dg.define_asset_job(
    "data_job",
    selection=dg.AssetSelection.groups("data"),
    partitions_def=experiment_partitions_def,
    description="Load, fingerprint and split one experiment's data.",
)

JOBS = [data_job]
