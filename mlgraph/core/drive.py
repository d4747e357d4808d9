"""The shared drive: its root and the name of every file the graph exchanges (one home).

`DrivePaths` is a mixin: `DriveLayout` (plain Python, for the trainer hook and domain code) and the
`SharedDrive` Dagster resource both get every path from it, so a file name is spelled once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlgraph.core.names import CHECKPOINT_ID_RULE, is_checkpoint_id

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_DRIVE_ENV = "SHARED_DRIVE"
DAGSTER_HOME_ENV = "DAGSTER_HOME"
CONFIG_DIR_ENV = "MLGRAPH_CONFIG_DIR"
# Set: Dagster's run, event-log and schedule storage on PostgreSQL (deploy/dagster.postgres.yaml).
POSTGRES_URL_ENV = "MLGRAPH_POSTGRES_URL"

# File names the design documents give; the paths below are the only place they are joined.
TRAINING_COMPLETE = ".training_complete"
EVAL_COMPLETE = ".eval_complete"
EVAL_FAILED = ".eval_failed"
RUN_MANIFEST_JSON = "run_manifest.json"
LINEAGE_JSON = "lineage.json"
DATASET_SPLITS = ("raw", "train", "test")
# The files of one preprocessing run directory (constraints/{constraint}/ or batch/).
FEATURES_PARQUET = "features.parquet"
FIT_JSON = "fit.json"
SUMMARY_JSON = "summary.json"
STREAMING_CHUNKS_JSONL = "streaming_chunks.jsonl"
OPERATOR_PROFILE_CSV = "operator_profile.csv"
RUN_FILES = (FEATURES_PARQUET, FIT_JSON, SUMMARY_JSON, STREAMING_CHUNKS_JSONL, OPERATOR_PROFILE_CSV)
CONSTRAINT_RUN_JSON = "constraint_run.json"
PREDICTION_LOG_JSONL = "prediction_log.jsonl"


def resolve_config_dir(config_dir: str | os.PathLike[str] | None = None) -> Path:
    """The config directory: `config_dir`, else $MLGRAPH_CONFIG_DIR, else <project>/config (read at call time)."""
    return Path(config_dir or os.environ.get(CONFIG_DIR_ENV) or PROJECT_ROOT / "config").resolve()


def default_shared_drive() -> Path:
    """`$SHARED_DRIVE` when set, else `<project>/.shared` (read at call time, never at import)."""
    return Path(os.environ.get(SHARED_DRIVE_ENV) or PROJECT_ROOT / ".shared").resolve()


def checkpoint_source(checkpoint_id: str) -> str:
    """The evaluation-store source of an external checkpoint: names its metric and prediction files.

    Every path built from a checkpoint id comes through here, whoever chose the id (a signal file, a run
    config typed in the UI, a run tag), so the rule is checked here too: no id leads out of its directory."""
    if not isinstance(checkpoint_id, str) or not is_checkpoint_id(checkpoint_id):
        raise ValueError(
            f"checkpoint id {str(checkpoint_id)[:80]!r} is not valid ({CHECKPOINT_ID_RULE}). Fix: give the id "
            "the trainer's completion hook wrote (models/<experiment>/.training_complete, evaluation/<experiment>/"
            ".eval_complete)"
        )
    return f"checkpoint-{checkpoint_id}"


def resolve_drive_root(root: str | os.PathLike[str] | None = None) -> Path:
    """An explicit root wins; otherwise `default_shared_drive()`."""
    return Path(root).resolve() if root else default_shared_drive()


def _run_file(name: str) -> str:
    if name not in RUN_FILES:
        raise ValueError(f"{name!r} is not a run file; expected one of {RUN_FILES}")
    return name


class DrivePaths:
    """Every path on the drive, relative to `root_path` (provided by the concrete class)."""

    @property
    def root_path(self) -> Path:  # pragma: no cover - overridden
        raise NotImplementedError

    def _dir(self, *parts: str) -> Path:
        return self.root_path.joinpath(*parts)

    # datasets/{experiment}/
    def dataset_dir(self, experiment: str) -> Path:
        return self._dir("datasets", experiment)

    def dataset_path(self, experiment: str, name: str) -> Path:
        """`name` is raw, train or test."""
        if name not in DATASET_SPLITS:
            raise ValueError(f"dataset split {name!r} is not one of {DATASET_SPLITS}")
        return self.dataset_dir(experiment) / f"{name}.parquet"

    def dataset_meta(self, experiment: str) -> Path:
        return self.dataset_dir(experiment) / "meta.json"

    def fingerprint_path(self, experiment: str) -> Path:
        return self.dataset_dir(experiment) / "fingerprint.json"

    # artifacts/{experiment}/
    def artifacts_dir(self, experiment: str, *sub: str) -> Path:
        return self._dir("artifacts", experiment, *sub)

    def constraint_dir(self, experiment: str, constraint: str) -> Path:
        return self.artifacts_dir(experiment, "constraints", constraint)

    def constraints_root(self, experiment: str) -> Path:
        return self.artifacts_dir(experiment, "constraints")

    def intermediate_dir(self, experiment: str, constraint: str) -> Path:
        return self.artifacts_dir(experiment, "intermediate", constraint)

    def batch_dir(self, experiment: str) -> Path:
        return self.artifacts_dir(experiment, "batch")

    def constraint_run_json(self, experiment: str, constraint: str) -> Path:
        return self.constraint_dir(experiment, constraint) / CONSTRAINT_RUN_JSON

    def constraint_file(self, experiment: str, constraint: str, name: str) -> Path:
        """One of RUN_FILES in the streaming run directory of an experiment × constraint partition."""
        return self.constraint_dir(experiment, constraint) / _run_file(name)

    def batch_file(self, experiment: str, name: str) -> Path:
        """One of RUN_FILES in the batch run directory of an experiment."""
        return self.batch_dir(experiment) / _run_file(name)

    def constraint_experiment_csv(self, experiment: str) -> Path:
        return self.artifacts_dir(experiment, "benchmarks") / "constraint_experiment.csv"

    def significance_tests_csv(self, experiment: str) -> Path:
        return self.artifacts_dir(experiment, "benchmarks") / "significance_tests.csv"

    def significance_runs_csv(self, experiment: str) -> Path:
        return self.artifacts_dir(experiment, "benchmarks") / "significance_runs.csv"

    def inference_benchmark_csv(self, experiment: str) -> Path:
        return self.artifacts_dir(experiment, "benchmarks") / "inference_benchmark.csv"

    def capacity_dir(self, experiment: str) -> Path:
        """serving_capacity's outputs: the champion's throughput–latency curve, its record, earlier records."""
        return self.artifacts_dir(experiment, "capacity")

    def capacity_curve_csv(self, experiment: str) -> Path:
        return self.capacity_dir(experiment) / "serving_capacity_curve.csv"

    def capacity_json(self, experiment: str) -> Path:
        return self.capacity_dir(experiment) / "serving_capacity.json"

    def capacity_history_jsonl(self, experiment: str) -> Path:
        return self.capacity_dir(experiment) / "serving_capacity_history.jsonl"

    def capacity_plot(self, experiment: str) -> Path:
        return self.capacity_dir(experiment) / "serving_capacity_curve.png"

    def operator_profile_csv(self, experiment: str) -> Path:
        return self.artifacts_dir(experiment, "profiles") / OPERATOR_PROFILE_CSV

    def sweeps_dir(self, experiment: str) -> Path:
        """Hyperparameter sweeps: per swept model spec, trials/ (one directory per trial, keyed by its hash) and,
        under Slurm, queue/ (the worker pools' queues, mlgraph.training.sweep_queue)."""
        return self.artifacts_dir(experiment, "sweeps")

    def sweep_trial_dir(self, experiment: str, spec: str, trial_key: str) -> Path:
        return self.sweeps_dir(experiment) / spec / "trials" / trial_key

    def sweep_results_csv(self, experiment: str) -> Path:
        return self.sweeps_dir(experiment) / "sweep_results.csv"

    def plots_dir(self, experiment: str) -> Path:
        return self.artifacts_dir(experiment, "plots")

    def plot_path(self, experiment: str, name: str) -> Path:
        return self.plots_dir(experiment) / f"{name}.png"

    def run_manifest_json(self, experiment: str) -> Path:
        return self.artifacts_dir(experiment, "metadata") / RUN_MANIFEST_JSON

    def pipeline_report_json(self, experiment: str) -> Path:
        return self.artifacts_dir(experiment, "reports") / "pipeline_report.json"

    def streaming_chunks_jsonl(self, experiment: str) -> Path:
        """Every constraint's chunk records of the experiment, in one file."""
        return self.artifacts_dir(experiment, "reports") / STREAMING_CHUNKS_JSONL

    # models/{experiment}/
    def models_root(self) -> Path:
        return self._dir("models")

    def models_dir(self, experiment: str) -> Path:
        return self.models_root() / experiment

    def candidates_manifest(self, experiment: str) -> Path:
        return self.models_dir(experiment) / "candidates.json"

    def oof_predictions(self, experiment: str) -> Path:
        return self.models_dir(experiment) / "oof_predictions.parquet"

    def thresholds_json(self, experiment: str) -> Path:
        return self.models_dir(experiment) / "thresholds.json"

    def threshold_txt(self, experiment: str) -> Path:
        return self.models_dir(experiment) / "threshold.txt"

    def lineage_json(self, experiment: str) -> Path:
        return self.models_dir(experiment) / LINEAGE_JSON

    def champions_dir(self, experiment: str) -> Path:
        return self.models_dir(experiment) / "champions"

    def champion_bundle(self, experiment: str, version: str) -> Path:
        """champions/v{version}/: a promoted model with its threshold.txt and lineage.json, kept as promoted."""
        return self.champions_dir(experiment) / f"v{version}"

    def drift_baseline_json(self, experiment: str) -> Path:
        """The current champion's training distribution (drift_baseline), naming the version it was computed for."""
        return self.models_dir(experiment) / "drift_baseline.json"

    def onnx_dir(self, experiment: str) -> Path:
        return self.models_dir(experiment) / "onnx"

    def onnx_model_path(self, experiment: str) -> Path:
        return self.onnx_dir(experiment) / "model.onnx"

    def onnx_int8_model_path(self, experiment: str) -> Path:
        return self.onnx_dir(experiment) / "model_int8.onnx"

    def export_report_json(self, experiment: str) -> Path:
        return self.onnx_dir(experiment) / "export_report.json"

    def quantization_report_json(self, experiment: str) -> Path:
        return self.onnx_dir(experiment) / "quantization_report.json"

    def training_complete_signal(self, experiment: str) -> Path:
        return self.models_dir(experiment) / TRAINING_COMPLETE

    # evaluation/{experiment}/
    def evaluation_root(self) -> Path:
        return self._dir("evaluation")

    def evaluation_dir(self, experiment: str) -> Path:
        return self.evaluation_root() / experiment

    def predictions_path(self, experiment: str, dataset: str) -> Path:
        return self.evaluation_dir(experiment) / "predictions" / f"{dataset}.parquet"

    def checkpoint_predictions(self, experiment: str, checkpoint_id: str, dataset: str = "test") -> Path:
        """An external checkpoint's predictions (the trained candidates own {dataset}.parquet)."""
        return self.predictions_path(experiment, f"{dataset}-{checkpoint_source(checkpoint_id)}")

    def eval_complete_signal(self, experiment: str) -> Path:
        return self.evaluation_dir(experiment) / EVAL_COMPLETE

    def eval_failed_signal(self, experiment: str) -> Path:
        return self.evaluation_dir(experiment) / EVAL_FAILED

    # analysis/{experiment}/
    def analysis_dir(self, experiment: str) -> Path:
        return self._dir("analysis", experiment)

    # serving/{experiment}/: the prediction log (mlgraph.core.prediction_log names its rotated files)
    def serving_dir(self, experiment: str) -> Path:
        return self._dir("serving", experiment)

    def prediction_log_path(self, experiment: str) -> Path:
        return self.serving_dir(experiment) / PREDICTION_LOG_JSONL

    def drift_report_json(self, experiment: str) -> Path:
        """The last materialized drift_report (the service and the sensor compute theirs afresh)."""
        return self.artifacts_dir(experiment, "monitoring") / "drift_report.json"

    # Delayed labels (mlgraph/monitoring/labels.py): the store beside the log, the drop-in folder for files.
    def labels_store_path(self, experiment: str) -> Path:
        return self.serving_dir(experiment) / "labels.jsonl"

    def labels_inbox_dir(self, experiment: str) -> Path:
        """Labels files (CSV/parquet: request id, label, optional time) other machines drop for the sensor."""
        return self.serving_dir(experiment) / "labels"

    def live_performance_json(self, experiment: str) -> Path:
        """The last live_performance report (realized metrics from delayed labels, the drop check)."""
        return self.artifacts_dir(experiment, "monitoring") / "live_performance.json"

    def live_performance_csv(self, experiment: str) -> Path:
        return self.artifacts_dir(experiment, "monitoring") / "live_performance.csv"

    # model-promotion/global/{config_hash}/
    def promotion_dir(self, config_hash: str) -> Path:
        return self._dir("model-promotion", "global", config_hash)

    # state/, mlflow-artifacts/, logs/
    def state_dir(self) -> Path:
        return self._dir("state")

    def dagster_home(self) -> Path:
        return self.state_dir() / "dagster"

    def mlflow_db(self) -> Path:
        return self.state_dir() / "mlflow.db"

    def mlflow_auth_db(self) -> Path:
        """The MLflow server's basic-auth users (password hashes only): apart from the tracking store."""
        return self.state_dir() / "mlflow-auth.db"

    def warehouse_db(self) -> Path:
        return self.state_dir() / "warehouse.duckdb"

    def mlflow_artifacts_dir(self) -> Path:
        return self._dir("mlflow-artifacts")

    def logs_root(self) -> Path:
        return self._dir("logs")

    def alerts_jsonl(self) -> Path:
        return self.logs_root() / "alerts.jsonl"


@dataclass(frozen=True)
class DriveLayout(DrivePaths):
    """The drive layout outside Dagster (trainer hook, domain modules, CLI)."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str] | None = None) -> DriveLayout:
        return cls(resolve_drive_root(root))

    @property
    def root_path(self) -> Path:
        return self.root


def resolve_dagster_home(drive: DrivePaths | None = None) -> Path:
    """$DAGSTER_HOME when set, else the drive's state/dagster (read at call time)."""
    return Path(os.environ.get(DAGSTER_HOME_ENV) or (drive or DriveLayout.at()).dagster_home()).resolve()
