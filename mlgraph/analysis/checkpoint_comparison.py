"""Compare an external checkpoint with the experiment's trained candidates on the same test rows.

Plain Python (numpy, pandas, pyarrow): read the predictions that line up row for row, then write
bootstrap intervals per model and a paired test per candidate (`checkpoint_stats`), the figures
(`checkpoint_figures`), CSV and LaTeX tables and one self-contained HTML report (`checkpoint_report`).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mlgraph.analysis.checkpoint_figures import draw_figures
from mlgraph.analysis.checkpoint_report import latex_table, render_html
from mlgraph.analysis.checkpoint_stats import (
    ModelPredictions,
    bootstrap_ci,
    holm,
    paired_test,
    per_row_loss,
    zero_one_loss,
)
from mlgraph.core.atomic import atomic_path, atomic_write_bytes, atomic_write_text

# Columns of a wide candidate predictions file that are not a model's predictions.
_NON_MODEL_COLUMNS = {"row", "index", "row_id", "y_true", "target", "dataset", "experiment", "timestamp"}
INTERVAL_COLUMNS = ["model", "metric", "estimate", "ci_low", "ci_high"]
PAIRED_COLUMNS = ["candidate", "loss", "mean_diff", "ci_low", "ci_high", "wilcoxon_statistic", "p_value", "n"]


@dataclass
class ComparisonInputs:
    checkpoint: ModelPredictions
    candidates: list[ModelPredictions]
    notes: list[str] = field(default_factory=list)


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("row", kind="stable") if "row" in frame.columns else frame


def _score_column(frame: pd.DataFrame) -> str | None:
    for name in ("y_score", "y_proba", "probability", "score"):
        if name in frame.columns and frame[name].notna().any():
            return name
    return None


def read_candidate_predictions(path: Path) -> list[ModelPredictions]:
    """Candidates' predictions: long (model, y_true, y_pred[, y_score][, row]) or wide (y_true + one column per model)."""
    frame = pq.read_table(path).to_pandas()
    if "y_true" not in frame.columns:
        raise ValueError(f"{path}: column 'y_true' missing; expected the evaluation predictions schema")
    pred_col = next((c for c in ("y_pred", "prediction", "pred") if c in frame.columns), None)
    if "model" in frame.columns and pred_col:
        out = []
        for model, group in frame.groupby("model", sort=True):
            group = _ordered(group)
            score = _score_column(group)
            y_pred, y_score = group[pred_col].to_numpy("float64"), group[score].to_numpy("float64") if score else None
            if "label" in group.columns:
                # The training group's classification layout: y_pred holds the score, label the class.
                y_pred, y_score = group["label"].to_numpy("float64"), y_pred
            out.append(
                ModelPredictions(
                    model=str(model),
                    y_true=group["y_true"].to_numpy("float64"),
                    y_pred=y_pred,
                    y_score=y_score,
                    source=str(path),
                )
            )
        return out
    frame = _ordered(frame)
    models = [c for c in frame.columns if c not in _NON_MODEL_COLUMNS and pd.api.types.is_numeric_dtype(frame[c])]
    return [
        ModelPredictions(
            model=c,
            y_true=frame["y_true"].to_numpy("float64"),
            y_pred=frame[c].to_numpy("float64"),
            y_score=None,
            source=str(path),
        )
        for c in models
    ]


def load_inputs(checkpoint_predictions: Path, candidate_predictions: Path | None) -> ComparisonInputs:
    """The checkpoint's predictions and every candidate's that lines up with them row for row."""
    checkpoint_frame = _ordered(pq.read_table(checkpoint_predictions).to_pandas())
    score = _score_column(checkpoint_frame)
    checkpoint = ModelPredictions(
        model=str(checkpoint_frame["model"].iloc[0]) if len(checkpoint_frame) else "checkpoint",
        y_true=checkpoint_frame["y_true"].to_numpy("float64"),
        y_pred=checkpoint_frame["y_pred"].to_numpy("float64"),
        y_score=checkpoint_frame[score].to_numpy("float64") if score else None,
        source=str(checkpoint_predictions),
    )
    inputs = ComparisonInputs(checkpoint=checkpoint, candidates=[])
    if candidate_predictions is None or not candidate_predictions.is_file():
        inputs.notes.append(
            f"No candidate predictions at {candidate_predictions}: the trained candidates have not been "
            "evaluated for this experiment, so only the checkpoint's own confidence intervals are reported."
        )
        return inputs
    for cand in read_candidate_predictions(candidate_predictions):
        if len(cand.y_true) != len(checkpoint.y_true) or not np.allclose(
            cand.y_true, checkpoint.y_true, equal_nan=True
        ):
            inputs.notes.append(
                f"Candidate {cand.model}: its test rows do not match the checkpoint's ({len(cand.y_true)} vs "
                f"{len(checkpoint.y_true)} rows, or different targets); it is left out of the paired comparison."
            )
            continue
        inputs.candidates.append(cand)
    if not inputs.candidates:
        inputs.notes.append("No candidate lines up with the checkpoint's test rows; nothing to pair it with.")
    return inputs


