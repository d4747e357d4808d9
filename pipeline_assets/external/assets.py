"""External checkpoints: reported by the training sensor, evaluated like the trained candidates."""

import os
import traceback
from pathlib import Path

import dagster as dg
from pydantic import Field

from mlgraph.core import evaluation_store
from mlgraph.core.atomic import atomic_write_text
from mlgraph.core.markdown import md_table
from mlgraph.core.signals import SignalError, TrainingComplete, checkpoint_id, read_signal, resolve_checkpoint, utc_now
from mlgraph.core.tags import (
    SLURM_JOB_ID_TAG,
    TAG_CHECKPOINT_PATH,
    TAG_MLFLOW_RUN_ID,
    TAG_SIGNAL_FILE,
    TAG_TRAINING_MLFLOW_RUN_ID,
)
from mlgraph.external import evaluation
from pipeline_assets.partitions import experiment_partitions_def
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive
from resources.tracking import MlflowTracking

# Materialized by no run: training_complete_sensor reports each checkpoint with its signal's metadata.
external_checkpoint = dg.AssetSpec(
    "external_checkpoint",
    partitions_def=experiment_partitions_def,
    description="A checkpoint trained outside Dagster, reported by its .training_complete signal file.",
    kinds={"pytorch"},
)


class CheckpointEvaluationConfig(dg.Config):
    checkpoint_path: str = Field(
        default="",
        description="Checkpoint directory; empty means the run's mlgraph/checkpoint_path tag, "
        "else the one named by models/{experiment}/.training_complete",
    )


def _job_id(context: dg.AssetExecutionContext) -> str:
    # Under Slurm the job id is the id operators look up; otherwise the Dagster run id is.
    return os.environ.get("SLURM_JOB_ID") or context.run.tags.get(SLURM_JOB_ID_TAG) or context.run.run_id


def _resolve(
    context: dg.AssetExecutionContext, config: CheckpointEvaluationConfig, storage: SharedDrive, experiment: str
) -> tuple[Path, TrainingComplete | None]:
    """The checkpoint to evaluate: run config, then the sensor's run tag, then the current signal file."""
    drive = storage.root_path
    signal = None
    signal_file = context.run.tags.get(TAG_SIGNAL_FILE) or str(storage.training_complete_signal(experiment))
    if Path(signal_file).is_file():
        try:
            signal, _ = read_signal(signal_file)
        except ValueError as exc:
            # The run was asked for an explicit checkpoint; a newer broken signal only costs its metadata.
            context.log.warning(str(exc))
    raw = config.checkpoint_path or context.run.tags.get(TAG_CHECKPOINT_PATH)
    if not raw:
        if signal is None:
            raise FileNotFoundError(
                f"{signal_file}: no usable training signal and no checkpoint given. Fix: run the training "
                "completion hook, or set config checkpoint_path on this run."
            )
        raw = signal.checkpoint_path
    source = "run config checkpoint_path" if config.checkpoint_path else signal_file
    checkpoint = resolve_checkpoint(drive, raw, source=source)
    if signal is not None and _names(drive, signal, signal_file) != checkpoint:
        # The file now names another (newer) checkpoint; its metadata does not describe this one.
        context.log.info(f"{signal_file} now names {signal.checkpoint_path}; evaluating {checkpoint} as asked")
        signal = None
    return checkpoint, signal


def _names(drive: Path, signal: TrainingComplete, signal_file: str) -> Path | None:
    try:
        return resolve_checkpoint(drive, signal.checkpoint_path, source=signal_file)
    except SignalError:
        return None


