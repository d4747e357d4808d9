"""The checkpoint comparison as documents: LaTeX tables and one self-contained HTML report (figures inlined)."""

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from mlgraph.analysis.checkpoint_stats import ModelPredictions
from mlgraph.core.metrics import PER_CLASS_METRICS, per_class_metric, split_per_class


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
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        f"\\caption{{{esc(caption)}}}",
        f"\\label{{{label}}}",
        f"\\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join(esc(c) for c in frame.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td>" for v in row)
        + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{background:#fff6d6;padding:.5em 1em}
img{max-width:100%}code{background:#f3f3f3;padding:0 3px}"""


def split_metrics_table(metrics_table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(summary metrics, one row per model and class) of a wide metrics table; None when no per-class columns.

    A k-class target adds 3k per-class columns (`recall[<class>]`, ...): read side by side with the
    summary metrics they make the table unreadably wide, so they get a long table of their own.
    """
    per_class = {c: split_per_class(str(c)) for c in metrics_table.columns}
    per_class = {c: parts for c, parts in per_class.items() if parts is not None}
    if not per_class:
        return metrics_table, None
    summary = metrics_table.drop(columns=list(per_class))
    labels = list(dict.fromkeys(label for _, label in per_class.values()))
    rows = []
    for record in metrics_table.to_dict("records"):
        for label in labels:
            values = {m: record.get(per_class_metric(m, label), float("nan")) for m in PER_CLASS_METRICS}
            if all(pd.isna(v) for v in values.values()):
                continue  # a model without per-class metrics (none for this class)
            rows.append({"model": record.get("model", ""), "class": label, **values})
    return summary, pd.DataFrame(rows, columns=["model", "class", *PER_CLASS_METRICS])


def _summary(experiment: str, task: str, checkpoint: ModelPredictions, candidates: int, paired: pd.DataFrame) -> str:
    summary = (
        f"<p>Checkpoint <code>{html.escape(checkpoint.model)}</code> on the <b>{html.escape(experiment)}</b> test "
        f"split ({len(checkpoint.y_true)} rows, task {html.escape(task)}), compared with {candidates} trained "
        f"candidate(s) on the same rows.</p>"
    )
    if len(paired):
        summary += (
            "<ul>"
            + "".join(
                f"<li>vs <code>{html.escape(r.candidate)}</code>: mean per-row {html.escape(r.loss)} difference "
                f"{r.mean_diff:.4g} (95% CI {r.ci_low:.4g} to {r.ci_high:.4g}), Holm p = {r.p_holm:.3g}: "
                f"<b>{html.escape(r.verdict)}</b></li>"
                for r in paired.itertuples()
            )
            + "</ul>"
        )
    return summary


def render_html(
    *,
    experiment: str,
    task: str,
    checkpoint: ModelPredictions,
    candidates: int,
    notes: Sequence[str],
    metrics_table: pd.DataFrame,
    intervals: pd.DataFrame,
    paired: pd.DataFrame,
    n_boot: int,
    seed: int,
    figures: Mapping[str, bytes],
    provenance: Mapping[str, Any],
) -> str:
    """report.html: summary, notes, tables, the figures as data URIs, and where every input came from."""
    summary_table, per_class = split_metrics_table(metrics_table)
    if per_class is not None:
        task = f"{task}, {per_class['class'].nunique()} classes"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(experiment)}: checkpoint analysis</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(experiment)}: external checkpoint against trained candidates</h1>",
        _summary(experiment, task, checkpoint, candidates, paired),
        *(f"<p class='note'>{html.escape(n)}</p>" for n in notes),
        "<h2>Test metrics</h2>",
        _html_table(summary_table),
    ]
    if per_class is not None:
        parts += ["<h2>Per-class test metrics</h2>", _html_table(per_class)]
    parts += [
        f"<h2>Bootstrap confidence intervals ({n_boot} resamples, seed {seed})</h2>",
        _html_table(intervals),
    ]
    if len(paired):
        parts += [
            "<h2>Paired tests on per-row losses</h2>",
            "<p>Negative differences mean the checkpoint has the lower loss.</p>",
            _html_table(paired),
        ]
    parts.append("<h2>Figures</h2>")
    for name, data in sorted(figures.items()):
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(
            f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{encoded}'>"
            f"<figcaption>{html.escape(name)}</figcaption></figure>"
        )
    parts += [
        "<h2>Provenance</h2>",
        _html_table(pd.DataFrame({"item": list(provenance), "value": [str(v) for v in provenance.values()]})),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
