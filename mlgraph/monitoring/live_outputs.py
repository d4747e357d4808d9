"""What live_performance writes: the report (JSON), its rows (CSV), the plot, the warehouse table and the
MLflow metrics on the champion's run. Plain functions over a report from mlgraph/monitoring/live.py;
pandas, matplotlib and mlflow are imported inside them (the code location loads this module's callers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from mlgraph.core.atomic import atomic_write_json

WAREHOUSE_TABLE = "live_performance"
BASE_COLUMNS = ["experiment", "bucket", "bucket_start", "model_version", "n_labelled"]


def columns(report: Mapping[str, Any]) -> list[str]:
    extra = sorted({k for row in report["rows"] for k in row} - set(BASE_COLUMNS))
    return BASE_COLUMNS + extra


def write_report(report: Mapping[str, Any], json_path: Path, csv_path: Path) -> None:
    """The report as JSON (what drift_sensor and the dashboard read) and its rows as CSV, both atomically."""
    import pandas as pd

    from mlgraph.core.atomic import atomic_write_bytes

    frame = pd.DataFrame(list(report["rows"]), columns=columns(report))
    atomic_write_bytes(csv_path, frame.to_csv(index=False).encode("utf-8"))
    atomic_write_json(json_path, dict(report))


def plot(report: Mapping[str, Any], path: Path) -> Path:
    """The selection metric per bucket, one line per model version, the champion's test value as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlgraph.core.atomic import atomic_write_bytes

    metric = report["metric"]
    figure, axis = plt.subplots(figsize=(8, 4))
    try:
        versions = sorted({r["model_version"] for r in report["rows"]})
        for version in versions:
            points = [
                (datetime.fromisoformat(r["bucket_start"]), r[metric])
                for r in report["rows"]
                if r["model_version"] == version and r.get(metric) is not None
            ]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=f"v{version}")
        test = report["champion"]["test"]
        if test is not None:
            axis.axhline(
                test, color="grey", linestyle="--", label=f"champion v{report['champion']['model_version']} test"
            )
        if not report["rows"]:
            axis.text(0.5, 0.5, "no labelled predictions yet", ha="center", va="center", transform=axis.transAxes)
        axis.set_title(f"{report['experiment']}: live {metric} per {report['bucket']}")
        axis.set_ylabel(metric)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="best")
        figure.autofmt_xdate()
        path.parent.mkdir(parents=True, exist_ok=True)
        import io

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        atomic_write_bytes(path, buffer.getvalue())
    finally:
        plt.close(figure)
    return path


def store_rows(connection: Any, report: Mapping[str, Any]) -> int:
    """Replace this experiment's rows of the warehouse table `live_performance` (one transaction)."""
    import pandas as pd

    frame = pd.DataFrame(list(report["rows"]), columns=columns(report))
    frame = frame.astype({"bucket_start": "string", "model_version": "string"})
    connection.register("live_rows", frame)
    try:
        connection.execute("BEGIN TRANSACTION")
        # Columns differ by task (accuracy vs rmse): the table holds the metric in long form.
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {WAREHOUSE_TABLE} (experiment VARCHAR, bucket VARCHAR, bucket_start VARCHAR, "
            "model_version VARCHAR, n_labelled BIGINT, metric VARCHAR, value DOUBLE)"
        )
        connection.execute(f"DELETE FROM {WAREHOUSE_TABLE} WHERE experiment = ?", [report["experiment"]])
        metric_columns = [c for c in frame.columns if c not in BASE_COLUMNS]
        for name in metric_columns:
            connection.execute(
                f"INSERT INTO {WAREHOUSE_TABLE} SELECT experiment, bucket, bucket_start, model_version, "
                f'n_labelled, ? AS metric, CAST("{name}" AS DOUBLE) FROM live_rows',
                [name],
            )
        connection.execute("COMMIT")
    except Exception:
        connection.execute("ROLLBACK")
        raise
    finally:
        connection.unregister("live_rows")
    return len(frame)


def mlflow_metrics(report: Mapping[str, Any]) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp ms, step) of the champion version's buckets: `live_<metric>` and `live_n_labelled`,
    stamped with the bucket's start so MLflow plots them over time."""
    from mlgraph.core.metrics import mlflow_metric_key

    version = report["champion"]["model_version"]
    out = []
    rows = [r for r in report["rows"] if version is None or r["model_version"] == version]
    for step, row in enumerate(rows):
        stamp = int(datetime.fromisoformat(row["bucket_start"]).timestamp() * 1000)
        for key, value in row.items():
            if key in BASE_COLUMNS and key != "n_labelled":
                continue
            if isinstance(value, (int, float)):
                out.append((f"live_{mlflow_metric_key(key)}", float(value), stamp, step))
    return out


def log_to_mlflow(client: Any, run_id: str, points: Sequence[tuple[str, float, int, int]]) -> int:
    """Log the points on the champion's run (MLflow caps one batch at 1000 metrics)."""
    from mlflow.entities import Metric

    from mlgraph.core.tracking import with_retry

    metrics = [Metric(key, value, stamp, step) for key, value, stamp, step in points]
    for i in range(0, len(metrics), 1000):
        with_retry(client.log_batch, run_id, metrics=metrics[i : i + 1000])
    return len(metrics)
