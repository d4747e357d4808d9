"""serving_capacity in Dagster: the champion's service swept to saturation (curve, plot, record), and the
blocking check serving_capacity_meets_slo — which fails for an SLO no service meets, and then the service
refuses to release that champion."""

from __future__ import annotations

import json

import dagster as dg
import pandas as pd
import pytest
import yaml

from mlgraph.core.drive import DriveLayout
from mlgraph.deployment import capacity, saturation
from mlgraph.deployment.champion import read_champion
from pipeline_assets.definitions import defs
from tests.support.deployment import EXPERIMENT, export_current, tabular_champion
from tests.support.serving import (  # noqa: F401
    BINARY,
    Server,
    config_of,
    drive_copy,
    fit,
    promote_model,
    serving_drive,
)
from tests.support.wait import wait_for

NAME = EXPERIMENT["classification"]


# Short steps up to a few hundred requests/s: seconds per run, still a real service under real load.
def _quick(max_rps: float | None) -> dict:
    return {
        "ops": {
            "serving_capacity": {"config": {"start_rps": 100, "factor": 2, "max_rps": max_rps, "step_seconds": 0.5}}
        }
    }


def _run(
    instance: dg.DagsterInstance, max_rps: float | None = 400
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

        error = wait_for(refused, 60, "the held champion's refusal")
        assert "serving_capacity_meets_slo" in error
        assert httpx.get(f"{service.url}/ready", timeout=2).status_code == 503


def _record(drive: DriveLayout, version: str, meets_slo: bool) -> None:
    """A capacity record as serving_capacity writes it (the figures that matter to the release rule)."""
    from mlgraph.core.atomic import atomic_append_line, atomic_write_json

    record = {
        "experiment": BINARY,
        "model_version": version,
        "run_id": f"run-logistic_regression-{version}",
        "measured_at": "2026-12-07T00:00:00Z",
        "servable": True,
        "slo": {"p99_ms": 50.0, "min_rps": 200.0},
        "saturation_rps": 1000.0 if meets_slo else 50.0,
        "meets_slo": meets_slo,
        "curve": [],
    }
    atomic_write_json(drive.capacity_json(BINARY), record)
    atomic_append_line(drive.capacity_history_jsonl(BINARY), json.dumps(record))


def test_a_running_service_keeps_the_old_champion_until_the_new_one_passes(serving_drive, tmp_path):  # noqa: F811
    root = drive_copy(serving_drive, tmp_path / "shared")
    drive, config_dir = DriveLayout.at(root), serving_drive[1]
    config = config_of(config_dir, BINARY)
    _record(drive, "1", meets_slo=True)
    with Server(root, config_dir, BINARY, "--no-prediction-log", "--poll-interval", "0.2") as server:
        assert server.wait_up()["model_version"] == "1"
        train = pd.read_parquet(drive.dataset_path(BINARY, "train"))
        for version, c in (("2", 0.01), ("3", 0.1)):
            model = fit(config, train, "logistic_regression", {"C": c})
            promote_model(drive, config, model, "logistic_regression", version, threshold=0.5)

            def failure(version=version) -> str | None:
                error = (server.client.get("/health").json()["last_load_failure"] or {}).get("error", "")
                return error if f"v{version}" in error else None

            # Promoted but not measured: held, v1 answers.
            assert "awaits its serving-capacity measurement" in wait_for(failure, 30, f"v{version} held")
            assert server.client.get("/health").json()["model_version"] == "1"
            if version == "2":  # measured and too slow: never released, v1 goes on answering
                _record(drive, "2", meets_slo=False)
                assert "gate serving_capacity_meets_slo failed" in wait_for(
                    lambda: (e := failure()) and "failed for" in e and e, 30, "v2 refused"
                )
                assert server.client.get("/health").json()["model_version"] == "1"
            else:  # measured and fast enough: released within a poll
                _record(drive, "3", meets_slo=True)
                wait_for(lambda: server.client.get("/health").json()["model_version"] == "3", 30, "v3 served")


def test_a_champion_the_service_refuses_is_recorded_as_not_servable(serving_drive, tmp_path):  # noqa: F811
    from mlgraph.core.hashing import sha256_file
    from mlgraph.training.promotion import PromotionStore

    root = drive_copy(serving_drive, tmp_path / "shared")
    drive, config_dir = DriveLayout.at(root), serving_drive[1]
    config = config_of(config_dir, BINARY)
    broken = drive.champion_bundle(BINARY, "2") / "logistic_regression.joblib"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a pickle")
    PromotionStore(drive.promotion_dir(config.config_hash)).promote(
        {
            "model_path": str(broken),
            "model_type": "logistic_regression",
            "model_version": "2",
            "run_id": "run-broken",
            "artifact_sha256": sha256_file(broken),
            "threshold": 0.5,
        }
    )
    champion = read_champion(drive, config)
    measured = capacity.measure(drive, config, champion, config_dir)  # refused at once, not after the 60 s wait
    assert measured.sweep is None and measured.record["servable"] is False
    assert "cannot be loaded" in measured.record["reason"]
    assert (
        capacity.release_hold(drive, champion) is None
    )  # nothing measured to hold it on; the service refuses it anyway
    assert not (drive.capacity_dir(BINARY) / "serving_capacity_scratch_log").exists()


def test_the_slo_can_bound_the_sweep_and_must_reach_min_rps(instance, shared_drive, config_dir, demo_frames):
    from pydantic import ValidationError

    from mlgraph.core.experiment import ServingSLO

    with pytest.raises(ValidationError, match="sweep_max_rps 10.0 is below min_rps 50.0"):
        ServingSLO(min_rps=50, sweep_max_rps=10)
    drive = DriveLayout.at(shared_drive)
    config = tabular_champion(drive, "classification", "logistic_regression", demo_frames)
    export_current(drive, config)
    # No max_rps in the run's config (as automation launches it): the YAML's sweep_max_rps bounds the sweep.
    _set_slo(config_dir, p99_ms=50, min_rps=50, sweep_max_rps=150)
    result, checks = _run(instance, max_rps=None)
    assert result.success and checks["serving_capacity_meets_slo"].passed
    curve = pd.read_csv(drive.capacity_curve_csv(NAME))
    assert curve["offered_rps"].iloc[0] == 50 and curve["offered_rps"].max() <= 150
