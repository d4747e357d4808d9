"""drift_sensor on a real drive and instance: run requests, tags, cooldown, restarts (cursor lost or kept)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.storage.dagster_run import DagsterRun

from mlgraph.core.drive import DriveLayout
from mlgraph.core.tags import TAG_DRIFT_WINDOW, TAG_DRIFT_WINDOW_ROWS, TAG_RETRAIN_REASON, TAG_TRIGGER
from mlgraph.monitoring.baseline import compute_baseline, write_baseline
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive
from sensors.drift import DriftCursor, drift_sensor
from tests.test_drift import log_lines, serving_window, training_frame, write_log


@pytest.fixture
def setup(shared_drive: Path, config_dir: Path, instance: dg.DagsterInstance):
    """Experiment `shop` registered, with a drift baseline and a min_window of 100."""
    config = {
        "name": "shop",
        "task": "classification",
        "dataset": {"generator": "student_engagement"},
        "target": "bought",
        "columns": {"plan": "categorical"},
        "drift": {"min_window": 100},
    }
    (config_dir / "experiments" / "shop.yaml").write_text(yaml.safe_dump(config))
    instance.add_dynamic_partitions("experiment", ["shop"])
    catalog = ExperimentCatalog(config_dir=str(config_dir))
    drive = DriveLayout.at(shared_drive)
    write_baseline(
        drive, "shop", compute_baseline(training_frame(), catalog.load("shop").config, {"model_version": "1"})
    )
    return drive, catalog, instance


def tick(setup, cursor: str | None = None) -> dg.SensorResult:
    drive, catalog, instance = setup
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"storage": SharedDrive(root=str(drive.root)), "catalog": catalog}
    )
    result = drift_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def log(drive: DriveLayout, rows: int, start_hour: int, **kwargs) -> None:
    frame, predictions = serving_window(rows, **kwargs)
    write_log(drive, "shop", log_lines(frame, predictions, dt.datetime(2026, 11, 30, start_hour, tzinfo=dt.UTC)))


def test_no_log_no_run_and_no_drift_no_run(setup) -> None:
    drive = setup[0]
    quiet = tick(setup)
    assert quiet.run_requests == [] and "shop: no predictions logged" in quiet.skip_reason.skip_message
    log(drive, 500, 1)
    steady = tick(setup, quiet.cursor)
    assert steady.run_requests == [] and "shop: no_drift" in steady.skip_reason.skip_message
    [observation] = steady.asset_events  # the log changed: one prediction_log observation
    assert observation.asset_key == dg.AssetKey("prediction_log") and observation.partition == "shop"
    assert observation.metadata["rows"].value == 500
    assert tick(setup, steady.cursor).asset_events == []  # unchanged log: nothing new to report


def test_drift_requests_one_tagged_run_then_the_cooldown_holds(setup) -> None:
    drive, _, instance = setup
    log(drive, 500, 1, shifted={"f1": 4, "f2": 4})
    first = tick(setup)
    [request] = first.run_requests
    assert request.partition_key == "shop" and request.job_name in (None, "retraining_job")
    assert request.tags[TAG_TRIGGER] == "drift" and request.tags[TAG_DRIFT_WINDOW_ROWS] == "500"
    assert request.tags[TAG_RETRAIN_REASON].startswith("feature drift: 2 feature(s) drifted")
    assert request.tags[TAG_DRIFT_WINDOW] == "2026-11-30T01:00:00+00:00/2026-11-30T01:08:19+00:00"
    assert json.loads(first.cursor)["triggers"]["shop"]["run_key"] == request.run_key

    # Still drifting, new predictions, inside the 6 h cooldown: no second run.
    log(drive, 500, 2, shifted={"f1": 4, "f2": 4})
    held = tick(setup, first.cursor)
    assert held.run_requests == [] and "cooldown 6 h" in held.skip_reason.skip_message

    # A restarted daemon that lost the cursor (a crash after the request): the instance's run holds it.
    instance.add_run(
        DagsterRun(
            job_name="retraining_job",
            run_id=str(uuid.uuid4()),
            tags={**request.tags, "dagster/partition": "shop", "dagster/run_key": request.run_key},
        )
    )
    lost = tick(setup, None)
    assert lost.run_requests == [] and "retrained it inside the cooldown" in lost.skip_reason.skip_message
    assert json.loads(lost.cursor)["triggers"]["shop"]["run_key"] == request.run_key


def test_run_key_is_deterministic_per_experiment_and_window(setup) -> None:
    log(setup[0], 500, 1, shifted={"f1": 4, "f2": 4})
    [a], [b] = tick(setup).run_requests, tick(setup).run_requests  # same window, cursor lost, no run recorded
    assert a.run_key == b.run_key and a.run_key.startswith("drift:shop:")


def test_an_expired_trigger_allows_the_next_run(setup) -> None:
    drive = setup[0]
    log(drive, 500, 1, shifted={"f1": 4, "f2": 4})
    expired = DriftCursor(triggers={"shop": {"at": 0.0, "run_key": "drift:shop:old"}}).dump()
    [request] = tick(setup, expired).run_requests
    assert request.run_key != "drift:shop:old"


def test_a_broken_baseline_is_reported_and_skipped(setup) -> None:
    drive = setup[0]
    log(drive, 500, 1)
    drive.drift_baseline_json("shop").write_text("{not json")
    result = tick(setup)
    assert result.run_requests == [] and "shop: error (ValueError)" in result.skip_reason.skip_message


def test_a_foreign_cursor_says_how_to_fix_it() -> None:
    with pytest.raises(ValueError, match="clear the cursor"):
        DriftCursor.load("[1, 2]")


def test_drift_report_asset_writes_the_report(setup) -> None:
    from pipeline_assets.definitions import defs

    drive, _, instance = setup
    log(drive, 500, 1, shifted={"f1": 4, "f2": 4})
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, partition_key="shop", asset_selection=[dg.AssetKey("drift_report")]
    )
    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["status"].value == "drift" and metadata["retraining_recommended"].value is True
    assert metadata["window_rows"].value == 500 and metadata["features"].value.count("| yes |") == 2
    saved = json.loads(drive.drift_report_json("shop").read_text())
    assert saved["status"] == "drift" and saved["drifted_features"] == ["f1", "f2"]


def test_no_run_while_the_baseline_describes_an_earlier_champion(setup) -> None:
    from mlgraph.training.promotion import PromotionStore

    drive, catalog, _ = setup
    log(drive, 500, 1, shifted={"f1": 4, "f2": 4})
    PromotionStore(drive.promotion_dir(catalog.load("shop").config.config_hash)).promote({"model_version": "2"})
    result = tick(setup)
    assert result.run_requests == [] and "stale baseline (champion v1, now v2)" in result.skip_reason.skip_message


def test_a_damaged_cursor_does_not_stop_the_loop(setup) -> None:
    drive, _, instance = setup
    log(drive, 500, 1, shifted={"f1": 4, "f2": 4})
    [request] = tick(setup, "not json {").run_requests  # warned, started from an empty cursor
    instance.add_run(
        DagsterRun(
            job_name="retraining_job",
            run_id=str(uuid.uuid4()),
            tags={**request.tags, "dagster/partition": "shop", "dagster/run_key": request.run_key},
        )
    )
    # Damaged again after the request: the instance's run still holds the cooldown.
    held = tick(setup, '{"triggers": 3}')
    assert held.run_requests == [] and "inside the cooldown" in held.skip_reason.skip_message
