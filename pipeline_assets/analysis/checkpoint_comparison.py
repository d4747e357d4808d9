"""Compare an external checkpoint with the experiment's trained candidates on the same test rows.

Plain Python (numpy, pandas, pyarrow; scipy.stats and matplotlib inside functions): bootstrap
confidence intervals per model, a paired test per candidate on per-row losses, figures, CSV and
LaTeX tables, and one self-contained HTML report with the figures inlined.
"""

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from core.atomic import atomic_path, atomic_write_bytes, atomic_write_text

LOWER_IS_BETTER = frozenset({"rmse", "mae", "mse", "log_loss", "composite"})
# Columns of a wide candidate predictions file that are not a model's predictions.
_NON_MODEL_COLUMNS = {"row", "index", "row_id", "y_true", "target", "dataset", "experiment", "timestamp"}


@dataclass
class ModelPredictions:
    model: str
    y_true: np.ndarray
    y_pred: np.ndarray
    y_score: np.ndarray | None
    source: str


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
            out.append(ModelPredictions(model=str(model), y_true=group["y_true"].to_numpy("float64"),
                                        y_pred=y_pred, y_score=y_score, source=str(path)))
        return out
    frame = _ordered(frame)
    models = [c for c in frame.columns if c not in _NON_MODEL_COLUMNS and pd.api.types.is_numeric_dtype(frame[c])]
    return [ModelPredictions(model=c, y_true=frame["y_true"].to_numpy("float64"),
                             y_pred=frame[c].to_numpy("float64"), y_score=None, source=str(path)) for c in models]


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
        if len(cand.y_true) != len(checkpoint.y_true) or not np.allclose(cand.y_true, checkpoint.y_true, equal_nan=True):
            inputs.notes.append(
                f"Candidate {cand.model}: its test rows do not match the checkpoint's ({len(cand.y_true)} vs "
                f"{len(checkpoint.y_true)} rows, or different targets); it is left out of the paired comparison."
            )
            continue
        inputs.candidates.append(cand)
    if not inputs.candidates:
        inputs.notes.append("No candidate lines up with the checkpoint's test rows; nothing to pair it with.")
    return inputs


def per_row_loss(task: str, p: ModelPredictions) -> tuple[str, np.ndarray]:
    """The per-row loss the paired test compares: absolute error, log loss, or 0/1 error without scores."""
    if task == "regression":
        return "absolute error", np.abs(p.y_true - p.y_pred)
    if p.y_score is not None:
        s = np.clip(p.y_score, 1e-12, 1 - 1e-12)
        return "log loss", -(p.y_true * np.log(s) + (1 - p.y_true) * np.log(1 - s))
    return "0/1 error", (p.y_true != p.y_pred).astype("float64")


def _auc(y_true: np.ndarray, score: np.ndarray) -> float:
    # Rank form of ROC AUC (Mann-Whitney U with average ranks for ties).
    from scipy.stats import rankdata

    pos = y_true == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def point_metrics(task: str, p: ModelPredictions) -> dict[str, float]:
    y, yhat = p.y_true, p.y_pred
    if task == "regression":
        err = y - yhat
        mse = float(np.mean(err**2))
        sst = float(np.sum((y - y.mean()) ** 2))
        return {"r2": 1 - float(np.sum(err**2)) / sst if sst > 0 else math.nan, "rmse": math.sqrt(mse),
                "mae": float(np.mean(np.abs(err))), "mse": mse}
    out = {"accuracy": float(np.mean(y == yhat))}
    if p.y_score is not None:
        out["roc_auc"] = _auc(y, p.y_score)
    return out


def bootstrap_ci(task: str, p: ModelPredictions, n_boot: int = 1000, seed: int = 42,
                 alpha: float = 0.05) -> dict[str, tuple[float, float, float]]:
    """metric → (estimate, low, high): percentile intervals over `n_boot` seeded row resamples."""
    rng = np.random.default_rng(seed)
    n = len(p.y_true)
    estimates = point_metrics(task, p)
    samples: dict[str, list[float]] = {k: [] for k in estimates}
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        resampled = ModelPredictions(p.model, p.y_true[idx], p.y_pred[idx],
                                     None if p.y_score is None else p.y_score[idx], p.source)
        for k, v in point_metrics(task, resampled).items():
            samples[k].append(v)
    out = {}
    for k, est in estimates.items():
        values = np.asarray(samples[k], dtype="float64")
        values = values[np.isfinite(values)]
        if len(values) == 0:
            out[k] = (est, math.nan, math.nan)
            continue
        low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        out[k] = (est, float(low), float(high))
    return out


