"""The model service over real HTTP (uvicorn subprocess): every endpoint, the schema, and bad input —
which is answered 400/413/422 naming the field, never 500, and never logged as a prediction."""

from __future__ import annotations

import json
import math
import shutil
import socket

import pytest

from mlgraph.core.drive import DriveLayout
from mlgraph.core.prediction_log import log_files
from tests.support.serving import (  # noqa: F401
    BINARY,
    FORECAST,
    MULTICLASS,
    REGRESSION,
    TIERS,
    Server,
    config_of,
    drive_copy,
    forecasting_champion,
    json_rows,
    serving_drive,
    wait_for,
)

FEATURES = [
    "student_country",
    "days_on_platform",
    "minutes_watched",
    "courses_started",
    "practice_exams_started",
    "practice_exams_passed",
    "minutes_spent_on_exams",
]
MAX_ROWS = 20


@pytest.fixture(scope="module")
def binary(serving_drive, tmp_path_factory):  # noqa: F811
    root = drive_copy(serving_drive, tmp_path_factory.mktemp("binary") / "shared")
    with Server(root, serving_drive[1], BINARY, "--max-rows", str(MAX_ROWS), "--max-body-bytes", "20000") as server:
        server.wait_up()
        yield server, DriveLayout.at(root)


def _logged(drive: DriveLayout, name: str) -> list[dict]:
    return [json.loads(line) for f in log_files(drive.prediction_log_path(name)) for line in f.read_text().splitlines()]


def test_predict_and_batch_answer_at_the_promoted_threshold(binary) -> None:
    server, drive = binary
    rows = json_rows(drive, BINARY, FEATURES, 6)
    one = server.client.post("/predict", json=rows[0])
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["model_version"] == "1" == one.headers["x-model-version"]
    assert body["request_id"] == one.headers["x-request-id"] and len(body["request_id"]) == 32
    assert 0.0 <= body["probability"] <= 1.0 and body["prediction"] == int(body["probability"] >= 0.35)

    many = server.client.post("/batch_predict", json={"rows": rows})
    assert many.status_code == 200, many.text
    predictions = many.json()["predictions"]
    assert len(predictions) == 6 and predictions[0] == {k: body[k] for k in ("prediction", "probability")}
    assert all(p["prediction"] == int(p["probability"] >= 0.35) for p in predictions)

    health = server.wait_up()
    wait_for(
        lambda: {r["request_id"] for r in _logged(drive, BINARY)} >= {body["request_id"], many.json()["request_id"]},
        5,
        "log",
    )
    records = [r for r in _logged(drive, BINARY) if r["request_id"] == many.json()["request_id"]]
    assert [r["row"] for r in records] == list(range(6)) and records[2]["inputs"] == rows[2]
    assert records[2]["output"] == predictions[2] and records[2]["model_version"] == "1"
    assert health["model"]["runtime"] == "onnx_fp32" and health["model"]["config_hash"]


