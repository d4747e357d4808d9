"""The three trade-off plots of the constraint sweep (matplotlib, Agg, imported when drawing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlgraph.core.atomic import atomic_path

PLOTS = ("latency_vs_accuracy", "memory_vs_accuracy", "latency_memory_accuracy")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _spec(accuracy_column: str, accuracy_label: str) -> dict[str, dict[str, str]]:
    return {
        "latency_vs_accuracy": {
            "x": "preprocessing_latency_s",
            "xlabel": "Preprocessing latency (s)",
            "y": accuracy_column,
            "ylabel": accuracy_label,
            "c": "compute_limit",
            "clabel": "Compute limit (share of cores)",
            "cmap": "viridis",
            "title": "Latency vs accuracy",
        },
        "memory_vs_accuracy": {
            "x": "peak_memory_mb",
            "xlabel": "Peak working memory (MB)",
            "y": accuracy_column,
            "ylabel": accuracy_label,
            "c": "memory_limit_mb",
            "clabel": "Memory limit (MB)",
            "cmap": "plasma",
            "title": "Memory vs accuracy",
        },
        "latency_memory_accuracy": {
            "x": "peak_memory_mb",
            "xlabel": "Peak working memory (MB)",
            "y": "preprocessing_latency_s",
            "ylabel": "Preprocessing latency (s)",
            "c": accuracy_column,
            "clabel": accuracy_label,
            "cmap": "coolwarm",
            "title": "Latency, memory and accuracy",
        },
    }


def draw_tradeoff_plots(
    rows: Sequence[Mapping[str, Any]],
    accuracy_column: str,
    accuracy_label: str,
    paths: Mapping[str, Path],
    experiment: str,
) -> dict[str, Path]:
    """Write the three PNGs to `paths` (one per name in PLOTS; marker shape = chunk size, colour per the
    design document); return them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    chunk_sizes = sorted({int(r["chunk_size"]) for r in rows})
    marker = {c: _MARKERS[i % len(_MARKERS)] for i, c in enumerate(chunk_sizes)}
    written = {}
    for name, spec in _spec(accuracy_column, accuracy_label).items():
        fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=110)
        colours = [float(r[spec["c"]]) for r in rows]
        vmin, vmax = (min(colours), max(colours)) if colours else (0.0, 1.0)
        constant = vmin == vmax
        if constant:  # one value: a narrow band around it, and say so on the plot
            pad = max(1e-3, 0.01 * abs(vmin))
            vmin, vmax = vmin - pad, vmax + pad
        scatter = None
        # Points at the same position are drawn as concentric markers, largest first, so every colour shows.
        seen: dict[tuple[float, float], int] = {}
        for r in sorted(rows, key=lambda r: (int(r["chunk_size"]), float(r[spec["c"]]))):
            x, y = float(r[spec["x"]]), float(r[spec["y"]])
            position = (round(x, 12), round(y, 12))
            layer = seen.get(position, 0)
            seen[position] = layer + 1
            scatter = ax.scatter(
                [x],
                [y],
                c=[float(r[spec["c"]])],
                cmap=spec["cmap"],
                vmin=vmin,
                vmax=vmax,
                marker=marker[int(r["chunk_size"])],
                s=max(220 / (layer + 1) ** 1.3, 18),
                edgecolors="black",
                linewidths=0.6,
                zorder=2 + layer,
            )
        if scatter is not None:
            colorbar = fig.colorbar(scatter, ax=ax)
            colorbar.set_label(spec["clabel"])
        handles = [
            Line2D(
                [],
                [],
                marker=marker[c],
                linestyle="",
                color="grey",
                markeredgecolor="black",
                markersize=8,
                label=f"{c:,} rows",
            )
            for c in chunk_sizes
        ]
        title = "Chunk size" + ("\n(concentric: same position)" if any(n > 1 for n in seen.values()) else "")
        ax.legend(handles=handles, title=title, loc="best", fontsize=8, title_fontsize=8)
        if constant and rows:
            ax.text(
                0.01,
                0.01,
                f"all constraints: {spec['clabel']} = {colours[0]:.4g}",
                transform=ax.transAxes,
                fontsize=8,
                color="dimgray",
                va="bottom",
            )
        ax.set_xlabel(spec["xlabel"])
        ax.set_ylabel(spec["ylabel"])
        ax.set_title(f"{experiment}: {spec['title']} ({len(rows)} constraints)")
        ax.grid(True, alpha=0.3)
        ax.margins(0.12)
        fig.tight_layout()
        with atomic_path(paths[name]) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})
        plt.close(fig)
        written[name] = paths[name]
    return written
