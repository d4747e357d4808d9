"""Asset jobs; heavy ones carry Slurm tags so the run launcher can send them to the cluster."""

import dagster as dg

from core.tags import slurm_tags

data_job = dg.define_asset_job(
    "data_job",
    selection=dg.AssetSelection.groups("data"),
    description="Load, fingerprint and split one experiment's data.",
)

checkpoint_evaluation_job = dg.define_asset_job(
    "checkpoint_evaluation_job",
    selection=dg.AssetSelection.assets("checkpoint_evaluation"),
    description="Evaluate an externally trained checkpoint on its experiment's test split (training_complete_sensor).",
)

analysis_report_job = dg.define_asset_job(
    "analysis_report_job",
    selection=dg.AssetSelection.assets("analysis_report"),
    description="Compare an evaluated checkpoint with the trained candidates; HTML report (eval_complete_sensor).",
)

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.groups("training"),
    tags=slurm_tags(kind="training", cpus=2, mem="4G"),
    description="Train, cross-validate, evaluate and promote one experiment's candidate models.",
)

constraint_sweep_job = dg.define_asset_job(
    "constraint_sweep_job",
    selection=dg.AssetSelection.assets("streaming_features", "constraint_run"),
    tags=slurm_tags(kind="training", cpus=2, mem="4G"),
    description="Streaming features and the probe model for one experiment × resource-constraint partition.",
)

analysis_job = dg.define_asset_job(
    "analysis_job",
    selection=dg.AssetSelection.assets(
        "batch_features", "constraint_experiment", "significance_tests", "tradeoff_plots", "run_manifest",
        "pipeline_report",
    ),
    description="Batch reference features, the constraint sweep table, significance tests, plots, manifest and report.",
)

JOBS = [data_job, checkpoint_evaluation_job, analysis_report_job, training_job, constraint_sweep_job, analysis_job]
