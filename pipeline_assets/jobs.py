"""Asset jobs; heavy ones carry Slurm tags so the run launcher can send them to the cluster."""

import dagster as dg

from mlgraph.core.tags import slurm_tags

# The heavy work, named once: these jobs and the automation runs of these assets carry SLURM_RUN_TAGS.
TRAINING = dg.AssetSelection.groups("training")
CONSTRAINT_SWEEP = dg.AssetSelection.assets("streaming_features", "constraint_probe_result")
ON_SLURM = TRAINING | CONSTRAINT_SWEEP
SLURM_RUN_TAGS = slurm_tags(kind="training", cpus=2, mem="4G")

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

checkpoint_comparison_report_job = dg.define_asset_job(
    "checkpoint_comparison_report_job",
    selection=dg.AssetSelection.assets("checkpoint_comparison_report"),
    description="Compare an evaluated checkpoint with the trained candidates; HTML report (eval_complete_sensor).",
)

training_job = dg.define_asset_job(
    "training_job",
    selection=TRAINING,
    tags=SLURM_RUN_TAGS,
    description="Train, cross-validate, evaluate and promote one experiment's candidate models.",
)

# Started by drift_sensor: train, promote only a better model, redeploy, and move the drift baseline with it.
retraining_job = dg.define_asset_job(
    "retraining_job",
    selection=TRAINING | dg.AssetSelection.groups("deployment") | dg.AssetSelection.assets("drift_baseline"),
    tags=SLURM_RUN_TAGS,
    description="Retrain one experiment on drift: training, promotion if it beats the champion, deployment, baseline.",
)

constraint_sweep_job = dg.define_asset_job(
    "constraint_sweep_job",
    selection=CONSTRAINT_SWEEP,
    tags=SLURM_RUN_TAGS,
    description="Streaming features and the probe model for one experiment × resource-constraint partition.",
)

analysis_job = dg.define_asset_job(
    "analysis_job",
    selection=dg.AssetSelection.assets(
        "batch_features",
        "constraint_sweep_table",
        "significance_tests",
        "tradeoff_plots",
        "run_manifest",
        "run_summary",
    ),
    description="Batch reference features, the constraint sweep table, significance tests, plots, manifest and report.",
)

JOBS = [
    data_job,
    checkpoint_evaluation_job,
    checkpoint_comparison_report_job,
    training_job,
    constraint_sweep_job,
    analysis_job,
    retraining_job,
]
