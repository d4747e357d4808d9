"""Delayed labels without the service: the labels store, the join over rotated logs, metrics per bucket and
version, the drop rule, the labels sensor (files: good, duplicate, unknown, wrong type), the live_performance
asset's outputs, and a performance drop that starts exactly one retraining run through drift_sensor."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from dagster._core.storage.dagster_run import DagsterRun

from mlgraph.core.drive import DriveLayout
from mlgraph.core.prediction_log import rotated_name
from mlgraph.core.tags import TAG_DRIFT_WINDOW_ROWS, TAG_RETRAIN_REASON, TAG_TRIGGER
from mlgraph.monitoring import live
from mlgraph.monitoring.labels import Batch, append_labels, read_labels
from mlgraph.serving.log_writer import Entry, format_entry
from mlgraph.training.promotion import PromotionStore
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive
from tests.test_drift import experiment

T0 = dt.datetime(2026, 11, 30, 10, 0, tzinfo=dt.UTC)


def entry(request_id: str, minutes: float, outputs: list[dict], version: str = "1") -> str:
    """The writer's own lines (format_entry), so the join is tested on what the service writes."""
    when = (T0 + dt.timedelta(minutes=minutes)).timestamp()
    return format_entry(Entry(when, request_id, version, [{"f1": 1.0}] * len(outputs), outputs)).decode()


def binary(prediction: int, probability: float) -> dict:
    return {"prediction": prediction, "probability": probability}


def write_known_log(drive: DriveLayout, name: str = "shop") -> None:
    """Hour 10, v1, rotated away: four single predictions. Hour 11, v2, current file: one batch of four rows."""
    current = drive.prediction_log_path(name)
    current.parent.mkdir(parents=True, exist_ok=True)
    rotated = rotated_name(current, T0 + dt.timedelta(minutes=59))
    rotated.write_text(
        "".join(
            entry(rid, i, [binary(p, q)])
            for i, (rid, p, q) in enumerate([("ra", 1, 0.9), ("rb", 0, 0.2), ("rc", 1, 0.8), ("rd", 0, 0.3)])
        )
    )
    batch = [binary(1, 0.7), binary(1, 0.6), binary(0, 0.4), binary(0, 0.1)]
    current.write_text(entry("bb", 70, batch, version="2") + '{"torn": \n')


def store(drive: DriveLayout, labels: list[tuple[str, object]], name: str = "shop") -> Batch:
    batch = Batch()
    for label_id, label in labels:
        batch.add(label_id, label)
    append_labels(drive.labels_store_path(name), batch, "test", within=drive.root)
    return batch


KNOWN_LABELS = [
    ("ra", 1),  # the bare request id of a /predict answer, arriving after its log file was rotated
    ("rb", 1),
    ("rc", 1),
    ("rd-0", 0),  # the same prediction's batch spelling
    ("bb-0", 0),  # superseded below: the last label wins
    ("bb-1", 1),
    ("bb-2", 1),
    ("bb-3", 0),
    ("nosuchrequest", 1),  # well-formed, but no prediction has it
]


def test_join_reads_rotated_files_keeps_the_last_label_and_counts_unknown_ids(tmp_path: Path) -> None:
    drive = DriveLayout.at(tmp_path / "shared")
    write_known_log(drive)
    store(drive, KNOWN_LABELS)
    store(drive, [("bb-0", 1), ("bad id with spaces", 1)])  # a late correction; an id never given is not stored
    joined = live.join(drive.prediction_log_path("shop"), drive.labels_store_path("shop"))
    summary = joined.summary()
    assert summary["labelled_predictions"] == 8 and summary["labels"] == 9
    assert (
        summary["duplicates"] == 1 and summary["unknown_ids"] == 1 and summary["unknown_examples"] == ["nosuchrequest"]
    )
    assert summary["bad_log_lines"] == 1 and len(summary["log_files"]) == 2
    assert {i.id: i.label for i in joined.labelled}["bb-0"] == 1

    config = experiment(live_bucket="hour")
    reference = live.Reference("roc_auc", 0.9, "2", "run", None)
    rows = live.score(joined, config, reference)
    assert [(r["bucket_start"], r["model_version"], r["n_labelled"]) for r in rows] == [
        ("2026-11-30T10:00:00+00:00", "1", 4),
        ("2026-11-30T11:00:00+00:00", "2", 4),
    ]
    assert rows[0]["accuracy"] == 0.75  # rb was predicted 0, labelled 1
    assert rows[1]["accuracy"] == 0.75  # bb-0 right after its correction; bb-2 predicted 0, labelled 1
    assert rows[0]["roc_auc"] == pytest.approx(2 / 3)  # rb (labelled 1) scored 0.2, under rd's 0.3
    day = live.score(joined, experiment(live_bucket="day"), reference)
    assert [(r["bucket_start"], r["n_labelled"]) for r in day] == [("2026-11-30T00:00:00+00:00", 4)] * 2


