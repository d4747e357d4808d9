"""POST /feedback over real HTTP against `mlgraph serve`: prediction ids (one per batch row), labels for
predictions already rotated out of the current log file, duplicate and unknown ids counted, a label of the
wrong type refused 422 naming it with nothing stored, and the stored labels joined back by live_performance's join."""

from __future__ import annotations

import pytest

from mlgraph.core.drive import DriveLayout
from mlgraph.core.prediction_log import rotated_files
from mlgraph.monitoring.labels import read_labels
from mlgraph.monitoring.live import join
from tests.support.serving import (  # noqa: F401
    BINARY,
    MULTICLASS,
    REGRESSION,
    TIERS,
    Server,
    drive_copy,
    json_rows,
    serving_drive,
    wait_for,
)
from tests.test_serving import FEATURES


@pytest.fixture(scope="module")
def binary(serving_drive, tmp_path_factory):  # noqa: F811
    root = drive_copy(serving_drive, tmp_path_factory.mktemp("feedback") / "shared")
    # A small log file size: the first predictions are rotated away before their labels arrive.
    with Server(root, serving_drive[1], BINARY, "--log-max-bytes", "3000", "--max-rows", "20") as server:
        server.wait_up()
        yield server, DriveLayout.at(root)


def test_labels_for_single_and_batch_predictions_late_duplicate_and_unknown(binary) -> None:
    server, drive = binary
    rows = json_rows(drive, BINARY, FEATURES, 8)
    first = server.client.post("/predict", json=rows[0]).json()
    batch = server.client.post("/batch_predict", json={"rows": rows[:4]}).json()
    assert batch["prediction_ids"] == [f"{batch['request_id']}-{i}" for i in range(4)]
    for _ in range(30):  # enough lines to rotate the file that holds the first predictions
        assert server.client.post("/batch_predict", json={"rows": rows}).status_code == 200
    log = drive.prediction_log_path(BINARY)
    # Its line now lives in a rotated file (read only rotated files: the current one may be mid-rotation).
    wait_for(lambda: any(first["request_id"] in p.read_text() for p in rotated_files(log)), 30, "a rotated log file")

    labels = [
        {"request_id": first["request_id"], "label": first["prediction"], "time": "2026-12-07T10:00:00Z"},
        {"request_id": batch["prediction_ids"][1], "label": 1 - batch["predictions"][1]["prediction"]},
        {"request_id": batch["prediction_ids"][1], "label": batch["predictions"][1]["prediction"]},  # last wins
        {"request_id": batch["prediction_ids"][2], "label": batch["predictions"][2]["prediction"]},
        {"request_id": "0" * 32, "label": 0},  # well-formed, never answered: stored, reported by the join
        {"request_id": "not an id!", "label": 1},  # can never be an id of this service: counted, not stored
    ]
    answer = server.client.post("/feedback", json={"labels": labels})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["accepted"] == 4 and body["duplicates"] == 1 and body["unknown_ids"] == 1
    assert body["request_id"] == answer.headers["x-request-id"]

    joined = join(log, drive.labels_store_path(BINARY))
    found = {item.id: item for item in joined.labelled}
    assert set(found) == {first["request_id"], *batch["prediction_ids"][1:3]}
    assert found[batch["prediction_ids"][1]].label == batch["predictions"][1]["prediction"]
    assert found[first["request_id"]].output["prediction"] == first["prediction"]
    assert joined.unknown_ids == 1 and joined.unknown_examples == ["0" * 32]


@pytest.mark.parametrize(
    ("label", "message"),
    [("1", "is not one of the model's classes"), (2, "is not one of the model's classes"), (True, "classes")],
)
def test_a_wrong_label_is_422_naming_it_and_nothing_is_stored(binary, label, message) -> None:
    server, drive = binary
    rid = server.client.post("/predict", json=json_rows(drive, BINARY, FEATURES, 1)[0]).json()["request_id"]
    before = read_labels(drive.labels_store_path(BINARY)).lines
    good = {"request_id": rid, "label": 0}
    answer = server.client.post("/feedback", json={"labels": [good, {"request_id": rid, "label": label}]})
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["field"] == "labels.1.label" and message in error["message"]
    assert read_labels(drive.labels_store_path(BINARY)).lines == before  # the good label was not stored either


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"labels": []}, 422, "labels"),
        ({"labels": [{"label": 1}]}, 422, "labels.0.request_id"),
        ({"labels": [{"request_id": 7, "label": 1}]}, 422, "labels.0.request_id"),
        ({"labels": [{"request_id": "a", "label": 1, "extra": 1}]}, 422, "labels.0.extra"),
        ({"labels": [{"request_id": "a", "label": 1}] * 21}, 413, None),  # the --max-rows limit
    ],
)
def test_malformed_feedback_is_refused(binary, body, status, field) -> None:
    server, _ = binary
    answer = server.client.post("/feedback", json=body)
    assert answer.status_code == status, answer.text
    if field:
        assert field in [e["field"] for e in answer.json()["detail"]]


def test_openapi_describes_feedback(binary) -> None:
    server, _ = binary
    schema = server.client.get("/openapi.json").json()
    assert "post" in schema["paths"]["/feedback"]
    assert {"FeedbackRequest", "FeedbackLabel", "FeedbackResponse"} <= set(schema["components"]["schemas"])
    assert "prediction_ids" in schema["components"]["schemas"]["BatchPredictResponse"]["properties"]


def test_a_regressor_takes_finite_numbers_only(serving_drive, tmp_path) -> None:  # noqa: F811
    root = drive_copy(serving_drive, tmp_path / "shared")
    with Server(root, serving_drive[1], REGRESSION) as server:
        server.wait_up()
        refused = server.client.post("/feedback", json={"labels": [{"request_id": "a" * 32, "label": "12"}]})
        assert refused.status_code == 422 and refused.json()["detail"][0]["field"] == "labels.0.label"
        ok = server.client.post("/feedback", json={"labels": [{"request_id": "a" * 32, "label": 51234.5}]})
        assert ok.status_code == 200 and ok.json()["accepted"] == 1
    assert read_labels(DriveLayout.at(root).labels_store_path(REGRESSION)).labels["a" * 32]["label"] == 51234.5
