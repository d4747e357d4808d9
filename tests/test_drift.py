"""Drift detection, domain only: the baseline, the z-score rule, class-rate shift, categoricals, the log reader, the
distribution tests in the report (their statistics: tests/test_drift_tests.py), an old baseline without the sketch."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlgraph.core.drive import DriveLayout
from mlgraph.core.experiment import ExperimentConfig
from mlgraph.core.prediction_log import rotated_name
from mlgraph.monitoring import drift, window
from mlgraph.monitoring.baseline import compute_baseline, read_baseline, write_baseline

NUMERIC = ["f1", "f2", "f3"]


def experiment(**drift_settings) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "name": "shop",
            "task": "classification",
            "dataset": {"generator": "student_engagement"},
            "target": "bought",
            "columns": {"plan": "categorical"},
            "drift": {"min_window": 100, "window": 5000, **drift_settings},
        }
    )


def training_frame(rows: int = 4000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "f1": rng.normal(10, 2, rows),
            "f2": rng.normal(0, 1, rows),
            "f3": rng.normal(-5, 0.5, rows),
            "plan": rng.choice(["basic", "plus", "pro"], rows, p=[0.5, 0.3, 0.2]),
            "bought": rng.choice([0, 1], rows, p=[0.7, 0.3]),
        }
    )


def log_lines(frame: pd.DataFrame, predictions, start: dt.datetime | None = None, version: str = "1") -> list[str]:
    """Records in the mlgraph/core/prediction_log.py format, one per row."""
    start = start or dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
    lines = []
    for i, (row, prediction) in enumerate(zip(frame.to_dict("records"), predictions, strict=True)):
        when = (start + dt.timedelta(seconds=i)).isoformat()
        inputs = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items() if k != "bought"}
        lines.append(
            json.dumps(
                {
                    "time": when,
                    "request_id": f"r{i}",
                    "row": 0,
                    "model_version": version,
                    "inputs": inputs,
                    "output": {"prediction": prediction, "probability": 0.5},
                }
            )
        )
    return lines


def write_log(drive: DriveLayout, experiment_name: str, lines: list[str], path: Path | None = None) -> Path:
    path = path or drive.prediction_log_path(experiment_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
    return path


def serving_window(
    rows: int,
    shifted: dict[str, float] | None = None,
    positive_rate: float = 0.3,
    seed: int = 1,
    sigma: dict[str, float] | None = None,
) -> tuple[pd.DataFrame, list[int]]:
    """`rows` rows like the training frame, each feature in `shifted` moved by that many training standard deviations."""
    frame = training_frame(rows, seed)
    for name, sds in (shifted or {}).items():
        frame[name] = frame[name] + sds * (sigma or {"f1": 2, "f2": 1, "f3": 0.5})[name]
    predictions = np.random.default_rng(seed).choice([0, 1], rows, p=[1 - positive_rate, positive_rate]).tolist()
    return frame, predictions


@pytest.fixture
def drive(tmp_path: Path) -> DriveLayout:
    layout = DriveLayout.at(tmp_path / "shared")
    write_baseline(layout, "shop", compute_baseline(training_frame(), experiment(), {"model_version": "1"}))
    return layout


def report_for(drive: DriveLayout, rows: int, **kwargs) -> dict:
    frame, predictions = serving_window(rows, **kwargs)
    write_log(drive, "shop", log_lines(frame, predictions))
    report = drift.build_report(drive, experiment())
    json.dumps(report, allow_nan=False)  # the service returns it as is
    return report


def test_baseline_statistics(drive: DriveLayout) -> None:
    baseline = read_baseline(drive, "shop")
    assert set(baseline["numeric"]) == set(NUMERIC) and set(baseline["categorical"]) == {"plan"}
    f1 = baseline["numeric"]["f1"]
    assert f1["mean"] == pytest.approx(10, abs=0.15) and f1["std"] == pytest.approx(2, abs=0.1)
    assert f1["quantiles"]["0.5"] == pytest.approx(10, abs=0.2) and f1["missing_share"] == 0
    assert len(f1["sketch"]) == 401 and f1["sketch"][200] == f1["quantiles"]["0.5"]  # 4,000 rows: 10 per point
    assert baseline["categorical"]["plan"]["frequencies"]["basic"] == pytest.approx(0.5, abs=0.03)
    assert baseline["target"]["kind"] == "binary" and baseline["target"]["positive_label"] == "1"
    assert baseline["target"]["positive_rate"] == pytest.approx(0.3, abs=0.03)
    assert baseline["champion_version"] == "1" and baseline["config_hash"] == experiment().config_hash


def test_two_features_shifted_by_four_sigma_drift(drive: DriveLayout) -> None:
    report = report_for(drive, 1000, shifted={"f1": 4, "f2": 4})
    assert report["status"] == "drift" and report["drift"]
    assert report["drifted_features"] == ["f1", "f2"]
    assert report["features"]["f1"]["z"] == pytest.approx(4, abs=0.3)
    assert report["window"]["rows"] == 1000 and report["window"]["bad_lines"] == 0
    assert report["window"]["first_time"] < report["window"]["last_time"]
    assert any(r.startswith("feature drift: 2 feature(s)") for r in report["reasons"])
    trigger = drift.retraining_trigger(report)
    assert trigger["recommended"] and trigger["reasons"] == report["reasons"]


def test_one_shifted_feature_is_not_drift(drive: DriveLayout) -> None:
    report = report_for(drive, 1000, shifted={"f1": 4})
    assert report["status"] == "no_drift" and report["drifted_features"] == ["f1"]
    assert not drift.retraining_trigger(report)["recommended"]


def test_small_window_is_insufficient_data_not_no_drift(drive: DriveLayout) -> None:
    report = report_for(drive, 50, shifted={"f1": 4, "f2": 4})
    assert report["status"] == "insufficient_data" and not report["drift"]
    assert "fewer than min_window=100" in report["reasons"][0]
    assert not drift.retraining_trigger(report)["recommended"]


def test_no_baseline(tmp_path: Path) -> None:
    report = drift.build_report(DriveLayout.at(tmp_path), experiment())
    assert report["status"] == "no_baseline" and "drift_baseline" in report["reasons"][0]


@pytest.mark.timeout(30)
def test_a_fifo_at_the_baseline_is_an_error_naming_it_never_a_hang(drive: DriveLayout) -> None:
    import os

    path = drive.drift_baseline_json("shop")
    path.unlink()
    os.mkfifo(path)  # reading it would block the drift sensor's tick and the service forever
    with pytest.raises(ValueError, match=r"drift_baseline.*named pipe.*Fix: materialize drift_baseline"):
        read_baseline(drive, "shop")


def test_predicted_positive_rate_shift(drive: DriveLayout) -> None:
    report = report_for(drive, 2000, positive_rate=0.5)
    assert report["status"] == "drift" and report["drifted_features"] == []
    assert report["class_rate"]["shift"] == pytest.approx(0.2, abs=0.04)
    assert report["reasons"][0].startswith("prediction shift: predicted positive rate moved +0.")
    target = read_baseline(drive, "shop")["target"]
    steady = drift.class_shift(Counter({"1": 35, "0": 65}), target, 0.1)
    assert not steady["drift"] and steady["shift"] == pytest.approx(0.05, abs=0.03)
    assert drift.class_shift(Counter({"1": 80, "0": 20, None: 5}), target, 0.1)["drift"]


def test_unseen_categories_and_chi_square(drive: DriveLayout) -> None:
    stats = read_baseline(drive, "shop")["categorical"]["plan"]
    config = experiment().drift
    same = Counter(np.random.default_rng(3).choice(["basic", "plus", "pro"], 3000, p=[0.5, 0.3, 0.2]).tolist())
    kept = drift.categorical_drift(same, stats, config)
    assert not kept["drift"] and kept["unseen_share"] == 0 and kept["p_value"] > 0.001
    moved = Counter(np.random.default_rng(3).choice(["basic", "plus", "pro"], 3000, p=[0.2, 0.3, 0.5]).tolist())
    shifted = drift.categorical_drift(moved, stats, config)
    assert shifted["drift"] and shifted["p_value"] < 1e-10 and shifted["unseen_share"] == 0
    new = Counter({"basic": 900, "enterprise": 100, None: 20})
    unseen = drift.categorical_drift(new, stats, config)
    assert (
        unseen["drift"] and unseen["unseen_share"] == pytest.approx(0.1) and unseen["unseen_examples"] == ["enterprise"]
    )


def test_garbage_lines_are_skipped_and_counted(drive: DriveLayout) -> None:
    frame, predictions = serving_window(300, shifted={"f1": 4, "f2": 4})
    lines = log_lines(frame, predictions)
    garbage = [
        "not json",
        '{"time": "2026-11-30T12:00:00+00:00", "inputs": ',
        "[1, 2]",
        '{"inputs": "f1=3"}',
        '{"time": "x", "inputs": {"f1": "high"}, "output": {"prediction": 1}}',
        "\x00\x01",
        "",
        "  ",
    ]
    write_log(drive, "shop", lines[:100] + garbage[:3] + lines[100:] + garbage[3:])
    with open(drive.prediction_log_path("shop"), "a") as handle:
        handle.write('{"time": "2026-12-01T00:00:00+00:00", "inputs": {"f1"')  # still being written
    report = drift.build_report(drive, experiment())
    # The record with a text f1 is kept (f1 counted missing); five lines are not records; blank lines are nothing.
    assert report["window"]["bad_lines"] == 5 and report["window"]["rows"] == 301
    assert report["status"] == "drift" and report["features"]["f1"]["missing_share"] == pytest.approx(1 / 301)


def test_window_takes_the_newest_records_across_rotated_files(drive: DriveLayout) -> None:
    old, _ = serving_window(3000, shifted={"f1": 4, "f2": 4})
    new, predictions = serving_window(2000, seed=5)
    current = drive.prediction_log_path("shop")
    write_log(
        drive, "shop", log_lines(old, [0] * 3000), rotated_name(current, dt.datetime(2026, 11, 29, tzinfo=dt.UTC))
    )
    write_log(
        drive,
        "shop",
        log_lines(new[:1000], predictions[:1000]),
        rotated_name(current, dt.datetime(2026, 11, 30, tzinfo=dt.UTC)),
    )
    write_log(drive, "shop", log_lines(new[1000:], predictions[1000:]))
    config = experiment(window=2000)
    report = drift.build_report(drive, config)
    assert report["status"] == "no_drift" and report["window"]["rows"] == 2000
    assert len(report["window"]["files"]) == 2  # the oldest file is not read at all
    wider = drift.build_report(drive, experiment(window=3000))
    assert wider["window"]["rows"] == 3000 and len(wider["window"]["files"]) == 3


def test_tail_lines_reads_blocks_from_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(window, "READ_BLOCK", 7)  # lines straddle every block boundary
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"".join(b'{"n": %d}\n' % i for i in range(100)) + b'{"n": 100')  # the last one is being written
    assert window.tail(path, 3) == (b'{"n": 97}\n{"n": 98}\n{"n": 99}\n', 3)
    data, lines = window.tail(path, 500)
    assert lines == 100 and data.startswith(b'{"n": 0}\n')


def test_drift_settings_are_not_part_of_the_config_hash() -> None:
    assert experiment(window=10, min_window=5, retrain_cooldown_hours=1).config_hash == experiment().config_hash


def test_multiclass_shares_and_class_indices_and_regression() -> None:
    target = {"kind": "multiclass", "shares": {"high": 0.2, "low": 0.5, "mid": 0.3}}
    moved = drift.class_shift(Counter({"high": 45, "low": 30, "mid": 25}), target, 0.1)
    assert moved["drift"] and moved["largest_class"] == "high" and moved["shift"] == pytest.approx(0.25)
    # A service answering class indices (sorted order) is read as the classes they stand for.
    indices = drift.class_shift(Counter({"0": 20, "1": 50, "2": 30}), target, 0.1)
    assert not indices["drift"] and indices["window_shares"] == {"high": 0.2, "low": 0.5, "mid": 0.3}
    regression = ExperimentConfig.model_validate(
        {"name": "r", "task": "regression", "target": "y", "dataset": {"generator": "salary"}}
    )
    baseline = compute_baseline(pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [10.0, 20.0, 30.0]}), regression, {})
    assert baseline["target"] == {"kind": "value", "mean": 20.0, "std": pytest.approx(8.165, abs=1e-3)}
    assert drift.class_shift(Counter({"1": 3}), baseline["target"], 0.1) is None


def spread(frame: pd.DataFrame, names: list[str], factor: float) -> pd.DataFrame:
    """`frame` with each of `names` spread `factor` times wider around its training mean (10, 0, -5)."""
    means = {"f1": 10, "f2": 0, "f3": -5}
    return frame.assign(**{n: means[n] + factor * (frame[n] - means[n]) for n in names})


def test_spread_tripled_around_the_mean_drifts_where_the_mean_rule_alone_sees_nothing(drive: DriveLayout) -> None:
    frame, predictions = serving_window(2000)
    write_log(drive, "shop", log_lines(spread(frame, ["f1", "f2"], 3), predictions))
    report = drift.build_report(drive, experiment())
    json.dumps(report, allow_nan=False)
    assert report["status"] == "drift" and report["drifted_features"] == ["f1", "f2"]
    f1 = report["features"]["f1"]
    assert abs(f1["z"]) < 0.2 and f1["flagged_by"] == ["wasserstein", "psi"]
    for name, test in f1["tests"].items():  # each test's statistic beside its threshold, and its verdict
        assert {"statistic", "threshold", "flagged", "decides", "rule"} <= set(test), name
    assert f1["tests"]["ks"]["flagged"] and not f1["tests"]["ks"]["decides"]  # reported, not deciding by default
    assert "f1 (wasserstein 1.6" in report["reasons"][0]
    assert report["tests"] == {"deciding": list(experiment().drift.tests), "not_available": {}}
    mean_rule = drift.build_report(drive, experiment(tests=["z", "unseen", "chi2"]))
    assert mean_rule["status"] == "no_drift" and mean_rule["drifted_features"] == []


def test_a_baseline_without_the_sketch_still_reports_and_says_what_is_missing(drive: DriveLayout) -> None:
    path = drive.drift_baseline_json("shop")
    old = json.loads(path.read_text())
    old["baseline_version"] = 1  # as written before the quantile sketch
    for stats in old["numeric"].values():
        del stats["sketch"]
    path.write_text(json.dumps(old))
    frame, predictions = serving_window(1000, shifted={"f1": 4, "f2": 4})
    write_log(drive, "shop", log_lines(spread(frame, ["f3"], 3), predictions))
    report = drift.build_report(drive, experiment())
    json.dumps(report, allow_nan=False)
    note = "not available (baseline predates it; rematerialize drift_baseline)"
    assert report["tests"]["not_available"] == dict.fromkeys(["ks", "wasserstein", "psi"], note)
    assert report["status"] == "drift" and report["drifted_features"] == ["f1", "f2"]  # the z rule still decides
    f3 = report["features"]["f3"]["tests"]
    assert f3["wasserstein"] == {
        "statistic": None,
        "threshold": 0.1,
        "flagged": False,
        "rule": f3["wasserstein"]["rule"],
        "note": note,
        "decides": True,
    }
    assert report["features"]["plan"]["tests"]["jensen_shannon"]["statistic"] is not None  # category shares suffice
    old["baseline_version"] = 3
    path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"not a drift baseline of version 1 or 2\. Fix: materialize drift_baseline"):
        read_baseline(drive, "shop")