def test_the_drop_rule_over_the_champions_last_labelled_predictions(tmp_path: Path) -> None:
    drive = DriveLayout.at(tmp_path / "shared")
    write_known_log(drive)
    store(drive, KNOWN_LABELS)
    joined = live.join(drive.prediction_log_path("shop"), drive.labels_store_path("shop"))
    pointer = {"metric": "accuracy", "test_score": 0.8, "model_version": "2", "run_id": "r"}
    reference = live.Reference.from_pointer(pointer, experiment())
    few = live.performance_check(joined, experiment(min_labels=5), reference)
    assert not few["checked"] and "fewer than min_labels=5" in few["reason"]
    dropped = live.performance_check(joined, experiment(min_labels=4, performance_drop=0.1), reference)
    assert dropped["checked"] and dropped["dropped"] and dropped["n"] == 4  # v2 only: v1's four do not count
    assert dropped["realized"] == 0.5 and dropped["drop"] == pytest.approx(0.3)
    assert dropped["reason"].startswith("performance drop: accuracy 0.5000 over the last 4 labelled predictions")
    assert not live.performance_check(joined, experiment(min_labels=4, performance_drop=0.4), reference)["dropped"]


def test_a_torn_store_line_is_skipped_and_the_next_append_starts_a_fresh_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_bytes(b'{"time":"t","id":"a","label":1}\n{"time":"t","id":"b","lab')
    append_labels(path, Batch(labels={"c": (0, None)}), "test")
    stored = read_labels(path)
    assert set(stored.labels) == {"a", "c"} and stored.bad_lines == 1


# --- the labels sensor and the asset, on a real instance ----------------------------------------------------


@pytest.fixture
def shop(shared_drive: Path, config_dir: Path, instance: dg.DagsterInstance):
    config = {
        "name": "shop",
        "task": "classification",
        "dataset": {"generator": "student_engagement"},
        "target": "bought",
        "drift": {"min_labels": 4, "performance_drop": 0.1, "live_bucket": "hour"},
    }
    (config_dir / "experiments" / "shop.yaml").write_text(yaml.safe_dump(config))
    instance.add_dynamic_partitions("experiment", ["shop"])
    catalog = ExperimentCatalog(config_dir=str(config_dir))
    drive = DriveLayout.at(shared_drive)
    train = drive.dataset_path("shop", "train")
    train.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"f1": [0.0, 1.0], "bought": [0, 1]}).to_parquet(train)  # the classes labels must be one of
    return drive, catalog, instance


def drop_file(drive: DriveLayout, name: str, text: str) -> Path:
    inbox = drive.labels_inbox_dir("shop")
    inbox.mkdir(parents=True, exist_ok=True)
    path = inbox / name
    path.write_text(text)
    settled = time.time() - 60
    os.utime(path, (settled, settled))
    return path


def labels_tick(setup, cursor: str | None = None) -> dg.SensorResult:
    from sensors.labels import labels_sensor

    drive, catalog, instance = setup
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"storage": SharedDrive(root=str(drive.root)), "catalog": catalog}
    )
    return labels_sensor(context)