def paired_test(loss_checkpoint: np.ndarray, loss_candidate: np.ndarray, n_boot: int = 1000,
                seed: int = 42, alpha: float = 0.05) -> dict[str, float]:
    """Checkpoint minus candidate per-row loss: mean, bootstrap CI, and the Wilcoxon signed-rank p-value."""
    from scipy.stats import wilcoxon

    diff = loss_checkpoint - loss_candidate
    rng = np.random.default_rng(seed)
    means = np.array([diff[rng.integers(0, len(diff), size=len(diff))].mean() for _ in range(n_boot)])
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    if np.count_nonzero(diff) == 0:
        statistic, p_value = 0.0, 1.0
    else:
        res = wilcoxon(loss_checkpoint, loss_candidate, zero_method="wilcox", alternative="two-sided")
        statistic, p_value = float(res.statistic), float(res.pvalue)
    return {"mean_diff": float(diff.mean()), "ci_low": float(low), "ci_high": float(high),
            "wilcoxon_statistic": statistic, "p_value": p_value, "n": int(len(diff))}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def latex_table(frame: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table; cells escaped, floats to 4 significant digits."""
    def esc(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        # Backslashes first (via a placeholder), so the escapes added below are not escaped again.
        text = text.replace("\\", "\0")
        for char in "&%$#_{}":
            text = text.replace(char, "\\" + char)
        text = text.replace("~", r"\textasciitilde{}").replace("^", r"\^{}")
        return text.replace("\0", r"\textbackslash{}")

    cols = "l" + "r" * (len(frame.columns) - 1)
    lines = [r"\begin{table}[ht]", r"\centering", f"\\caption{{{esc(caption)}}}", f"\\label{{{label}}}",
             f"\\begin{{tabular}}{{{cols}}}", r"\toprule", " & ".join(esc(c) for c in frame.columns) + r" \\",
             r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


@dataclass
class ReportOutputs:
    report: Path
    figures: list[Path]
    tables: list[Path]
    paired: pd.DataFrame
    intervals: pd.DataFrame
    notes: list[str]


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    # Fixed metadata keeps the bytes (and the report) identical across reruns.
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _figures(task: str, primary: str, inputs: ComparisonInputs, intervals: pd.DataFrame) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    models = [inputs.checkpoint, *inputs.candidates]
    rows = intervals[intervals["metric"] == primary].set_index("model")
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(models)))
    names = [m.model for m in models if m.model in rows.index]
    est = rows.loc[names, "estimate"].to_numpy()
    # A percentile interval need not contain the point estimate (a biased statistic such as r2); clip the bars.
    err = np.clip(np.vstack([est - rows.loc[names, "ci_low"].to_numpy(), rows.loc[names, "ci_high"].to_numpy() - est]),
                  0, None)
    colors = ["tab:orange" if n == inputs.checkpoint.model else "tab:blue" for n in names]
    ax.barh(names, est, xerr=err, color=colors, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel(f"test {primary} (95% bootstrap CI)")
    ax.set_title("Checkpoint (orange) against the trained candidates")
    out["checkpoint_metric_ci.png"] = _figure_png(fig)
    plt.close(fig)

    loss_name, _ = per_row_loss(task, inputs.checkpoint)
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(models)))
    ax.boxplot([per_row_loss(task, m)[1] for m in models], orientation="horizontal", showfliers=False)
    ax.set_yticks(range(1, len(models) + 1), [m.model for m in models])
    ax.invert_yaxis()
    ax.set_xlabel(f"per-row {loss_name} on the test split")
    out["checkpoint_loss_distribution.png"] = _figure_png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    ck = inputs.checkpoint
    if task == "regression":
        ax.scatter(ck.y_true, ck.y_pred, s=4, alpha=0.4)
        lo, hi = float(np.nanmin(ck.y_true)), float(np.nanmax(ck.y_true))
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1)
        ax.set_xlabel("actual")
        ax.set_ylabel("predicted")
        ax.set_title(f"{ck.model}: predicted against actual")
    else:
        for m in models:
            if m.y_score is None:
                continue
            order = np.argsort(-m.y_score, kind="stable")
            y = m.y_true[order]
            tpr = np.concatenate([[0], np.cumsum(y) / max(y.sum(), 1)])
            fpr = np.concatenate([[0], np.cumsum(1 - y) / max((1 - y).sum(), 1)])
            ax.plot(fpr, tpr, label=m.model, linewidth=2 if m is ck else 1)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7)
        ax.set_title("ROC curves")
    out["checkpoint_predictions.png"] = _figure_png(fig)
    plt.close(fig)
    return out


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{background:#fff6d6;padding:.5em 1em}
img{max-width:100%}code{background:#f3f3f3;padding:0 3px}"""


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
    models = [inputs.checkpoint, *inputs.candidates]
    interval_rows = []
    for m in models:
        for metric, (est, low, high) in bootstrap_ci(task, m, n_boot=n_boot, seed=seed).items():
            interval_rows.append({"model": m.model, "metric": metric, "estimate": est, "ci_low": low, "ci_high": high})
    intervals = pd.DataFrame(interval_rows, columns=["model", "metric", "estimate", "ci_low", "ci_high"])
    if primary_metric not in set(intervals["metric"]):
        notes.append(f"Selection metric {primary_metric!r} has no bootstrap interval here; the figure shows "
                     f"{intervals['metric'].iloc[0]!r} instead.")
        primary_metric = str(intervals["metric"].iloc[0])

    loss_name, ck_loss = per_row_loss(task, inputs.checkpoint)
    paired_rows = []
    for cand in inputs.candidates:
        cand_loss_name, cand_loss = per_row_loss(task, cand)
        if cand_loss_name != loss_name:
            # A candidate without probabilities cannot be compared on log loss: use 0/1 error for both.
            loss_name_pair = "0/1 error"
            a = (inputs.checkpoint.y_true != inputs.checkpoint.y_pred).astype("float64")
            b = (cand.y_true != cand.y_pred).astype("float64")
        else:
            loss_name_pair, a, b = loss_name, ck_loss, cand_loss
        res = paired_test(a, b, n_boot=n_boot, seed=seed)
        paired_rows.append({"candidate": cand.model, "loss": loss_name_pair, **res})
    paired = pd.DataFrame(paired_rows, columns=["candidate", "loss", "mean_diff", "ci_low", "ci_high",
                                                "wilcoxon_statistic", "p_value", "n"])
    if len(paired):
        paired["p_holm"] = holm(paired["p_value"].tolist())
        paired["verdict"] = [
            "checkpoint better" if p < 0.05 and d < 0 else "checkpoint worse" if p < 0.05 and d > 0 else "no significant difference"
            for p, d in zip(paired["p_holm"], paired["mean_diff"], strict=True)
        ]

    figures_dir, tables_dir, reports_dir = (analysis_dir / d for d in ("figures", "tables", "reports"))
    figures = _figures(task, primary_metric, inputs, intervals)
    figure_paths = [atomic_write_bytes(figures_dir / name, data) for name, data in sorted(figures.items())]

    tables = {
        "checkpoint_metrics": (metrics_table, f"Test metrics of every evaluated model ({experiment})"),
        "checkpoint_bootstrap_ci": (intervals, f"95% bootstrap confidence intervals, {n_boot} resamples"),
        "checkpoint_paired_tests": (paired, f"Checkpoint minus candidate per-row {loss_name}; Wilcoxon signed-rank, Holm-adjusted"),
    }
    table_paths = []
    for name, (frame, caption) in tables.items():
        with atomic_path(tables_dir / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False, float_format="%.10g")
        table_paths.append(tables_dir / f"{name}.csv")
        table_paths.append(atomic_write_text(tables_dir / f"{name}.tex",
                                             latex_table(frame, caption, f"tab:{name}")))

    ck = inputs.checkpoint
    summary = (
        f"<p>Checkpoint <code>{html.escape(ck.model)}</code> on the <b>{html.escape(experiment)}</b> test split "
        f"({len(ck.y_true)} rows, task {html.escape(task)}), compared with {len(inputs.candidates)} trained "
        f"candidate(s) on the same rows.</p>"
    )
    if len(paired):
        summary += "<ul>" + "".join(
            f"<li>vs <code>{html.escape(r.candidate)}</code>: mean per-row {html.escape(r.loss)} difference "
            f"{r.mean_diff:.4g} (95% CI {r.ci_low:.4g} to {r.ci_high:.4g}), Holm p = {r.p_holm:.3g}: "
            f"<b>{html.escape(r.verdict)}</b></li>" for r in paired.itertuples()
        ) + "</ul>"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(experiment)}: checkpoint analysis</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(experiment)}: external checkpoint against trained candidates</h1>",
        summary,
        *(f"<p class='note'>{html.escape(n)}</p>" for n in notes),
        "<h2>Test metrics</h2>", _html_table(metrics_table),
        f"<h2>Bootstrap confidence intervals ({n_boot} resamples, seed {seed})</h2>", _html_table(intervals),
    ]
    if len(paired):
        parts += ["<h2>Paired tests on per-row losses</h2>",
                  "<p>Negative differences mean the checkpoint has the lower loss.</p>", _html_table(paired)]
    parts.append("<h2>Figures</h2>")
    for name, data in sorted(figures.items()):
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{encoded}'>"
                     f"<figcaption>{html.escape(name)}</figcaption></figure>")
    parts += ["<h2>Provenance</h2>",
              _html_table(pd.DataFrame({"item": list(provenance), "value": [str(v) for v in provenance.values()]})),
              "</body></html>"]
    document = "\n".join(parts) + "\n"
    report = atomic_write_text(reports_dir / "report.html", document)
    atomic_write_text(reports_dir / f"report-{ck.model.replace(':', '-')}.html", document)
    return ReportOutputs(report=report, figures=figure_paths, tables=table_paths, paired=paired,
                         intervals=intervals, notes=notes)
