"""The checkpoint comparison's figures, as PNG bytes (matplotlib, Agg, imported when drawing)."""

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mlgraph.analysis.checkpoint_stats import ModelPredictions, per_row_loss


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    # Fixed metadata keeps the bytes (and the report) identical across reruns.
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def draw_figures(
    task: str,
    primary: str,
    checkpoint: ModelPredictions,
    candidates: Sequence[ModelPredictions],
    intervals: pd.DataFrame,
) -> dict[str, bytes]:
    """file name → PNG: the primary metric's intervals, per-row losses, and predictions (or ROC curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    models = [checkpoint, *candidates]
    rows = intervals[intervals["metric"] == primary].set_index("model")
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(models)))
    names = [m.model for m in models if m.model in rows.index]
    est = rows.loc[names, "estimate"].to_numpy()
    # A percentile interval need not contain the point estimate (a biased statistic such as r2); clip the bars.
    err = np.clip(
        np.vstack([est - rows.loc[names, "ci_low"].to_numpy(), rows.loc[names, "ci_high"].to_numpy() - est]), 0, None
    )
    colors = ["tab:orange" if n == checkpoint.model else "tab:blue" for n in names]
    ax.barh(names, est, xerr=err, color=colors, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel(f"test {primary} (95% bootstrap CI)")
    ax.set_title("Checkpoint (orange) against the trained candidates")
    out["checkpoint_metric_ci.png"] = _figure_png(fig)
    plt.close(fig)

    loss_name, _ = per_row_loss(task, checkpoint)
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(models)))
    ax.boxplot([per_row_loss(task, m)[1] for m in models], orientation="horizontal", showfliers=False)
    ax.set_yticks(range(1, len(models) + 1), [m.model for m in models])
    ax.invert_yaxis()
    ax.set_xlabel(f"per-row {loss_name} on the test split")
    out["checkpoint_loss_distribution.png"] = _figure_png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    ck = checkpoint
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