def test_labels_files_through_the_sensor(shop) -> None:
    from mlgraph.ops.alerts import read_open_alerts

    drive = shop[0]
    write_known_log(drive)
    good = drop_file(drive, "batch1.csv", "request_id,label,time\nra,1,2026-12-01\nrb,1,\nrb,0,\nunknown1,1,\n")
    drop_file(drive, "wrong.csv", "request_id,label\nrc,yes\nrd,1\n")
    fresh = drop_file(drive, "late.csv", "request_id,label\nbb-0,0\n")
    os.utime(fresh, None)  # still being copied: left for a later tick

    first = labels_tick(shop)
    [request] = first.run_requests
    assert request.partition_key == "shop" and request.asset_selection == [dg.AssetKey("live_performance")]
    inbox = drive.labels_inbox_dir("shop")
    assert (inbox / "processed" / good.name).exists() and not good.exists()
    reason = (inbox / "rejected" / "wrong.csv.reason.txt").read_text()
    assert "wrong.csv: column 'label'" in reason and 'row 1: "yes" is not one of the model\'s classes [0, 1]' in reason
    [alert] = [a for a in read_open_alerts(drive) if a["kind"] == "labels_rejected"]
    assert alert["experiment"] == "shop" and "wrong.csv" in alert["message"]
    stored = read_labels(drive.labels_store_path("shop"))
    assert {k: v["label"] for k, v in stored.labels.items()} == {
        "ra": 1,
        "rb": 0,
        "unknown1": 1,
    }  # nothing of wrong.csv
    assert stored.labels["ra"]["label_time"] == "2026-12-01" and stored.labels["ra"]["source"] == "file:batch1.csv"

    assert labels_tick(shop, first.cursor).run_requests == []  # nothing new, nothing re-read
    settled = time.time() - 60
    os.utime(fresh, (settled, settled))
    [again] = labels_tick(shop, first.cursor).run_requests  # the late file: the store changed, one more run
    assert again.run_key != request.run_key


def promote(drive: DriveLayout, catalog: ExperimentCatalog, **fields) -> dict:
    pointer = {"model_version": "2", "metric": "accuracy", "test_score": 0.9, **fields}
    PromotionStore(drive.promotion_dir(catalog.load("shop").config.config_hash)).promote(pointer)
    return pointer


def materialize(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    from pipeline_assets.definitions import defs

    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, partition_key="shop", asset_selection=[dg.AssetKey("live_performance")]
    )


def test_live_performance_asset_writes_csv_table_plot_mlflow_and_alerts(shop) -> None:
    import duckdb

    from mlgraph.ops.alerts import read_open_alerts
    from resources.tracking import MlflowTracking

    drive, catalog, instance = shop
    write_known_log(drive)
    store(drive, KNOWN_LABELS)
    tracking = MlflowTracking()
    client = tracking.client()
    run_id = client.create_run(tracking.ensure_experiment("shop")).info.run_id
    promote(drive, catalog, run_id=run_id)

    result = materialize(instance)
    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["performance_drop"].value is True and metadata["n_labelled"].value == 8
    assert metadata["unknown_ids"].value == 1 and metadata["mlflow_metrics"].value > 0
    csv = pd.read_csv(drive.live_performance_csv("shop"))
    assert list(csv["n_labelled"]) == [4, 4] and list(csv["accuracy"]) == [0.75, 0.5]
    plot = drive.plot_path("shop", "live_performance")
    assert plot.stat().st_size > 1000 and all("live" in p.name for p in (plot, drive.live_performance_csv("shop")))
    with duckdb.connect(str(drive.warehouse_db()), read_only=True) as db:
        table = db.sql(
            "SELECT model_version, n_labelled, value FROM live_performance WHERE metric = 'accuracy' ORDER BY 1"
        ).fetchall()
    assert table == [("1", 4, 0.75), ("2", 4, 0.5)]
    history = client.get_metric_history(run_id, "live_accuracy")
    assert [(m.value, m.timestamp) for m in history] == [
        (0.5, int(dt.datetime(2026, 11, 30, 11, tzinfo=dt.UTC).timestamp() * 1000))
    ]
    [alert] = [a for a in read_open_alerts(drive) if a["kind"] == "performance_drop"]
    assert alert["severity"] == "critical" and "accuracy 0.5000" in alert["message"]
    report = json.loads(drive.live_performance_json("shop").read_text())
    assert report["performance"]["dropped"] and report["trend"]["last"] == 0.5

    # The dashboard's experiments table: the live metric, its change, the trend and the drop.
    from mlgraph.dashboard.live import LiveCache
    from mlgraph.dashboard.render import _live_cell

    shown = LiveCache().read(drive, "shop")
    assert shown.series == (0.75, 0.5) and shown.change == -0.25 and shown.dropped
    cell = _live_cell(shown)
    assert "accuracy 0.500 ▼0.250 (test 0.900)" in cell and "█▁" in cell  # the sparkline: 0.75, then 0.5
    assert "performance drop" in cell and "n=8" in cell


