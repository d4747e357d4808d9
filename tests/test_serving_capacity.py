"""serving_capacity in Dagster: the champion's service swept to saturation (curve, plot, record), and the
blocking check serving_capacity_meets_slo — which fails for an SLO no service meets, and then the service
refuses to release that champion."""

from __future__ import annotations

import json

import dagster as dg
import pandas as pd
import yaml

from mlgraph.core.drive import DriveLayout
from mlgraph.deployment import capacity, saturation
from mlgraph.deployment.champion import read_champion
from pipeline_assets.definitions import defs
from tests.support.deployment import EXPERIMENT, export_current, tabular_champion

NAME = EXPERIMENT["classification"]


# Short steps up to a few hundred requests/s: seconds per run, still a real service under real load.
def _quick(max_rps: float) -> dict:
    return {
        "ops": {
            "serving_capacity": {"config": {"start_rps": 100, "factor": 2, "max_rps": max_rps, "step_seconds": 0.5}}
        }
    }


def _run(
    instance: dg.DagsterInstance, max_rps: float = 400
) -> tuple[dg.ExecuteInProcessResult, dict[str, dg.AssetCheckEvaluation]]:
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance,
        partition_key=NAME,
        raise_on_error=False,
        asset_selection=[dg.AssetKey("serving_capacity")],
        run_config=_quick(max_rps),
    )
    checks = {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    return result, checks


def _set_slo(config_dir, **slo) -> None:
    path = config_dir / "experiments" / f"{NAME}.yaml"
    data = yaml.safe_load(path.read_text())
    data.setdefault("deployment", {})["slo"] = slo
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_capacity_is_measured_and_an_unmet_slo_holds_the_release(instance, shared_drive, config_dir, demo_frames):
    drive = DriveLayout.at(shared_drive)
    config = tabular_champion(drive, "classification", "logistic_regression", demo_frames)
    export_current(drive, config)  # served as ONNX, as in the demo

    result, checks = _run(instance)
    assert result.success
    check = checks["serving_capacity_meets_slo"]
    assert check.passed, check.description
    assert check.metadata["min_rps"].value == 200.0 and check.metadata["saturation_rps"].value >= 200
    record = json.loads(drive.capacity_json(NAME).read_text())
    assert (
        record["model_version"] == "1" and record["meets_slo"] and record["slo"] == {"p99_ms": 50.0, "min_rps": 200.0}
    )
    curve = pd.read_csv(drive.capacity_curve_csv(NAME))
    assert list(curve.columns) == saturation.CURVE_COLUMNS and curve["offered_rps"].iloc[0] == 100
    assert drive.capacity_plot(NAME).read_bytes()[:4] == b"\x89PNG"
    meta = instance.get_latest_materialization_event(dg.AssetKey("serving_capacity")).asset_materialization.metadata
    assert "![" in meta["curve_plot"].value and "| offered_rps |" in meta["curve"].value
    assert all("capacity" in p.name for p in drive.capacity_dir(NAME).iterdir())
    champion = read_champion(drive, config)
    assert capacity.release_hold(drive, champion) is None

    # An SLO no service meets (it is not in the config hash: the champion stays the champion).
    _set_slo(config_dir, p99_ms=50, min_rps=1_000_000)
    result, checks = _run(instance, max_rps=100)
    check = checks["serving_capacity_meets_slo"]
    assert not check.passed and not result.success  # blocking: the run fails, nothing downstream runs
    assert check.metadata["min_rps"].value == 1_000_000 and check.metadata["released"].value is False
    assert "gate serving_capacity_meets_slo failed" in check.description
    held = capacity.release_hold(drive, champion)
    assert held and "below min_rps 1000000" in held
    history = drive.capacity_history_jsonl(NAME).read_text().splitlines()
    assert len(history) == 2 and not json.loads(history[-1])["meets_slo"]

    # The service refuses to load the held champion (a running one keeps serving the model it has).
    with capacity.ServiceProcess(shared_drive, config_dir, NAME, "--no-prediction-log") as service:
        import httpx

        def refused() -> str | None:
            try:
                body = httpx.get(f"{service.url}/health", timeout=2).json()
            except httpx.TransportError:
                return None
            failure = body.get("last_load_failure")
            return failure["error"] if failure else None

        from tests.support.wait import wait_for

        error = wait_for(refused, 60, "the held champion's refusal")
        assert "serving_capacity_meets_slo" in error
        assert httpx.get(f"{service.url}/ready", timeout=2).status_code == 503
