"""The service's parts alone: the log writer (rotation keeps every line; lines reach the OS at once),
the forecasting window schema, and an unexpected failure answered 500 without a traceback."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from mlgraph.core.drive import PROJECT_ROOT, DriveLayout
from mlgraph.core.experiment import load_experiment_file
from mlgraph.core.prediction_log import RECORD_FIELDS, log_files
from mlgraph.deployment import runtime
from mlgraph.deployment.champion import Champion
from mlgraph.serving.app import create_app
from mlgraph.serving.core import ROUTES
from mlgraph.serving.log_writer import Entry, PredictionLogWriter
from mlgraph.serving.model import ModelRefused, input_spec, load_model
from mlgraph.serving.schema import batch_model, row_model
from mlgraph.serving.settings import ServeSettings
from tests.support.serving import (  # noqa: F401
    BINARY,
    config_of,
    drive_copy,
    json_rows,
    promote_model,
    serving_drive,
    wait_for,
)
from tests.test_serving import FEATURES


def _entry(i: int, rows: int = 1) -> Entry:
    return Entry(
        1_700_000_000.0 + i,
        f"req-{i}",
        "7",
        [{"x": i, "pad": "p" * 40}] * rows,
        [{"prediction": i % 2, "probability": 0.5}] * rows,
    )


def test_rotation_by_size_keeps_every_line(tmp_path: Path) -> None:
    path = tmp_path / "serving" / "exp" / "prediction_log.jsonl"
    writer = PredictionLogWriter(path, max_bytes=4000, sync_interval=0.05).start()

    def submit(start: int) -> None:
        for i in range(start, start + 250):
            writer.submit(_entry(i, rows=1 + i % 3))

    threads = [threading.Thread(target=submit, args=(k * 250,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    files = log_files(path)
    assert len(files) > 10 and writer.rotations == len(files) - 1 and writer.write_errors == 0
    assert all(f.stat().st_size <= 4000 for f in files)
    assert all(re.fullmatch(r"prediction_log\.\d{8}T\d{12}\.jsonl", f.name) for f in files[:-1])
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert all(tuple(r) == RECORD_FIELDS for r in records)
    assert sorted((r["request_id"], r["row"]) for r in records) == sorted(
        (f"req-{i}", row) for i in range(1000) for row in range(1 + i % 3)
    )
    assert records[0]["time"].endswith("+00:00") and writer.records == len(records)


def test_lines_reach_the_file_without_close(tmp_path: Path) -> None:
    path = tmp_path / "prediction_log.jsonl"
    writer = PredictionLogWriter(path).start()
    try:
        writer.submit(_entry(1))
        wait_for(lambda: path.read_text().count("\n") == 1, 2, "the line in the file")
        assert json.loads(path.read_text())["request_id"] == "req-1"
    finally:
        writer.close()


def test_forecasting_rows_are_the_window_the_model_needs(tmp_path: Path) -> None:
    config = load_experiment_file(PROJECT_ROOT / "config" / "experiments" / "demand_forecast.yaml").config
    spec = input_spec(DriveLayout.at(tmp_path), config)
    Row = row_model(spec)
    schema = Row.model_json_schema()
    window = schema["properties"]["window"]
    assert schema["required"] == ["window"] and window["minItems"] == window["maxItems"] == 24
    assert "last 24 values of 'demand'" in window["description"]
    Row.model_validate({"window": [1.0] * 24})
    for bad in ({"window": [1.0] * 23}, {"window": [1.0] * 23 + [float("nan")]}, {"window": [1.0] * 24, "x": 1}):
        with pytest.raises(ValidationError):
            Row.model_validate(bad)
    with pytest.raises(ValidationError):
        batch_model(Row, 10).model_validate({"rows": []})


def test_a_promotion_landing_mid_load_is_refused_as_a_change_not_judged_against_its_reports(
    serving_drive,  # noqa: F811
    tmp_path,
    monkeypatch,
) -> None:
    # v1's release gates must judge v1's files: a v2 promoted (without its export yet) while v1 loads once made
    # the gates re-read the pointer and fail on "report written for v1, champion is v2".
    root = drive_copy(serving_drive, tmp_path / "shared")
    drive, config = DriveLayout.at(root), config_of(serving_drive[1], BINARY)
    holder_spec = input_spec(drive, config)
    real_load = Champion.load

    def load_then_promote(self: Champion):
        native = real_load(self)
        if self.model_version == "1":
            promote_model(drive, config, native, self.family, "2", threshold=0.5, export=False)
        return native

    monkeypatch.setattr(Champion, "load", load_then_promote)  # the race, made certain
    with pytest.raises(ModelRefused, match="changed while .*v1 was loading"):
        load_model(drive, config, holder_spec)
    model = load_model(drive, config, holder_spec)  # the next poll: v2, served natively until its export lands
    assert model.champion.model_version == "2" and model.runtime == runtime.NATIVE
    assert "release gates not evaluated" in model.note


class _Boom:
    variant = "onnx_fp32"

    def predict(self, prepared):
        raise RuntimeError("secret internal detail")


def test_an_unexpected_failure_is_a_generic_500(serving_drive) -> None:  # noqa: F811
    root, config_dir = serving_drive
    drive = DriveLayout.at(root)
    app = create_app(ServeSettings(BINARY, drive_root=str(root), config_dir=str(config_dir), log_predictions=False))
    holder = app.app.state.holder
    model = load_model(drive, config_of(config_dir, BINARY), holder.spec)
    holder.current = dataclasses.replace(model, predictor=_Boom())  # a fault no real model can be made to raise

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/predict", json=json_rows(drive, BINARY, FEATURES, 1)[0])

    response = asyncio.run(call())
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "internal" and body["request_id"] == response.headers["x-request-id"]
    assert "secret" not in response.text and "Traceback" not in response.text


def test_other_paths_go_through_fastapi_and_its_errors_through_the_same_table(serving_drive) -> None:  # noqa: F811
    root, config_dir = serving_drive
    app = create_app(ServeSettings(BINARY, drive_root=str(root), config_dir=str(config_dir), log_predictions=False))

    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [
                await client.get("/predict"),
                await client.get("/nowhere"),
                await client.get("/openapi.json"),
                await client.get("/metrics"),
            ]

    wrong_method, missing, schema, metrics = asyncio.run(calls())
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "POST" and wrong_method.headers["x-request-id"]
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    paths = schema.json()["paths"]
    assert {route.path for route in ROUTES} <= set(paths)
    assert set(paths["/predict"]["post"]["responses"]) == {"200", "400", "413", "422", "500", "503"}
    assert paths["/health"]["get"]["operationId"] == "health"
    assert 'mlgraph_request_errors_total{kind="not_found"} 2.0' in metrics.text  # the 404 and the 405


def test_log_lines_keep_what_fast_encoding_cannot_carry(tmp_path: Path) -> None:
    # The fast encoder writes UTF-8 and NaN as JSON's usual extension; a lone surrogate (valid in a JSON string
    # escape, not in UTF-8) makes it fail, and the json module's escaped line is written instead of nothing.
    from mlgraph.serving.log_writer import format_entry

    plain = Entry(1_700_000_000.0, "a1", "3", [{"city": "Zürich", "x": 1e-05}], [{"prediction": 1, "p": float("nan")}])
    odd = dataclasses.replace(plain, inputs=[{"city": "\ud800", "x": 2.0}])
    for entry in (plain, odd):
        line = format_entry(entry)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        record = json.loads(line)
        assert list(record) == list(RECORD_FIELDS)
        assert record["inputs"] == entry.inputs[0] and record["request_id"] == entry.request_id
        assert record["output"]["p"] != record["output"]["p"]  # NaN kept
    assert "Zürich".encode() in format_entry(plain)
