"""Monitoring assets: the drift baseline beside the champion, the observed prediction log, the drift report.

Thin wrappers over baseline.py, log_status.py and drift.py (plain Python, shared with the drift sensor
and the service). `drift_baseline` follows the champion (automation: eager); `drift_report` runs on
demand (the sensor computes its own report each tick through the same function); `prediction_log` is
observed, never materialized: the service writes it, and the drift sensor reports its observations.
"""

import warnings

import dagster as dg

from mlgraph.core.markdown import md_image, md_table
from pipeline_assets.partitions import experiment_partitions_def
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive
from resources.tracking import MlflowTracking
from resources.warehouse import Warehouse

PREDICTION_LOG = dg.AssetKey("prediction_log")
DATA_VERSION_TAG = "dagster/data_version"  # what an observation's DataVersion becomes (set by hand in sensors)


def prediction_log_observation(experiment: str, status) -> dg.AssetObservation:
    """The observation of one experiment's log (a log_status.LogStatus), as the drift sensor reports it."""
    return dg.AssetObservation(
        PREDICTION_LOG, partition=experiment, tags={DATA_VERSION_TAG: status.version}, metadata=status.metadata()
    )


with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)  # observable sources are beta in name only (Dagster 1.13)

    @dg.multi_observable_source_asset(
        specs=[
            dg.AssetSpec(
                PREDICTION_LOG,
                partitions_def=experiment_partitions_def,
                description="The service's prediction log (serving/{experiment}/prediction_log*.jsonl).",
            )
        ],
        partitions_def=experiment_partitions_def,
    )
    def prediction_log(context: dg.AssetExecutionContext, storage: SharedDrive) -> dg.ObserveResult:
        """Observes one experiment's prediction log: rows, size, last write, current file."""
        from mlgraph.monitoring.log_status import log_status

        status = log_status(storage.prediction_log_path(context.partition_key))
        return dg.ObserveResult(data_version=dg.DataVersion(status.version), metadata=status.metadata())


@dg.asset(
    partitions_def=experiment_partitions_def, deps=[dg.AssetKey("champion_model")], kinds={"json"}, code_version="1"
)
def drift_baseline(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """The champion's training distribution (feature means, stds, quantiles, category and class shares), saved beside it."""
    from mlgraph.monitoring.baseline import compute_baseline, read_baseline, write_baseline
    from mlgraph.training import model_files
    from mlgraph.training.promotion import PromotionStore

    config = catalog.load(context.partition_key).config
    champion = PromotionStore(storage.promotion_dir(config.config_hash)).current()
    if champion is None:
        raise dg.Failure(
            f"{config.name}: no champion is promoted for config hash {config.config_hash[:12]}; "
            "materialize champion_model first (drift is measured against the champion's training data)"
        )
    meta = model_files.split_meta(storage, config.name)
    version = str(champion.get("model_version", ""))
    path = storage.drift_baseline_json(config.name)
    kept = read_baseline(storage, config.name)
    same_data = meta.get("dataset_sha256") == champion.get("dataset_sha256")
    if (
        not same_data
        and kept
        and kept.get("champion_version") == version
        and kept.get("config_hash") == config.config_hash
    ):
        # The data moved on but its challenger was not promoted: the champion still serves, so the baseline
        # stays the distribution it was trained on (the current split is no longer it).
        context.log.info(f"champion v{version} was trained on earlier data; its baseline is kept")
        baseline = kept
    else:
        baseline = compute_baseline(model_files.read_split(storage, config.name, "train"), config, champion)
        baseline["train_split_is_champions"] = same_data
        write_baseline(storage, config.name, baseline)
    rows = [
        [
            n,
            f"{s['mean']:.4g}" if s["mean"] is not None else "-",
            f"{s['std']:.4g}" if s["std"] is not None else "-",
            f"{s['missing_share']:.1%}",
        ]
        for n, s in baseline["numeric"].items()
    ]
    rows += [
        [n, f"{len(s['frequencies'])} categories", "", f"{s['missing_share']:.1%}"]
        for n, s in baseline["categorical"].items()
    ]
    return dg.MaterializeResult(
        metadata={
            "champion_version": version,
            "config_hash": config.config_hash,
            "train_rows": baseline["rows"],
            "train_split_is_champions": bool(baseline.get("train_split_is_champions", True)),
            "target": dg.MetadataValue.json(baseline["target"]),
            "features": dg.MetadataValue.md(md_table(["feature", "mean", "std", "missing"], rows)),
            "path": dg.MetadataValue.path(str(path)),
        },
        data_version=dg.DataVersion(f"v{version}-{baseline['computed_at']}"),
    )


@dg.asset(
    partitions_def=experiment_partitions_def, deps=[drift_baseline, PREDICTION_LOG], kinds={"json"}, code_version="1"
)
def drift_report(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """Drift of the newest logged predictions against the baseline: per-feature tests (z, KS, Wasserstein, PSI; unseen,
    chi-square, Jensen-Shannon), each statistic beside its threshold; the class-rate shift."""
    from mlgraph.core.atomic import atomic_write_json
    from mlgraph.monitoring.drift import build_report, retraining_trigger

    config = catalog.load(context.partition_key).config
    report = build_report(storage.layout, config)
    path = atomic_write_json(storage.drift_report_json(config.name), report)
    window = report.get("window") or {}
    features = [
        [name, f["kind"], _score(f), ", ".join(f.get("flagged_by", [])), "yes" if f["drift"] else ""]
        for name, f in report["features"].items()
    ]
    context.log.info(f"{config.name}: {report['status']}; " + "; ".join(report["reasons"]))
    return dg.MaterializeResult(
        metadata={
            "status": report["status"],
            "drift": report["drift"],
            "retraining_recommended": retraining_trigger(report)["recommended"],
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in report["reasons"]) or "none"),
            "window_rows": int(window.get("rows") or 0),
            "bad_lines": int(window.get("bad_lines") or 0),
            "window": f"{window.get('first_time')} … {window.get('last_time')}",
            "features": dg.MetadataValue.md(md_table(["feature", "kind", "score", "flagged by", "drift"], features)),
            "path": dg.MetadataValue.path(str(path)),
        }
    )


