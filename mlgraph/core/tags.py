"""Run-tag names, one home: set by sensors, jobs and the Slurm launcher; read by assets and the CLI."""

from __future__ import annotations

from collections.abc import Mapping

# Routing: runs tagged `mlgraph/compute: slurm` go to the cluster (mlgraph.launcher.slurm_launcher).
COMPUTE_TAG = "mlgraph/compute"
COMPUTE_SLURM = "slurm"
COMPUTE_LOCAL = "local"

# Set by the Slurm run launcher when it submits a run.
SLURM_JOB_ID_TAG = "slurm/job_id"
SLURM_LOG_TAG = "slurm/log"
SLURM_SCRIPT_TAG = "slurm/script"
SLURM_STATE_TAG = "slurm/state"
# Slurm's own account of a finished job, added to the run by mlgraph/launcher/job_end.py.
SLURM_ELAPSED_TAG = "slurm/elapsed"
SLURM_CPUS_ALLOC_TAG = "slurm/cpus_alloc"
SLURM_MEM_REQ_TAG = "slurm/mem_req"
SLURM_MAX_RSS_TAG = "slurm/max_rss"
SLURM_EXIT_CODE_TAG = "slurm/exit_code"
# Per-run resource requests read by the launcher (`slurm/<name>`).
SLURM_RESOURCE_NAMES = ("partition", "cpus", "mem", "time", "gres", "kind")
SLURM_RESOURCE_TAGS = tuple(f"slurm/{name}" for name in SLURM_RESOURCE_NAMES)
SLURM_TIME_TAG, SLURM_KIND_TAG = "slurm/time", "slurm/kind"
# Set by the warm local launcher (mlgraph/launcher/warm_local.py): which process on which host runs the run.
RUN_WORKER_PID_TAG = "mlgraph/worker_pid"
RUN_WORKER_HOST_TAG = "mlgraph/worker_host"
RUN_WORKER_STARTED_TAG = "mlgraph/worker_started"

# Link a Dagster run to the signal that caused it (set by the signal sensors, read by the assets).
TAG_TRIGGER = "mlgraph/trigger"
TAG_SIGNAL_FILE = "mlgraph/signal_file"
TAG_SIGNAL_SHA256 = "mlgraph/signal_sha256"
TAG_EXPERIMENT = "mlgraph/experiment"
TAG_CONFIG_HASH = "mlgraph/config_hash"
TAG_CHECKPOINT_ID = "mlgraph/checkpoint_id"
TAG_CHECKPOINT_PATH = "mlgraph/checkpoint_path"
TAG_EVAL_JOB_ID = "mlgraph/eval_job_id"
TAG_EVAL_RUN_ID = "mlgraph/eval_run_id"
TAG_MLFLOW_RUN_ID = "mlgraph/mlflow_run_id"
TAG_TRAINING_MLFLOW_RUN_ID = "mlgraph/training_mlflow_run_id"
# Drift-triggered retraining (sensors/drift.py): TAG_TRIGGER is TRIGGER_DRIFT, with why and over which window.
TRIGGER_DRIFT = "drift"
TAG_RETRAIN_REASON = "mlgraph/retrain_reason"
TAG_DRIFT_WINDOW = "mlgraph/drift_window"  # "<first time>/<last time>" of the logged predictions read
TAG_DRIFT_WINDOW_ROWS = "mlgraph/drift_window_rows"
RETRAINING_TAGS = (TAG_TRIGGER, TAG_RETRAIN_REASON, TAG_DRIFT_WINDOW, TAG_DRIFT_WINDOW_ROWS)

# Dagster's own: the run key a sensor gave a run (looked up to avoid requesting the same run twice).
DAGSTER_RUN_KEY_TAG = "dagster/run_key"
# Dagster's own: a run's partition key (`dagster/partition/<dimension>` per dimension of a multi-partition).
DAGSTER_PARTITION_TAG = "dagster/partition"
# A multi-partitioned run names each dimension: dagster/partition/<dimension>.
DAGSTER_EXPERIMENT_DIMENSION_TAG = f"{DAGSTER_PARTITION_TAG}/experiment"
# Where a run names its experiment, first match wins: the sensors' tag, a multi-partitioned run's
# experiment dimension, an experiment-partitioned run's partition.
EXPERIMENT_TAGS = (TAG_EXPERIMENT, DAGSTER_EXPERIMENT_DIMENSION_TAG, DAGSTER_PARTITION_TAG)


def experiment_tag(tags: Mapping[str, str]) -> tuple[str, str] | None:
    """(tag, experiment) of the first of EXPERIMENT_TAGS a run carries, or None."""
    for tag in EXPERIMENT_TAGS:
        if tags.get(tag):
            return tag, tags[tag]
    return None


def slurm_tags(cpus: int = 2, mem: str = "4G", time: str = "01:00:00", kind: str = "training") -> dict[str, str]:
    """Tags that route a run to Slurm with these resources (`kind` picks the log directory)."""
    return {
        COMPUTE_TAG: COMPUTE_SLURM,
        "slurm/cpus": str(cpus),
        "slurm/mem": mem,
        "slurm/time": time,
        "slurm/kind": kind,
    }
