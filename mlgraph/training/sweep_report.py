"""The sweep results table (one row per trial) and its plots, from the trial records on the drive.

Rows carry the trial's inputs (`param.*`), its cross-validated and test metrics, its per-epoch list
metrics reduced four ways (`*_last`, `*_min`, `*_max`, `*_mean`), its duration and status, and the
MLflow run it was logged to. The same rows feed the CSV, the DuckDB table and the UI's preview.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlgraph.core.atomic import atomic_path, atomic_write_text
from mlgraph.core.hashing import sha256_text
from mlgraph.core.metrics import lower_is_better
from mlgraph.core.warehouse import replace_rows
from mlgraph.training.sweep_trial import FINISHED

REDUCTIONS = ("last", "min", "max", "mean")
LIST_METRICS = ("train_loss", "val_loss")
WAREHOUSE_TABLE = "sweep_results"
WAREHOUSE_COLUMNS = {
    "experiment": "VARCHAR",
    "spec": "VARCHAR",
    "trial_number": "INTEGER",
    "trial_key": "VARCHAR",
    "status": "VARCHAR",
    "params": "JSON",
    "selection_metric": "VARCHAR",
    "cv_score": "DOUBLE",
    "cv_std": "DOUBLE",
    "test_score": "DOUBLE",
    **{f"{m}_{r}": "DOUBLE" for m in LIST_METRICS for r in REDUCTIONS},
    "epochs": "INTEGER",
    "fit_seconds": "DOUBLE",
    "trial_wall_seconds": "DOUBLE",
    "best": "BOOLEAN",
    "error": "VARCHAR",
    "mlflow_run_id": "VARCHAR",
}


def reduce(values: Sequence[float], how: str) -> float | None:
    """A list metric (one value per epoch) as one number: its last, min, max or mean."""
    if how not in REDUCTIONS:
        raise ValueError(f"reduction {how!r} is not one of {', '.join(REDUCTIONS)}")
    clean = [float(v) for v in values if v == v]
    if not clean:
        return None
    return {"last": clean[-1], "min": min(clean), "max": max(clean), "mean": sum(clean) / len(clean)}[how]


def list_metrics(record: Mapping[str, Any]) -> dict[str, list[float]]:
    """A trial's per-epoch series (a pruned trial: the validation losses it reached)."""
    history = record.get("history") or []
    out = {m: [e[m] for e in history if m in e] for m in LIST_METRICS}
    if not out["val_loss"] and record.get("prune_losses"):
        out["val_loss"] = list(record["prune_losses"])
    return {m: v for m, v in out.items() if v}


def trial_rows(
    experiment: str, spec: str, records: Sequence[Mapping[str, Any]], metric: str, best_key: str | None
) -> list[dict[str, Any]]:
    rows = []
    for record in sorted(records, key=lambda r: r["number"]):
        cv = (record.get("cv") or {}).get(metric) or {}
        series = list_metrics(record)
        row: dict[str, Any] = {
            "experiment": experiment,
            "spec": spec,
            "trial_number": record["number"],
            "trial_key": record["key"],
            "status": record["status"],
            "params": json.dumps(record.get("params") or {}, sort_keys=True, default=str),
            **{f"param.{k}": v for k, v in (record.get("params") or {}).items()},
            "selection_metric": metric,
            "cv_score": cv.get("mean"),
            "cv_std": cv.get("std"),
            "test_score": (record.get("test") or {}).get(metric),
            "epochs": len(series.get("val_loss", [])) or None,
            "fit_seconds": _sum(record.get("fit_seconds"), record.get("cv_seconds")),
            "trial_wall_seconds": record.get("trial_wall_seconds", record.get("wall_seconds")),
            "best": record["key"] == best_key,
            "error": record.get("error"),
            "mlflow_run_id": record.get("mlflow_run_id"),
        }
        for name in LIST_METRICS:
            for how in REDUCTIONS:
                row[f"{name}_{how}"] = reduce(series.get(name, []), how)
        rows.append(row)
    return rows


def _sum(*values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def ranked(rows: Sequence[Mapping[str, Any]], metric: str) -> list[Mapping[str, Any]]:
    """Finished trials best first by CV score (direction-aware), then the rest by number."""
    done = [r for r in rows if r["status"] == FINISHED and r["cv_score"] is not None]
    rest = [r for r in rows if r not in done]
    done.sort(key=lambda r: r["cv_score"], reverse=not lower_is_better(metric))
    return [*done, *rest]


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, out.getvalue())