def _score(result: dict) -> str:
    """One cell: z (numeric) or unseen share and chi-square p (categorical), then the distances; the report's JSON
    has every test's statistic, threshold and verdict."""
    if result["kind"] == "numeric":
        parts = [f"z={result['z']:+.2f}" if result["z"] is not None else str(result.get("note", "-"))]
    else:
        p_value = result.get("p_value")
        parts = [f"unseen {result['unseen_share'] or 0:.1%}, p={p_value:.2g}" if p_value is not None else "-"]
    tests = result.get("tests", {})
    for name in ("wasserstein", "psi", "jensen_shannon"):
        if name in tests and tests[name]["statistic"] is not None:
            parts.append(f"{name}={tests[name]['statistic']:.3g}")
    return ", ".join(parts)


# --- live_performance: delayed labels joined to the prediction log (issue 22) --------------------------------
# Kept apart from the drift assets above. Automated like the graph (it follows champion_model: a new champion is
# a new reference line and a new drop check); labels_sensor requests it when labels arrive.


@dg.asset(
    partitions_def=experiment_partitions_def,
    deps=[dg.AssetKey("champion_model")],
    kinds={"csv", "duckdb", "mlflow"},
    code_version="1",
)
def live_performance(
    context: dg.AssetExecutionContext,
    storage: SharedDrive,
    catalog: ExperimentCatalog,
    warehouse: Warehouse,
    mlflow: MlflowTracking,
) -> dg.MaterializeResult:
    """Realized metrics from delayed labels per time bucket and model version, against the champion's test metric."""
    from mlgraph.monitoring import live, live_outputs
    from mlgraph.ops import alerts
    from mlgraph.training.promotion import PromotionStore

    config = catalog.load(context.partition_key).config
    pointer = PromotionStore(storage.promotion_dir(config.config_hash)).current()
    report = live.build_live_report(
        storage.prediction_log_path(config.name), storage.labels_store_path(config.name), config, pointer
    )
    json_path, csv_path = storage.live_performance_json(config.name), storage.live_performance_csv(config.name)
    live_outputs.write_report(report, json_path, csv_path)
    plot = live_outputs.plot(report, storage.plot_path(config.name, "live_performance"))
    with warehouse.get_connection() as connection:
        stored = live_outputs.store_rows(connection, report)
    logged = 0
    if report["champion"]["run_id"] and (points := live_outputs.mlflow_metrics(report)):
        logged = live_outputs.log_to_mlflow(mlflow.client(), report["champion"]["run_id"], points)
    check, joined = report["performance"], report["join"]
    alerts.record(storage.layout, [alerts.performance_drop_change(config.name, check)])
    (context.log.warning if check["dropped"] else context.log.info)(f"{config.name}: {check.get('reason')}")
    metric = report["metric"]
    rows = [
        [r["bucket_start"], f"v{r['model_version']}", r["n_labelled"], _fmt(r.get(metric)), _fmt(r.get("accuracy"))]
        for r in report["rows"][-20:]
    ]
    return dg.MaterializeResult(
        metadata={
            "n_labelled": joined["labelled_predictions"],
            "labels": joined["labels"],
            "unknown_ids": joined["unknown_ids"],
            "duplicate_labels": joined["duplicates"],
            "performance_drop": bool(check["dropped"]),
            "check": check.get("reason") or "",
            "realized": _fmt(check.get("realized")),
            "champion_test": _fmt(check.get("champion_test")),
            "warehouse_rows": stored,
            "mlflow_metrics": logged,
            "buckets": dg.MetadataValue.md(md_table(["bucket", "version", "n_labelled", metric, "accuracy"], rows)),
            "plot": dg.MetadataValue.md(md_image(plot, "live performance")),
            "path": dg.MetadataValue.path(str(json_path)),
        }
    )


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"