def drift_tick(setup, cursor: str | None = None) -> dg.SensorResult:
    from sensors.drift import drift_sensor

    drive, catalog, instance = setup
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"storage": SharedDrive(root=str(drive.root)), "catalog": catalog}
    )
    return drift_sensor(context)


def test_a_performance_drop_triggers_exactly_one_retraining_run(shop) -> None:
    drive, catalog, instance = shop
    write_known_log(drive)
    store(drive, KNOWN_LABELS)
    promote(drive, catalog)  # no MLflow run: the report is still written, nothing logged
    materialize(instance)

    first = drift_tick(shop)  # no drift baseline: the drop alone is the reason
    [request] = first.run_requests
    assert request.tags[TAG_TRIGGER] == "drift" and request.tags[TAG_DRIFT_WINDOW_ROWS] == "4"
    assert request.tags[TAG_RETRAIN_REASON].startswith("performance drop: accuracy 0.5000")
    # Next ticks: the cooldown holds, from the cursor, or from the instance's run when the cursor was lost.
    assert drift_tick(shop, first.cursor).run_requests == []
    instance.add_run(
        DagsterRun(
            job_name="retraining_job",
            run_id=str(uuid.uuid4()),
            tags={**request.tags, "dagster/partition": "shop", "dagster/run_key": request.run_key},
        )
    )
    assert drift_tick(shop, None).run_requests == []
    # A new champion: the old report's drop is not its drop (the cursor cleared, the cooldown no matter).
    promote(drive, catalog, model_version="3")
    assert drift_tick(shop, None).run_requests == []


def test_multiclass_and_regression_metrics_from_the_logged_outputs() -> None:
    def item(label, output):
        return live.Labelled("x", "2026-11-30T10:00:00+00:00", "1", output, label, None)

    shares = [
        {"high": 0.7, "low": 0.2, "mid": 0.1},
        {"high": 0.1, "low": 0.8, "mid": 0.1},
        {"high": 0.2, "low": 0.2, "mid": 0.6},
    ]
    items = [
        item(label, {"prediction": max(p, key=p.get), "probabilities": p})
        for label, p in zip(["high", "low", "low"], shares, strict=True)
    ]
    scores = live.metrics_of(items, "classification")
    assert scores["accuracy"] == pytest.approx(2 / 3) and 0 < scores["f1_macro"] < 1 and scores["log_loss"] > 0
    regression = live.metrics_of([item(10.0, {"prediction": 12.0}), item(20.0, {"prediction": 19.0})], "regression")
    assert regression["mae"] == 1.5 and regression["rmse"] == pytest.approx((2.5) ** 0.5)


def test_the_asset_with_no_labels_and_no_champion_says_so(shop) -> None:
    drive, _, instance = shop
    [event] = materialize(instance).get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["n_labelled"].value == 0 and metadata["performance_drop"].value is False
    assert "no champion" in metadata["check"].value and metadata["mlflow_metrics"].value == 0
    assert drive.plot_path("shop", "live_performance").exists()


def test_the_join_follows_a_rotation_during_the_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drive = DriveLayout.at(tmp_path / "shared")
    write_known_log(drive)
    store(drive, KNOWN_LABELS)
    current = drive.prediction_log_path("shop")
    listed = live.log_files(current)
    current.rename(rotated_name(current, T0 + dt.timedelta(hours=2)))  # rotated after the listing, before the read
    calls = iter([listed])
    monkeypatch.setattr(live, "log_files", lambda path: next(calls, None) or live_log_files(path))
    joined = live.join(current, drive.labels_store_path("shop"))
    assert len(joined.labelled) == 8 and len(joined.files) == 2  # the renamed file read once, under its new name


def live_log_files(path: Path) -> list[Path]:
    from mlgraph.core.prediction_log import log_files

    return log_files(path)
