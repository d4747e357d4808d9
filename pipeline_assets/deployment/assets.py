"""Deployment assets: the champion in ONNX, its INT8 form, the inference benchmark of every variant, and the
serving capacity of the champion's service (open-loop replay to saturation).

Thin wrappers over export.py, quantize.py, bench.py and capacity.py; the release gates are the blocking checks in
checks.py, so a failed gate stops the benchmark (and serving) downstream.
"""

import dataclasses

import dagster as dg

from mlgraph.core.markdown import md_image, md_table
from mlgraph.training.lineage import extend_lineage
from pipeline_assets.partitions import experiment_partitions_def
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive
from resources.tracking import MlflowTracking
from resources.warehouse import Warehouse

# By key: importing the training asset would make the group loader claim it for 'deployment'.
CHAMPION_MODEL = dg.AssetKey("champion_model")


class InferenceBenchmarkConfig(dg.Config):
    """Launchpad config of inference_benchmark."""

    settings: str = "light"  # "light" (seconds; what mlgraph demo runs) or "full" (benchmarks/inference.py's)


@dg.asset(partitions_def=experiment_partitions_def, deps=[CHAMPION_MODEL], kinds={"onnx"}, code_version="1")
def onnx_model(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """The promoted champion exported to ONNX with its export report, or why it has no faithful export."""
    from mlgraph.deployment import export
    from mlgraph.deployment.champion import read_champion
    from mlgraph.deployment.sklearn_graph import is_tabular_pipeline
    from mlgraph.training import model_files
    from mlgraph.training.families import feature_spec

    config = catalog.load(context.partition_key).config
    champion = read_champion(storage, config)
    native = champion.load()
    whole = None
    if config.task != "forecasting" and not is_tabular_pipeline(native):
        # The user's whole pipeline (preprocessing: none) reads the experiment's columns, declared types included.
        whole = feature_spec(model_files.read_split(storage, config.name, "train"), config)
    outcome = export.export_champion(storage, champion, native, whole)
    report = outcome.report
    # The ONNX hashes join the champion's lineage.json, so `mlgraph verify` checks them too.
    extend_lineage(
        storage.lineage_json(config.name), champion.run_id, {"onnx_model": outcome.path if outcome.exported else None}
    )
    common = {
        "champion": champion.label(),
        "status": outcome.status,
        "report": dg.MetadataValue.path(str(storage.export_report_json(config.name))),
    }
    if not outcome.exported:
        context.log.warning(f"{champion.label()} is not exportable ({report['reason']}): the native model is served")
        return dg.MaterializeResult(
            metadata={**common, "reason": report["reason"]},
            data_version=dg.DataVersion(f"not-exportable-{champion.model_version}"),
        )
    context.log.info(
        f"{champion.label()} → {outcome.path} ({report['bytes']:,} bytes, {report['conversion_seconds']}s)"
    )
    inputs = md_table(["input", "type", "shape"], [[i["name"], i["type"], str(i["shape"])] for i in report["inputs"]])
    return dg.MaterializeResult(
        metadata={
            **common,
            "path": dg.MetadataValue.path(str(outcome.path)),
            "bytes": report["bytes"],
            "sha256": report["sha256"],
            "conversion_seconds": report["conversion_seconds"],
            "converter": report["converter"]["name"],
            "opset": dg.MetadataValue.json(report["opset"]),
            "opset_duplicates_removed": dg.MetadataValue.json(report["opset_duplicates_removed"]),
            "inputs": dg.MetadataValue.md(inputs),
        },
        data_version=dg.DataVersion(report["sha256"]),
    )


@dg.asset(partitions_def=experiment_partitions_def, deps=[onnx_model], kinds={"onnx"}, code_version="1")
def onnx_int8_model(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """Dynamic INT8 quantization of the ONNX champion: what it changed, or that nothing was quantizable."""
    from mlgraph.deployment import quantize
    from mlgraph.deployment.champion import read_champion
    from mlgraph.deployment.gates import read_report

    config = catalog.load(context.partition_key).config
    champion = read_champion(storage, config)
    export_report = read_report(storage.export_report_json(config.name), "onnx_model", champion)
    outcome = quantize.quantize_champion(storage, config.name, export_report)
    report = outcome.report
    extend_lineage(
        storage.lineage_json(config.name),
        champion.run_id,
        {"onnx_int8_model": outcome.path if outcome.applicable else None},
    )
    context.log.info(f"{champion.label()}: {report['summary']}")
    metadata = {
        "champion": champion.label(),
        "status": outcome.status,
        "summary": report["summary"],
        "quantized_nodes": dg.MetadataValue.json(report.get("quantized_nodes", {})),
        "report": dg.MetadataValue.path(str(storage.quantization_report_json(config.name))),
    }
    if "fp32_ops" in report:
        metadata["fp32_ops"] = dg.MetadataValue.json(report["fp32_ops"])
    if not outcome.applicable:
        return dg.MaterializeResult(
            metadata=metadata, data_version=dg.DataVersion(f"int8-not-applicable-{champion.model_version}")
        )
    metadata.update(
        {
            "path": dg.MetadataValue.path(str(outcome.path)),
            "fp32_bytes": report["fp32_bytes"],
            "int8_bytes": report["bytes"],
            "size_ratio": report["size_ratio"],
            "sha256": report["sha256"],
        }
    )
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(report["sha256"]))


@dg.asset(
    partitions_def=experiment_partitions_def,
    deps=[CHAMPION_MODEL, onnx_model, onnx_int8_model],
    kinds={"csv", "duckdb", "mlflow"},
    code_version="1",
)
def inference_benchmark(
    context: dg.AssetExecutionContext,
    config: InferenceBenchmarkConfig,
    storage: SharedDrive,
    catalog: ExperimentCatalog,
    warehouse: Warehouse,
    mlflow: MlflowTracking,
) -> dg.MaterializeResult:
    """Latency, throughput, memory and accuracy of each served variant, its Pareto front, and vs the last champion."""
    from mlgraph.deployment import bench

    if config.settings not in bench.SETTINGS:
        raise dg.Failure(
            f"inference_benchmark config 'settings': {config.settings!r}. Fix: use one of {sorted(bench.SETTINGS)}."
        )
    settings = bench.SETTINGS[config.settings]
    exp = catalog.load(context.partition_key).config
    measured = bench.benchmark_champion(storage, exp, settings)
    champion, rows = measured.champion, measured.rows
    csv_path = bench.write_csv(rows, storage.inference_benchmark_csv(exp.name))
    metric = champion.metric or exp.selection_metric  # what the champion was promoted on
    plot = bench.pareto_plot(
        rows,
        metric,
        storage.plot_path(exp.name, "inference_pareto"),
        f"{exp.name}: {champion.label()} ({settings.name} settings)",
    )
    with warehouse.get_connection() as connection:
        previous = bench.previous_champion_rows(connection, exp.name, champion.model_version, settings.name)
        stored = bench.store_rows(connection, rows)
    comparison = bench.compare_with_previous(rows, previous)
    tracker = mlflow.tracker(exp.name)
    tracker.log(champion.run_id, metrics=bench.mlflow_metrics(rows))
    for artifact in (csv_path, plot):
        tracker.log_artifact(champion.run_id, str(artifact), "inference_benchmark")

    points = bench.pareto_points(rows)
    front = [p["point"] for p in points if p["pareto_optimal"]]
    context.log.info(f"{exp.name}: Pareto-optimal (test {metric} vs one-row p99): {', '.join(front)}")
    shown = [
        "point",
        "latency_p50_us",
        "latency_p99_us",
        "metric_value",
        "peak_rss_mb",
        "model_bytes",
        "pareto_optimal",
    ]
    return dg.MaterializeResult(
        metadata={
            "champion": champion.label(),
            "settings": settings.name,
            "variants": dg.MetadataValue.json([v.name for v in measured.variants]),
            "not_benchmarked": dg.MetadataValue.json(measured.not_benchmarked),
            "pareto_front": dg.MetadataValue.json(front),
            "points": dg.MetadataValue.md(md_table(shown, points)),
            "pareto_plot": dg.MetadataValue.md(md_image(plot, "accuracy vs one-row p99 latency")),
            "vs_previous_champion": dg.MetadataValue.md(
                md_table(["variant", "figure", "current", "previous", "previous_version", "change"], comparison)
                if comparison
                else "no earlier champion of this experiment was benchmarked with these settings"
            ),
            "rows": len(rows),
            "path": dg.MetadataValue.path(str(csv_path)),
            "warehouse_table": bench.WAREHOUSE_TABLE,
            "warehouse_rows": stored,
            "mlflow_run_id": champion.run_id,
        }
    )


class ServingCapacityConfig(dg.Config):
    """Launchpad config of serving_capacity: the sweep's steps (the defaults keep the demo within ~20 s)."""

    start_rps: float = 250.0
    factor: float = 1.6
    max_rps: float | None = None  # None: the experiment's deployment.slo.sweep_max_rps, else 8,000
    step_seconds: float = 2.0  # as mlgraph.deployment.capacity.ASSET_SWEEP


@dg.asset(
    partitions_def=experiment_partitions_def,
    deps=[CHAMPION_MODEL, onnx_model, inference_benchmark],
    kinds={"csv"},
    code_version="1",
)
def serving_capacity(
    context: dg.AssetExecutionContext, config: ServingCapacityConfig, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.MaterializeResult:
    """The champion's service replayed open loop at rising rates: its throughput–latency curve and saturation point."""
    from mlgraph.deployment import capacity
    from mlgraph.deployment.champion import read_champion

    exp = catalog.load(context.partition_key).config
    max_rps = config.max_rps or exp.deployment.slo.sweep_max_rps or capacity.ASSET_SWEEP.max_rps
    # The gate's sweep starts at min_rps when that is lower (capacity.gate_settings).
    first_rps = min(config.start_rps, exp.deployment.slo.min_rps)
    if not (config.start_rps > 0 and config.factor > 1 and max_rps >= first_rps and config.step_seconds > 0):
        raise dg.Failure(
            f"serving_capacity config {config.model_dump()}: needs start_rps > 0, factor > 1, max_rps ≥ start_rps "
            "and step_seconds > 0. Fix: correct the launchpad config."
        )
    champion = read_champion(storage, exp)
    settings = dataclasses.replace(
        capacity.ASSET_SWEEP,
        start_rps=config.start_rps,
        factor=config.factor,
        max_rps=max_rps,
        step_seconds=config.step_seconds,
    )
    measured = capacity.measure(
        storage,
        exp,
        champion,
        catalog.root,
        settings,
        on_step=lambda row: context.log.info(
            f"{row['offered_rps']:,.0f}/s → {row['achieved_rps']:,.0f}/s p99 {row['latency_ms']['p99_ms']} ms "
            + ("ok" if row["passed"] else f"saturated ({row['reason']})")
        ),
    )
    record, previous = measured.record, measured.previous
    if measured.sweep is None:
        context.log.warning(f"{champion.label()}: the service does not serve it ({record['reason']})")
        return dg.MaterializeResult(
            metadata={"champion": champion.label(), "servable": False, "reason": record["reason"]},
            data_version=dg.DataVersion(f"not-servable-{champion.model_version}-{record['measured_at']}"),
        )
    slo = record["slo"]
    context.log.info(
        f"{champion.label()} ({record['runtime']}): saturation {record['saturation_rps']:,.0f} requests/s within "
        f"p99 {slo['p99_ms']:g} ms (min_rps {slo['min_rps']:g})"
    )
    shown = ["offered_rps", "achieved_rps", "p50_ms", "p99_ms", "max_ms", "errors", "passed"]
    beside = [
        ["model_version", champion.model_version, previous["model_version"] if previous else "—"],
        ["runtime", record["runtime"], previous.get("runtime") if previous else "—"],
        ["saturation_rps", record["saturation_rps"], previous.get("saturation_rps") if previous else "—"],
        ["meets_slo", record["meets_slo"], previous.get("meets_slo") if previous else "—"],
        ["measured_at", record["measured_at"], previous.get("measured_at") if previous else "—"],
    ]
    return dg.MaterializeResult(
        metadata={
            "champion": champion.label(),
            "runtime": record["runtime"],
            "saturation_rps": record["saturation_rps"],
            "saturated": record["saturated"],
            "slo_p99_ms": slo["p99_ms"],
            "slo_min_rps": slo["min_rps"],
            "meets_slo": record["meets_slo"],
            "seconds": record["seconds"],
            "curve": dg.MetadataValue.md(md_table(shown, record["curve"])),
            "curve_plot": dg.MetadataValue.md(md_image(measured.plot_path, "open-loop latency vs offered rate")),
            "vs_previous_champion": dg.MetadataValue.md(md_table(["figure", "current", "previous"], beside)),
            "path": dg.MetadataValue.path(str(measured.csv_path)),
            "record": dg.MetadataValue.path(str(measured.record_path)),
        },
        data_version=dg.DataVersion(f"{champion.model_version}-{record['measured_at']}"),
    )