def replace_in_warehouse(connection: Any, experiment: str, rows: Sequence[Mapping[str, Any]]) -> int:
    """This experiment's trials in the warehouse table, replaced in one transaction (idempotent)."""
    return replace_rows(connection, WAREHOUSE_TABLE, WAREHOUSE_COLUMNS, {"experiment": experiment}, rows)


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def plot_metric_vs_params(path: Path, spec: str, records: Sequence[Mapping[str, Any]], metric: str) -> Path:
    """The selection metric against each swept param (one panel per param; failed/pruned trials left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r["status"] == FINISHED]
    names = sorted({k for r in records for k in (r.get("params") or {})})
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.2 * max(1, len(names)), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        xs = [r["params"].get(name) for r in done]
        ys = [r["cv"][metric]["mean"] for r in done]
        if _numeric(xs):
            ax.scatter(xs, ys, color="tab:blue")
            positive = [x for x in xs if x > 0]
            if positive and len(positive) == len(xs) and max(xs) / min(positive) >= 100:
                ax.set_xscale("log")  # learning rates and regularisation strengths span decades
        else:
            labels = sorted({str(x) for x in xs})
            ax.scatter([labels.index(str(x)) for x in xs], ys, color="tab:blue")
            ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_xlabel(name)
        ax.set_ylabel(f"cv {metric}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{spec}: cv {metric} per trial ({'lower' if lower_is_better(metric) else 'higher'} is better)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def plot_curves(
    path: Path, spec: str, rows: Sequence[Mapping[str, Any]], records: Mapping[str, Any], k: int
) -> Path | None:
    """Per-epoch validation (solid) and training (dashed) loss of the top-k trials, overlaid; None without epochs."""
    top = [r for r in rows if r["status"] == FINISHED][:k]
    series = [(row, list_metrics(records[row["trial_key"]])) for row in top]
    series = [(row, s) for row, s in series if s.get("val_loss")]
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for index, (row, s) in enumerate(series):
        color = f"C{index % 10}"
        params = ", ".join(f"{k}={v}" for k, v in json.loads(row["params"]).items())
        ax.plot(range(1, len(s["val_loss"]) + 1), s["val_loss"], color=color, label=f"#{row['trial_number']} {params}")
        if s.get("train_loss"):
            ax.plot(range(1, len(s["train_loss"]) + 1), s["train_loss"], color=color, linestyle="--", alpha=0.6)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (solid: validation, dashed: training)")
    ax.set_title(f"{spec}: top {len(series)} trials by cv score")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


TOP_K_CURVES = 5


@dataclass
class SweepResults:
    experiment: str
    rows: list[dict[str, Any]]
    csv_path: Path
    plots: dict[str, Path]
    metric: str
    table: str = WAREHOUSE_TABLE

    @property
    def version(self) -> str:
        """Same trials with the same results → the same data version (downstream stays fresh)."""
        stable = [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in self.rows]
        return sha256_text(json.dumps(stable, sort_keys=True, default=str))[:16]

    def store(self, connection: Any) -> int:
        return replace_in_warehouse(connection, self.experiment, self.rows)

    def preview_markdown(self, limit: int = 20) -> str:
        from mlgraph.core.markdown import md_table

        shown = [r for spec in dict.fromkeys(r["spec"] for r in self.rows) for r in self._ranked(spec)][:limit]
        return md_table(
            ["spec", "#", "status", "params", f"cv {self.metric}", "val_loss min", "fit s", "wall s", "MLflow run"],
            [
                [
                    r["spec"] + (" ★" if r["best"] else ""),
                    r["trial_number"],
                    r["status"],
                    r["params"],
                    r["cv_score"],
                    r["val_loss_min"],
                    r["fit_seconds"],
                    r["trial_wall_seconds"],
                    r["mlflow_run_id"] or "-",
                ]
                for r in shown
            ],
        )

    def _ranked(self, spec: str) -> list[Mapping[str, Any]]:
        return ranked([r for r in self.rows if r["spec"] == spec], self.metric)


def build_sweep_results(drive: Any, config: Any, dataset_sha256: str) -> SweepResults | None:
    """Rows, CSV and plots for every swept spec of `config` on the current data; None without sweeps."""
    from mlgraph.training import model_files
    from mlgraph.training.sweeps import best_trial, existing_records, grid_points, sweep_key, trial_key

    specs = [s for s in config.model_specs if s.sweep is not None]
    if not specs:
        return None
    # The metric as candidate_models resolved it for this target (multiclass default: f1_macro).
    manifest = model_files.read_json(drive.candidates_manifest(config.name), "candidate_models")
    metric = model_files.selection_metric(manifest, config)
    rows: list[dict[str, Any]] = []
    plots: dict[str, Path] = {}
    for spec in specs:
        base = sweep_key(config, spec, dataset_sha256)
        records = list(existing_records(drive.sweeps_dir(config.name) / spec.key / "trials", base))
        if spec.sweep.grid is not None:  # only the grid as configured now (a shrunk grid's extra trials stay out)
            wanted = {trial_key(base, p): n for n, p in enumerate(grid_points(spec))}
            records = [{**r, "number": wanted[r["key"]]} for r in records if r["key"] in wanted]
        if not records:
            raise FileNotFoundError(
                f"{drive.sweeps_dir(config.name) / spec.key}: no trial of the sweep of {spec.key!r} on the current "
                "config and data. Fix: materialize candidate_models for this experiment first."
            )
        best = best_trial(records, metric)
        spec_rows = trial_rows(config.name, spec.key, records, metric, best["key"] if best else None)
        rows.extend(spec_rows)
        plots[f"sweep_{spec.key}_metric_vs_params"] = plot_metric_vs_params(
            drive.plot_path(config.name, f"sweep_{spec.key}_metric_vs_params"), spec.key, records, metric
        )
        curves = plot_curves(
            drive.plot_path(config.name, f"sweep_{spec.key}_curves"),
            spec.key,
            ranked(spec_rows, metric),
            {r["key"]: r for r in records},
            TOP_K_CURVES,
        )
        if curves is not None:
            plots[f"sweep_{spec.key}_curves"] = curves
    csv_path = write_csv(drive.sweep_results_csv(config.name), rows)
    return SweepResults(config.name, rows, csv_path, plots, metric)
