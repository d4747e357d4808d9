"""The deployment group in Dagster: gates pass and the benchmark lands (CSV, warehouse, MLflow), or a gate fails
and nothing downstream of it materializes."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from mlgraph.cli.main import main
from mlgraph.core.drive import DriveLayout
from mlgraph.core.hashing import sha256_file
from mlgraph.deployment import bench, export
from mlgraph.training.lineage import verify_lineage, write_lineage
from pipeline_assets.definitions import defs
from resources.tracking import MlflowTracking
from tests.support.deployment import EXPERIMENT, perturb_first_weight, tabular_champion

DEPLOYMENT = ["onnx_model", "onnx_int8_model", "inference_benchmark"]
NAME = EXPERIMENT["classification"]


def _materialize(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        partition_key=NAME,
        raise_on_error=False,
        asset_selection=[dg.AssetKey(k) for k in DEPLOYMENT],
    )


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def _materialized(instance: dg.DagsterInstance, key: str) -> bool:
    return instance.get_latest_materialization_event(dg.AssetKey(key)) is not None


@pytest.fixture
def champion(shared_drive, config_dir, demo_frames):
    """A promoted logistic regression whose run exists in MLflow (the benchmark logs to it)."""
    drive = DriveLayout.at(shared_drive)
    config = tabular_champion(drive, "classification", "logistic_regression", demo_frames)
    run_id = MlflowTracking().tracker(NAME).create_run("champion", {})
    pointer_path = drive.promotion_dir(config.config_hash) / "current.json"
    pointer = json.loads(pointer_path.read_text())
    pointer_path.write_text(json.dumps({**pointer, "run_id": run_id}))
    # As champion_model leaves it: the lineage the ONNX hashes join.
    write_lineage(
        drive.lineage_json(NAME),
        {"run_id": run_id, "config_hash": config.config_hash},
        {"model": Path(pointer["model_path"])},
    )
    return drive, run_id


def test_gates_pass_and_the_benchmark_lands_everywhere(instance, champion) -> None:
    drive, run_id = champion
    result = _materialize(instance)

    assert result.success
    checks = _checks(result)
    assert set(checks) == {"onnx_model_parity", "onnx_model_schema", "onnx_int8_model_parity"}
    assert all(c.passed for c in checks.values()), {n: c.description for n, c in checks.items()}
    parity = checks["onnx_model_parity"].metadata
    assert parity["max_abs_err"].value < parity["max_abs_err_limit"].value == 0.04

    table = pd.read_csv(drive.inference_benchmark_csv(NAME))
    assert list(table.columns) == bench.COLUMNS and set(table["variant"]) == {"native", "onnx_fp32", "onnx_int8"}
    meta = instance.get_latest_materialization_event(dg.AssetKey("inference_benchmark")).asset_materialization.metadata
    assert meta["pareto_plot"].value.startswith("![accuracy vs one-row p99 latency](data:image/png;base64,")
    assert meta["pareto_front"].value and meta["warehouse_rows"].value == len(table)
    with duckdb.connect(str(drive.warehouse_db()), read_only=True) as connection:
        stored = connection.execute(f"SELECT count(*) FROM {bench.WAREHOUSE_TABLE}").fetchall()[0][0]
    assert stored == len(table)
    logged = MlflowTracking().client().get_run(run_id).data.metrics
    assert logged["bench_onnx_fp32_t1_latency_p50_us"] > 0
    assert set(export.onnx_hashes(drive, NAME)) == {"onnx_model", "onnx_int8_model"}

    # The ONNX hashes joined lineage.json: `mlgraph verify` passes, then catches one changed byte.
    lineage = drive.lineage_json(NAME)
    recorded = json.loads(lineage.read_text())["files"]
    assert {"model", "onnx_model", "onnx_int8_model"} <= set(recorded)
    assert recorded["onnx_model"]["sha256"] == export.onnx_hashes(drive, NAME)["onnx_model"]
    assert main(["verify", str(lineage)]) == 0
    onnx_file = drive.onnx_model_path(NAME)
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    assert verify_lineage(lineage) == [
        f"onnx_model: {onnx_file.resolve()} SHA-256 differs: recorded {recorded['onnx_model']['sha256'][:16]}…, "
        f"now {sha256_file(onnx_file)[:16]}…"
    ]
    assert main(["verify", str(lineage)]) == 1


def test_a_perturbed_export_fails_its_gate_and_blocks_everything_downstream(instance, champion, monkeypatch) -> None:
    drive, _ = champion
    build = export.build_onnx

    def perturbed(champion_, native):
        model, converter = build(champion_, native)
        perturb_first_weight(model)
        return model, converter

    monkeypatch.setattr(export, "build_onnx", perturbed)
    result = _materialize(instance)

    assert not result.success
    gate = _checks(result)["onnx_model_parity"]
    assert not gate.passed and gate.severity == dg.AssetCheckSeverity.ERROR
    assert gate.metadata["max_abs_err"].value > gate.metadata["max_abs_err_limit"].value
    assert "max abs error" in gate.description
    assert _materialized(instance, "onnx_model")
    assert not _materialized(instance, "onnx_int8_model") and not _materialized(instance, "inference_benchmark")
    assert not drive.inference_benchmark_csv(NAME).exists()
