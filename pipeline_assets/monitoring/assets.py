"""Monitoring assets: the drift baseline beside the champion, the observed prediction log, the drift report.

Thin wrappers over baseline.py, log_status.py and drift.py (plain Python, shared with the drift sensor
and the service). `drift_baseline` follows the champion (automation: eager); `drift_report` runs on
demand (the sensor computes its own report each tick through the same function); `prediction_log` is
observed, never materialized: the service writes it, and the drift sensor reports its observations.
"""

import warnings

import dagster as dg

from mlgraph.core.markdown import md_table
from pipeline_assets.partitions import experiment_partitions_def
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive

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
    """Drift of the newest logged predictions against the baseline: per-feature z-scores, categories, class-rate shift."""
    from mlgraph.core.atomic import atomic_write_json
    from mlgraph.monitoring.drift import build_report, retraining_trigger

    config = catalog.load(context.partition_key).config
    report = build_report(storage.layout, config)
    path = atomic_write_json(storage.drift_report_json(config.name), report)
    window = report.get("window") or {}
    features = [[name, f["kind"], _score(f), "yes" if f["drift"] else ""] for name, f in report["features"].items()]
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
            "features": dg.MetadataValue.md(md_table(["feature", "kind", "score", "drift"], features)),
            "path": dg.MetadataValue.path(str(path)),
        }
    )


def _score(result: dict) -> str:
    if result["kind"] == "numeric":
        return f"z={result['z']:+.2f}" if result["z"] is not None else str(result.get("note", "-"))
    p_value = result.get("p_value")
    return f"unseen {result['unseen_share'] or 0:.1%}, p={p_value:.2g}" if p_value is not None else "-"
