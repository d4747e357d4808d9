"""checkpoint_comparison_report: an evaluated external checkpoint against the trained candidates, as one HTML report."""

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from mlgraph.core import evaluation_store
from mlgraph.core.markdown import md_image, md_table
from mlgraph.core.signals import read_signal
from mlgraph.core.tags import TAG_CHECKPOINT_ID
from pipeline_assets.partitions import experiment_partitions_def
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive

if TYPE_CHECKING:  # pandas costs ~0.4 s at import: every run worker and sensor tick would pay it
    import pandas as pd

# The candidates' predictions on the test split (written by evaluation_metrics).
CANDIDATE_DATASET = "test"


class AnalysisReportConfig(dg.Config):
    checkpoint_id: str = Field(
        default="",
        description="Checkpoint to report on; empty means the run's mlgraph/checkpoint_id tag, else the one "
        "in evaluation/{experiment}/.eval_complete, else the latest evaluated checkpoint",
    )
    bootstrap_resamples: int = Field(default=1000, ge=100, description="Resamples per confidence interval")


def _metrics_table(evaluation_dir: Path) -> "pd.DataFrame":
    """Latest test value of every (model, metric), one row per model, through DuckDB over the parquet files."""
    import duckdb

    query = f"""
        SELECT model, metric, value FROM (
            SELECT model, metric, value,
                   row_number() OVER (PARTITION BY model, metric ORDER BY timestamp DESC) AS newest
            FROM {evaluation_store.read_metrics_sql(evaluation_dir)}
            WHERE dataset = 'test')
        WHERE newest = 1 ORDER BY model, metric"""
    with duckdb.connect() as con:
        long = con.sql(query).df()
    wide = long.pivot(index="model", columns="metric", values="value").reset_index()
    wide.columns.name = None
    return wide


def _checkpoint_id(
    context: dg.AssetExecutionContext,
    config: AnalysisReportConfig,
    eval_dir: Path,
    signal_file: Path,
    metrics: "pd.DataFrame",
) -> tuple[str, str]:
    """The checkpoint to report on, and what chose it: run config, run tag, .eval_complete, latest in the metrics."""
    if config.checkpoint_id:
        return config.checkpoint_id, "run config"
    if context.run.tags.get(TAG_CHECKPOINT_ID):
        return context.run.tags[TAG_CHECKPOINT_ID], f"run tag {TAG_CHECKPOINT_ID}"
    if signal_file.is_file():
        done, _ = read_signal(signal_file)
        if done.checkpoint_id:
            return done.checkpoint_id, str(signal_file)
    checkpoints = sorted(m for m in metrics["model"] if m.startswith("checkpoint:"))
    if not checkpoints:
        raise FileNotFoundError(
            f"{eval_dir}: no evaluated checkpoint (no .eval_complete and no checkpoint:* rows in the metrics). "
            "Fix: materialize checkpoint_evaluation for this experiment first."
        )
    return checkpoints[-1].split(":", 1)[1], "latest checkpoint in the metrics"


def _paired_markdown(paired: "pd.DataFrame") -> str:
    if not len(paired):
        return "no candidates to compare"
    return md_table(
        ["candidate", "mean diff", "95% CI", "Holm p", "verdict"],
        [
            [r.candidate, f"{r.mean_diff:.4g}", f"[{r.ci_low:.4g}, {r.ci_high:.4g}]", f"{r.p_holm:.3g}", r.verdict]
            for r in paired.itertuples()
        ],
    )


@dg.asset(
    partitions_def=experiment_partitions_def,
    deps=[dg.AssetKey("checkpoint_evaluation"), dg.AssetKey("evaluation_metrics")],
    kinds={"html", "duckdb"},
    code_version="1",
)
def checkpoint_comparison_report(
    context: dg.AssetExecutionContext,
    config: AnalysisReportConfig,
    storage: SharedDrive,
    catalog: ExperimentCatalog,
) -> dg.MaterializeResult:
    """Checkpoint against trained candidates: bootstrap CIs, paired tests, figures, tables, one HTML report."""
    experiment = context.partition_key
    loaded = catalog.load(experiment)
    eval_dir = storage.evaluation_dir(experiment)
    metrics = _metrics_table(eval_dir)
    ckpt_id, chosen_by = _checkpoint_id(context, config, eval_dir, storage.eval_complete_signal(experiment), metrics)
    checkpoint_predictions = storage.checkpoint_predictions(experiment, ckpt_id)
    if not checkpoint_predictions.is_file():
        raise FileNotFoundError(
            f"{checkpoint_predictions}: predictions of checkpoint {ckpt_id!r} missing (chosen by {chosen_by}). "
            "Fix: materialize checkpoint_evaluation for it."
        )
    candidate_predictions = storage.predictions_path(experiment, CANDIDATE_DATASET)
    from mlgraph.analysis import checkpoint_comparison as comparison

    inputs = comparison.load_inputs(checkpoint_predictions, candidate_predictions)
    for note in inputs.notes:
        context.log.warning(note)
    outputs = comparison.build_report(
        experiment=experiment,
        task=loaded.config.task,
        primary_metric=loaded.config.selection_metric,
        inputs=inputs,
        metrics_table=metrics,
        analysis_dir=storage.analysis_dir(experiment),
        provenance={
            "experiment": experiment,
            "config_hash": loaded.config.config_hash,
            "checkpoint": f"{ckpt_id} (chosen by {chosen_by})",
            "checkpoint predictions": checkpoint_predictions,
            "candidate predictions": candidate_predictions,
            "metrics": evaluation_store.metrics_glob(eval_dir),
        },
        n_boot=config.bootstrap_resamples,
        seed=loaded.config.seed,
    )
    context.log.info(f"wrote {outputs.report} ({len(inputs.candidates)} candidate(s) compared)")
    figure = next(p for p in outputs.figures if p.name == "checkpoint_metric_ci.png")
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.path(str(outputs.report)),
            "checkpoint_id": ckpt_id,
            "candidates_compared": len(inputs.candidates),
            "models_in_metrics": len(metrics),
            "paired_tests": dg.MetadataValue.md(_paired_markdown(outputs.paired)),
            "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in outputs.notes) or "none"),
            "figure": dg.MetadataValue.md(md_image(figure)),
            "tables": dg.MetadataValue.md("\n".join(f"- `{p}`" for p in outputs.tables)),
        }
    )