@dg.asset(
    partitions_def=experiment_partitions_def,
    deps=[external_checkpoint, dg.AssetKey("train_test_split")],
    kinds={"pytorch", "parquet"},
    code_version="1",
)
def checkpoint_evaluation(
    context: dg.AssetExecutionContext,
    config: CheckpointEvaluationConfig,
    storage: SharedDrive,
    catalog: ExperimentCatalog,
    mlflow: MlflowTracking,
) -> dg.MaterializeResult:
    """The reported checkpoint scored on the experiment's test split, in the candidates' evaluation schema."""
    experiment = context.partition_key
    started = utc_now()
    job_id = _job_id(context)
    checkpoint_path: Path | None = None
    try:
        checkpoint_path, signal = _resolve(context, config, storage, experiment)
        ckpt_id = checkpoint_id(checkpoint_path)
        loaded = catalog.load(experiment)
        config_hash = loaded.config.config_hash
        test_path = storage.dataset_path(experiment, "test")
        context.log.info(f"evaluating {checkpoint_path} on {test_path}")
        result = evaluation.evaluate_checkpoint(checkpoint_path, ckpt_id, test_path, loaded.config.target)
        metric_files = evaluation_store.write_metrics(
            storage.evaluation_dir(experiment),
            evaluation.metric_records(result, experiment, config_hash, started),
            source=evaluation.source_name(ckpt_id),
        )
        predictions = storage.checkpoint_predictions(experiment, ckpt_id)
        evaluation.write_predictions(result.predictions, predictions)
        mlflow_run_id = evaluation.log_to_mlflow(
            mlflow.tracker(experiment), result, context.run.run_id, context.run.tags.get(TAG_TRAINING_MLFLOW_RUN_ID)
        )
        context.instance.add_run_tags(context.run.run_id, {TAG_MLFLOW_RUN_ID: mlflow_run_id})
        done = evaluation.completion_signal(
            result, experiment, job_id, started, checkpoint_path, context.run.run_id, mlflow_run_id, config_hash
        )
        # Written last: analysis may start the moment this file appears.
        signal_out = atomic_write_text(storage.eval_complete_signal(experiment), done.to_json())
    except Exception as exc:
        _write_failure(context, storage, experiment, job_id, checkpoint_path, exc)
        raise
    summary = evaluation.summary_metrics(result.metrics)
    context.log.info(f"{result.model}: {summary} on {result.rows} test rows; wrote {signal_out}")
    metrics = sorted(result.metrics.items())
    return dg.MaterializeResult(
        metadata={
            "checkpoint_id": ckpt_id,
            "checkpoint_path": dg.MetadataValue.path(str(checkpoint_path)),
            "model": result.model,
            "task": f"{result.task} ({len(result.classes)} classes)" if result.multiclass else result.task,
            "architecture": dg.MetadataValue.json(result.metadata.get("architecture", {})),
            "test_rows": result.rows,
            # Summary metrics as plottable values; per-class ones (k of each) only in the table below.
            **{f"test_{k}": float(v) for k, v in sorted(summary.items())},
            "metrics": dg.MetadataValue.md(md_table(["metric", "value"], [(k, f"{v:.6g}") for k, v in metrics])),
            "metric_files": len(metric_files),
            "predictions": dg.MetadataValue.path(str(predictions)),
            "eval_complete": dg.MetadataValue.path(str(signal_out)),
            "eval_seconds": round(result.seconds, 3),
            "job_id": job_id,
            "mlflow_run_id": mlflow_run_id,
            "training_signal": dg.MetadataValue.json(signal.model_dump(mode="json", exclude_none=True))
            if signal is not None
            else "none",
            "config_hash": config_hash,
        }
    )


def _write_failure(
    context: dg.AssetExecutionContext,
    storage: SharedDrive,
    experiment: str,
    job_id: str,
    checkpoint_path: Path | None,
    exc: BaseException,
) -> None:
    """Record a critical failure as evaluation/{experiment}/.eval_failed; the caller re-raises."""
    failed = evaluation.failure_signal(
        experiment,
        job_id,
        exc,
        traceback.format_exc(),
        checkpoint_id(checkpoint_path) if checkpoint_path else None,
        checkpoint_path,
        context.run.run_id,
    )
    target = storage.eval_failed_signal(experiment)
    try:
        path = atomic_write_text(target, failed.to_json())
    except OSError as write_exc:
        context.log.error(f"could not write {target}: {write_exc}")
        return
    context.log.error(f"evaluation failed ({type(exc).__name__}: {exc}); wrote {path}")