def _intervals(task: str, inputs: ComparisonInputs, n_boot: int, seed: int) -> pd.DataFrame:
    rows = [
        {"model": m.model, "metric": metric, "estimate": est, "ci_low": low, "ci_high": high}
        for m in (inputs.checkpoint, *inputs.candidates)
        for metric, (est, low, high) in bootstrap_ci(task, m, n_boot=n_boot, seed=seed).items()
    ]
    return pd.DataFrame(rows, columns=INTERVAL_COLUMNS)


def _paired(task: str, inputs: ComparisonInputs, n_boot: int, seed: int) -> tuple[pd.DataFrame, str]:
    """One paired test per candidate (Holm-adjusted, with a verdict), and the checkpoint's loss name."""
    loss_name, ck_loss = per_row_loss(task, inputs.checkpoint)
    rows = []
    for cand in inputs.candidates:
        cand_loss_name, cand_loss = per_row_loss(task, cand)
        if cand_loss_name != loss_name:
            # A candidate without probabilities cannot be compared on log loss: use 0/1 error for both.
            pair_loss, a, b = "0/1 error", zero_one_loss(inputs.checkpoint), zero_one_loss(cand)
        else:
            pair_loss, a, b = loss_name, ck_loss, cand_loss
        rows.append({"candidate": cand.model, "loss": pair_loss, **paired_test(a, b, n_boot=n_boot, seed=seed)})
    paired = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    if len(paired):
        paired["p_holm"] = holm(paired["p_value"].tolist())
        paired["verdict"] = [
            "checkpoint better"
            if p < 0.05 and d < 0
            else "checkpoint worse"
            if p < 0.05 and d > 0
            else "no significant difference"
            for p, d in zip(paired["p_holm"], paired["mean_diff"], strict=True)
        ]
    return paired, loss_name


@dataclass
class ReportOutputs:
    report: Path
    figures: list[Path]
    tables: list[Path]
    paired: pd.DataFrame
    intervals: pd.DataFrame
    notes: list[str]


def build_report(
    *,
    experiment: str,
    task: str,
    primary_metric: str,
    inputs: ComparisonInputs,
    metrics_table: pd.DataFrame,
    analysis_dir: Path,
    provenance: Mapping[str, Any],
    n_boot: int = 1000,
    seed: int = 42,
) -> ReportOutputs:
    """Intervals, paired tests, figures (PNG), tables (CSV + LaTeX) and report.html under `analysis_dir`."""
    notes = list(inputs.notes)
    intervals = _intervals(task, inputs, n_boot, seed)
    if primary_metric not in set(intervals["metric"]):
        notes.append(
            f"Selection metric {primary_metric!r} has no bootstrap interval here; the figure shows "
            f"{intervals['metric'].iloc[0]!r} instead."
        )
        primary_metric = str(intervals["metric"].iloc[0])
    paired, loss_name = _paired(task, inputs, n_boot, seed)

    figures_dir, tables_dir, reports_dir = (analysis_dir / d for d in ("figures", "tables", "reports"))
    figures = draw_figures(task, primary_metric, inputs.checkpoint, inputs.candidates, intervals)
    figure_paths = [atomic_write_bytes(figures_dir / name, data) for name, data in sorted(figures.items())]

    tables = {
        "checkpoint_metrics": (metrics_table, f"Test metrics of every evaluated model ({experiment})"),
        "checkpoint_bootstrap_ci": (intervals, f"95% bootstrap confidence intervals, {n_boot} resamples"),
        "checkpoint_paired_tests": (
            paired,
            f"Checkpoint minus candidate per-row {loss_name}; Wilcoxon signed-rank, Holm-adjusted",
        ),
    }
    table_paths = []
    for name, (frame, caption) in tables.items():
        with atomic_path(tables_dir / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False, float_format="%.10g")
        table_paths.append(tables_dir / f"{name}.csv")
        table_paths.append(atomic_write_text(tables_dir / f"{name}.tex", latex_table(frame, caption, f"tab:{name}")))

    ck = inputs.checkpoint
    document = render_html(
        experiment=experiment,
        task=task,
        checkpoint=ck,
        candidates=len(inputs.candidates),
        notes=notes,
        metrics_table=metrics_table,
        intervals=intervals,
        paired=paired,
        n_boot=n_boot,
        seed=seed,
        figures=figures,
        provenance=provenance,
    )
    report = atomic_write_text(reports_dir / "report.html", document)
    atomic_write_text(reports_dir / f"report-{ck.model.replace(':', '-')}.html", document)
    return ReportOutputs(
        report=report, figures=figure_paths, tables=table_paths, paired=paired, intervals=intervals, notes=notes
    )
