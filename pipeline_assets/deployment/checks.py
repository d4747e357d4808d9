"""The release gates (design document 001's release blockers) as blocking checks on the ONNX assets.

A failed gate fails the run and keeps everything downstream (the benchmark, serving) from running; its
metadata holds each observed value beside its limit. A gate that does not apply (no faithful export,
nothing quantizable) has nothing to stop: it passes with `applicable: False` and the reason as its
description ("not applicable: INT8 not applicable: 0 quantizable nodes"), so neither a run nor the
automation (which waits for blocking checks to pass) is held by it; the assets' own metadata and
reports record the variant as missing, never as an INT8 or ONNX model.

`serving_capacity_meets_slo` is the serving release gate: a champion whose service saturates below the
experiment's `deployment.slo.min_rps` fails it, and the service refuses to load that champion
(mlgraph.deployment.capacity.release_hold), so the model it serves — the previous champion — stays.
"""

import dagster as dg

from mlgraph.core.markdown import md_table
from pipeline_assets.deployment.assets import CHAMPION_MODEL, onnx_int8_model, onnx_model, serving_capacity
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive

TRAIN_TEST_SPLIT = dg.AssetKey("train_test_split")


def _not_applicable(reason: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=True, description=f"not applicable: {reason}", metadata={"applicable": False, "reason": reason}
    )


def _parity_result(outcome) -> dg.AssetCheckResult:
    if not outcome.applicable:
        return _not_applicable(outcome.reason)
    result = outcome.result
    return dg.AssetCheckResult(
        passed=result.passed,
        metadata={"applicable": True, **result.metadata()},
        description="; ".join(result.failures) or "within every limit",
    )


@dg.asset_check(asset=onnx_model, blocking=True, additional_deps=[CHAMPION_MODEL, TRAIN_TEST_SPLIT])
def onnx_model_parity(
    context: dg.AssetCheckExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.AssetCheckResult:
    """ONNX FP32 matches the native champion on the test split and edge rows: max/mean abs error, label agreement."""
    from mlgraph.deployment import gates

    return _parity_result(gates.fp32_parity(storage, catalog.load(context.partition_key).config))


@dg.asset_check(asset=onnx_int8_model, blocking=True, additional_deps=[CHAMPION_MODEL, TRAIN_TEST_SPLIT])
def onnx_int8_model_parity(
    context: dg.AssetCheckExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.AssetCheckResult:
    """ONNX INT8 passes the same parity limits and loses at most the budgeted test metric against FP32."""
    from mlgraph.deployment import gates
    from mlgraph.deployment.parity import Int8Budget

    config = catalog.load(context.partition_key).config
    return _parity_result(gates.int8_parity(storage, config, Int8Budget.of(config)))


@dg.asset_check(asset=onnx_model, blocking=True, additional_deps=[CHAMPION_MODEL, TRAIN_TEST_SPLIT])
def onnx_model_schema(
    context: dg.AssetCheckExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.AssetCheckResult:
    """The ONNX serving inputs have the names, types and order of the training features."""
    from mlgraph.deployment import gates

    outcome = gates.schema(storage, catalog.load(context.partition_key).config)
    if not outcome.applicable:
        return _not_applicable(outcome.reason)
    rows = [
        [e["name"], e["type"], next((a["type"] for a in outcome.actual if a["name"] == e["name"]), "—")]
        for e in outcome.expected
    ]
    return dg.AssetCheckResult(
        passed=not outcome.differences,
        description="; ".join(outcome.differences) or "serving inputs equal the training features",
        metadata={
            "applicable": True,
            "differences": len(outcome.differences),
            "differences_limit": 0,
            "details": dg.MetadataValue.json(list(outcome.differences)),
            "inputs": dg.MetadataValue.md(md_table(["training feature", "expected type", "ONNX input type"], rows)),
        },
    )


@dg.asset_check(asset=serving_capacity, blocking=True, additional_deps=[CHAMPION_MODEL])
def serving_capacity_meets_slo(
    context: dg.AssetCheckExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.AssetCheckResult:
    """The champion's service sustains at least the SLO's min_rps within its p99 (open-loop sweep); else not released."""
    from mlgraph.deployment import capacity
    from mlgraph.deployment.champion import read_champion

    config = catalog.load(context.partition_key).config
    champion = read_champion(storage, config)
    path = storage.capacity_json(config.name)
    record = capacity.read_record(path)
    if record is None or str(record.get("model_version")) != champion.model_version:
        return dg.AssetCheckResult(
            passed=False,
            description=f"{path} holds no measurement of {champion.label()}. Fix: materialize serving_capacity.",
            metadata={"record": dg.MetadataValue.path(str(path))},
        )
    if record.get("servable") is False:
        return _not_applicable(f"the service does not serve {champion.label()}: {record.get('reason')}")
    slo = record["slo"]
    held = capacity.release_hold(storage, champion)
    return dg.AssetCheckResult(
        passed=bool(record["meets_slo"]),
        description=held
        or f"{record['saturation_rps']:,.0f} requests/s within p99 {slo['p99_ms']:g} ms ≥ min_rps {slo['min_rps']:g}",
        metadata={
            "saturation_rps": record["saturation_rps"],
            "min_rps": slo["min_rps"],
            "p99_ms_limit": slo["p99_ms"],
            "saturated": record["saturated"],
            "runtime": record.get("runtime"),
            "released": not held,
            "record": dg.MetadataValue.path(str(path)),
        },
    )