def test_openapi_names_every_feature_with_its_type(binary) -> None:
    server, _ = binary
    schema = server.client.get("/openapi.json").json()
    request = schema["components"]["schemas"]["PredictRequest"]
    assert list(request["properties"]) == FEATURES[1:] + FEATURES[:1]  # numeric, then categorical
    assert set(request["required"]) == set(FEATURES) and request["additionalProperties"] is False
    types = {name: {t.get("type") for t in prop["anyOf"]} for name, prop in request["properties"].items()}
    assert types["days_on_platform"] == {"integer", "null"} and types["minutes_watched"] == {"number", "null"}
    assert types["student_country"] == {"string", "null"}
    assert "PredictResponse" in schema["components"]["schemas"]
    assert "swagger-ui" in server.client.get("/docs").text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"minutes_watched": "twelve"}, "minutes_watched"),  # wrong type
        ({"days_on_platform": "3"}, "days_on_platform"),  # strict: no strings for numbers
        ({"courses_started": None, "bogus": 1}, "bogus"),  # unknown field
        ({"__drop__": "practice_exams_passed"}, "practice_exams_passed"),  # missing field
    ],
)
def test_invalid_fields_are_422_naming_the_field(binary, change, field) -> None:
    server, drive = binary
    row = json_rows(drive, BINARY, FEATURES, 1)[0]
    if "__drop__" in change:
        del row[change["__drop__"]]
    else:
        row.update(change)
    response = server.client.post("/predict", json=row)
    assert response.status_code == 422
    assert field in [e["field"] for e in response.json()["detail"]]
    assert "Traceback" not in response.text and response.json()["request_id"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_422(binary, literal) -> None:
    server, drive = binary
    row = json_rows(drive, BINARY, FEATURES, 1)[0]
    text = json.dumps({**row, "minutes_watched": 0.5}).replace("0.5", literal)
    response = server.client.post("/predict", content=text, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["field"] == "minutes_watched"
    rows = [row, {**row, "minutes_watched": math.inf}]
    batch = json.dumps({"rows": rows}).replace("Infinity", literal.lstrip("-"))
    response = server.client.post("/batch_predict", content=batch, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["field"] == "rows.1.minutes_watched"


def test_a_batch_of_bad_rows_answers_a_bounded_error_list(binary) -> None:
    server, drive = binary
    row = json_rows(drive, BINARY, FEATURES, 1)[0]
    response = server.client.post("/batch_predict", json={"rows": [{**row, "minutes_watched": "lots"}] * 60})
    detail = response.json()["detail"]
    assert response.status_code == 422 and len(detail) == 51
    assert detail[0]["field"] == "rows.0.minutes_watched" and detail[-1]["message"] == "10 more errors not shown"


def test_malformed_json_is_400_and_oversized_bodies_413(binary) -> None:
    server, drive = binary
    response = server.client.post(
        "/predict", content=b'{"minutes_watched": 1,', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"] == "malformed_json"
    row = json_rows(drive, BINARY, FEATURES, 1)[0]
    too_many = server.client.post("/batch_predict", json={"rows": [row] * (MAX_ROWS + 1)})
    assert too_many.status_code == 413 and str(MAX_ROWS) in too_many.json()["detail"]
    big = json.dumps({"rows": [row] * 150}).encode()  # about 30 kB, over the 20 kB limit
    assert (
        server.client.post("/batch_predict", content=big, headers={"content-type": "application/json"}).status_code
        == 413
    )
    # No Content-Length (chunked): the streamed bytes are counted.
    chunks = (big[i : i + 4096] for i in range(0, len(big), 4096))
    streamed = server.client.post("/batch_predict", content=chunks, headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["error"] == "too_large"
    # A Content-Length that lies low: the server reads only the declared bytes, which are not valid JSON.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n" + big
        )
        status = raw.recv(65536).split(b"\r\n", 1)[0]
    assert status == b"HTTP/1.1 400 Bad Request"


def test_errors_are_counted_and_never_logged(binary) -> None:
    server, drive = binary
    before = {r["request_id"] for r in _logged(drive, BINARY)}
    bad = server.client.post("/predict", json={"bogus": 1})
    assert bad.status_code == 422
    metrics = server.client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for kind in ("validation", "too_large", "malformed_json", "internal"):
        assert f'mlgraph_request_errors_total{{kind="{kind}"}}' in text
    assert 'mlgraph_request_latency_seconds_bucket{endpoint="/predict"' in text
    assert 'mlgraph_model_info{config_hash="' in text and 'runtime="onnx_fp32"' in text
    answer = server.client.post("/predict", json=json_rows(drive, BINARY, FEATURES, 1)[0]).json()
    ok = answer["request_id"]
    # This test's own prediction is counted under the label it answered (other tests may not have run first).
    counted = f'mlgraph_predictions_total{{label="{answer["prediction"]}",model_version="1"}}'
    assert counted in server.client.get("/metrics").text
    logged = wait_for(lambda: (ids := {r["request_id"] for r in _logged(drive, BINARY)}) >= {ok} and ids, 5, "log")
    assert bad.json()["request_id"] not in logged and logged - before == {ok}


def test_health_and_ready(binary) -> None:
    server, _ = binary
    health = server.client.get("/health").json()
    assert health["ready"] and health["model_version"] == "1" and health["last_load_failure"] is None
    assert health["model"]["note"] == "release gates passed"
    ready = server.client.get("/ready")
    assert ready.status_code == 200 and ready.json()["runtime"] == "onnx_fp32"


def test_monitoring_endpoints_report_drift_in_served_traffic(serving_drive, tmp_path) -> None:  # noqa: F811
    """Traffic with two features moved by 4σ, answered and logged by the service → drift and a retraining trigger."""
    import pandas as pd

    from mlgraph.monitoring.baseline import compute_baseline, write_baseline
    from mlgraph.training.promotion import PromotionStore

    root = drive_copy(serving_drive, tmp_path / "shared")
    drive, config = DriveLayout.at(root), config_of(serving_drive[1], BINARY)
    champion = PromotionStore(drive.promotion_dir(config.config_hash)).current()
    baseline = compute_baseline(pd.read_parquet(drive.dataset_path(BINARY, "train")), config, champion)
    write_baseline(drive, BINARY, baseline)
    rows = (json_rows(drive, BINARY, FEATURES, 250) * 3)[:250]  # the test split has fewer rows than that
    with Server(root, serving_drive[1], BINARY) as server:
        server.wait_up()
        assert server.client.get("/monitoring/drift").json()["status"] == "insufficient_data"  # nothing logged yet
        shifted = ("days_on_platform", "minutes_watched")
        for row in rows:
            for name in shifted:
                moved = baseline["numeric"][name]["mean"] + 4 * baseline["numeric"][name]["std"]
                row[name] = round(moved) if isinstance(row[name], int) else moved  # integer features stay integers
        assert server.client.post("/batch_predict", json={"rows": rows}).status_code == 200
        wait_for(lambda: len(_logged(drive, BINARY)) == len(rows), 5, "the log to hold the batch")
        report = server.client.get("/monitoring/drift").json()
        assert report["status"] == "drift" and report["window"]["rows"] == len(rows)
        assert set(shifted) <= set(report["drifted_features"])
        trigger = server.client.get("/monitoring/retraining_trigger").json()
        assert trigger["recommended"] is True and trigger["reasons"] == report["reasons"]
        # A damaged baseline is a 503 naming the file, never a 500 or a traceback.
        drive.drift_baseline_json(BINARY).write_text("{not json")
        broken = server.client.get("/monitoring/drift")
        assert broken.status_code == 503 and "drift_baseline.json" in broken.text and "Traceback" not in broken.text


def test_not_ready_without_a_champion(serving_drive, tmp_path) -> None:  # noqa: F811
    root = drive_copy(serving_drive, tmp_path / "shared")
    config = config_of(serving_drive[1], BINARY)
    (DriveLayout.at(root).promotion_dir(config.config_hash) / "current.json").unlink()
    with Server(root, serving_drive[1], BINARY) as server:
        health = server.wait_up(ready=False)
        failure = wait_for(lambda: server.client.get("/health").json()["last_load_failure"], 10, "load failure")
        assert "no champion is promoted" in failure["error"] and health["model_version"] is None
        assert server.client.get("/ready").status_code == 503
        row = json_rows(DriveLayout.at(root), BINARY, FEATURES, 1)[0]
        refused = server.client.post("/predict", json=row)
        assert refused.status_code == 503 and refused.json()["error"] == "not_ready"
    assert not DriveLayout.at(root).prediction_log_path(BINARY).read_text()


def test_regression_and_multiclass(serving_drive) -> None:  # noqa: F811
    root, config_dir = serving_drive
    drive = DriveLayout.at(root)
    with Server(root, config_dir, REGRESSION) as salary, Server(root, config_dir, MULTICLASS) as tiers:
        salary.wait_up()
        props = salary.client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]["properties"]
        assert {"age", "education", "remote"} <= set(props)
        assert {t.get("type") for t in props["remote"]["anyOf"]} == {"boolean", "null"}
        row = json_rows(drive, REGRESSION, list(props), 1)[0]
        value = salary.client.post("/predict", json=row).json()
        assert isinstance(value["prediction"], float) and value["prediction"] > 0 and "probability" not in value

        tiers.wait_up()
        answer = tiers.client.post("/predict", json={"x1": 2.5, "x2": None, "colour": "red"}).json()
        assert set(answer["probabilities"]) == set(TIERS) and sum(answer["probabilities"].values()) == pytest.approx(
            1.0
        )
        assert answer["prediction"] == max(answer["probabilities"], key=answer["probabilities"].get) == "high"
        assert 'mlgraph_predictions_total{label="high",model_version="1"} 1.0' in tiers.client.get("/metrics").text


def test_forecasting_takes_the_window_it_needs(serving_drive, tmp_path) -> None:  # noqa: F811
    root = drive_copy(serving_drive, tmp_path / "shared")
    config_dir = shutil.copytree(serving_drive[1], tmp_path / "config")
    forecasting_champion(root, config_dir)
    with Server(root, config_dir, FORECAST) as server:
        health = server.wait_up(timeout=90)
        assert health["model"]["family"] == "gru" and health["model"]["runtime"] == "onnx_fp32"
        window = server.client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]["properties"][
            "window"
        ]
        assert window["minItems"] == window["maxItems"] == 12 and "'demand'" in window["description"]
        recent = [100.0 + i for i in range(12)]
        answer = server.client.post("/predict", json={"window": recent})
        assert answer.status_code == 200 and isinstance(answer.json()["prediction"], float)
        short = server.client.post("/predict", json={"window": recent[:11]})
        assert short.status_code == 422 and short.json()["detail"][0]["field"] == "window"
