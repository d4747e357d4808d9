"""The model service against hostile and unlucky input, over real HTTP (a uvicorn subprocess, raw sockets where
the bytes on the wire matter): values JSON parses but the model cannot hold (422 naming the field and row),
unbounded strings (422), a model whose output is not finite (a 500 that says so, never `NaN` in a body), an
oversize body written in one go (the client reads the 413, not a reset), and a champion whose first load
fails (retried with backoff until it loads, the failure shown meanwhile)."""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from mlgraph.core.drive import DriveLayout
from mlgraph.serving.guard import DRAIN_SECONDS
from mlgraph.serving.model import input_spec
from mlgraph.serving.reload import ModelHolder
from mlgraph.training.promotion import PromotionStore
from tests.support.serving import (  # noqa: F401
    BINARY,
    REGRESSION,
    Server,
    config_of,
    drive_copy,
    fit,
    json_rows,
    promote_model,
    serving_drive,
    wait_for,
)
from tests.test_serving import FEATURES


def strict_json(text: str) -> dict:
    """json.loads that refuses `NaN` and `Infinity` (Python's accepts them; JSON and most clients do not)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def exchange(port: int, request: bytes, timeout: float = 30) -> tuple[bytes, float]:
    """Write `request` in one sendall, then read until the server closes: (the response, seconds it took)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks), time.monotonic() - start


def status_and_body(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), strict_json(body.decode())


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.fixture(scope="module")
def binary(serving_drive, tmp_path_factory):  # noqa: F811
    """The binary champion (ONNX) behind the default limits: 1 MiB bodies, 10,000 rows, 256-character strings."""
    root = drive_copy(serving_drive, tmp_path_factory.mktemp("hostile") / "shared")
    drive = DriveLayout.at(root)
    with Server(root, serving_drive[1], BINARY) as server:
        server.wait_up()
        yield server, json_rows(drive, BINARY, FEATURES, 1)[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("days_on_platform", 10**309),  # 310 digits: was a 500 (OverflowError converting to float64)
        ("days_on_platform", 2**63),  # one past int64
        ("minutes_watched", 1e39),  # finite in float64, infinite in the float32 the ONNX graph computes in
    ],
)
def test_a_value_the_model_cannot_hold_is_422_naming_field_and_row(binary, field, value) -> None:
    server, row = binary
    one = server.client.post("/predict", content=json.dumps({**row, field: value}))
    assert one.status_code == 422, one.text
    assert [e["field"] for e in strict_json(one.text)["detail"]] == [field]
    batch = server.client.post("/batch_predict", content=json.dumps({"rows": [row, row, {**row, field: value}]}))
    assert batch.status_code == 422, batch.text
    assert [e["field"] for e in strict_json(batch.text)["detail"]] == [f"rows.2.{field}"]


def test_the_largest_values_the_model_holds_are_answered_in_strict_json(binary) -> None:
    server, row = binary
    for edge in ({"days_on_platform": 2**63 - 1}, {"days_on_platform": -(2**63)}, {"minutes_watched": 3.4e38}):
        answer = server.client.post("/predict", content=json.dumps({**row, **edge}))
        assert answer.status_code == 200, (edge, answer.text)
        assert 0.0 <= strict_json(answer.text)["probability"] <= 1.0


def test_a_long_string_is_422_naming_the_field(binary) -> None:
    server, row = binary
    assert server.client.post("/predict", json={**row, "student_country": "x" * 256}).status_code == 200
    for length in (257, 1024 * 1024 // 2):  # half a MiB of category fits the body limit; it must not be logged
        refused = server.client.post("/batch_predict", json={"rows": [row, {**row, "student_country": "x" * length}]})
        assert refused.status_code == 422, refused.text[:300]
        (error,) = strict_json(refused.text)["detail"]
        assert error["field"] == "rows.1.student_country" and "at most 256 characters" in error["message"]


def test_an_oversize_body_written_in_one_go_reads_413_every_time(binary) -> None:
    server, row = binary
    body = json.dumps({"rows": [row] * 20_000}).encode()  # about 4 MB, the limit is 1 MiB
    assert len(body) > 3 * 1024 * 1024
    declared = post("/batch_predict", body, f"Content-Length: {len(body)}")
    chunked = post("/batch_predict", b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body), "Transfer-Encoding: chunked")
    for request in [declared] * 5 + [chunked] * 5:
        status, answer = status_and_body(exchange(server.port, request)[0])
        assert status == 413 and answer["error"] == "too_large" and answer["request_id"]
    assert server.client.get("/health").json()["ready"]  # and the server answers on


def test_an_oversize_body_is_drained_only_within_bounds(binary) -> None:
    server, row = binary
    # Declared far past the drain bound (8 × the limit): answered at once, nothing read.
    huge, took = exchange(server.port, post("/predict", b"{", "Content-Length: 1073741824"))
    assert status_and_body(huge)[0] == 413 and took < DRAIN_SECONDS
    # A client waiting for "100 Continue" is answered 413 instead of being asked for its body.
    waiting, took = exchange(server.port, post("/predict", b"", "Content-Length: 2000000", "Expect: 100-continue"))
    assert waiting.startswith(b"HTTP/1.1 413") and b"100 Continue" not in waiting and took < DRAIN_SECONDS
    # A client that stops half way through its body: answered once the drain's time bound is over, not never.
    stalled, took = exchange(server.port, post("/predict", b"x" * 1_500_000, "Content-Length: 2000000"))
    assert status_and_body(stalled)[0] == 413 and DRAIN_SECONDS - 1 < took < DRAIN_SECONDS + 10


def _overflowing_champion(root: Path, config_dir: Path) -> dict:
    """salary v2, served natively: a real ridge whose coefficient of years_experience is 1e300, so an unusual
    (but finite, float32-sized) years_experience overflows its float64 arithmetic to ±inf. Returns a good row."""
    drive, config = DriveLayout.at(root), config_of(config_dir, REGRESSION)
    model = fit(config, pd.read_parquet(drive.dataset_path(REGRESSION, "train")), "ridge")
    columns = list(model[0].get_feature_names_out())
    model[-1].coef_[columns.index("numeric__years_experience")] = 1e300
    promote_model(drive, config, model, "ridge", "2", export=False)
    features = [f.name for f in input_spec(drive, config).features]
    return json_rows(drive, REGRESSION, features, 1)[0]


def test_a_non_finite_output_is_a_500_that_says_so_never_nan_in_a_body(serving_drive, tmp_path) -> None:  # noqa: F811
    root = drive_copy(serving_drive, tmp_path / "shared")
    row = _overflowing_champion(root, serving_drive[1])
    with Server(root, serving_drive[1], REGRESSION) as server:
        assert server.wait_up()["model"]["runtime"] == "native"
        fine = server.client.post("/predict", json=row)
        assert fine.status_code == 200 and math.isfinite(strict_json(fine.text)["prediction"])
        wild = {**row, "years_experience": 1e20}
        for path, body in (("/predict", wild), ("/batch_predict", {"rows": [row, wild, row]})):
            refused = server.client.post(path, json=body)
            answer = strict_json(refused.text)  # valid JSON, no NaN or Infinity
            assert refused.status_code == 500 and answer["error"] == "internal", refused.text
            row_index = "row(s) 0" if path == "/predict" else "row(s) 1;"
            assert "non-finite output" in answer["detail"] and row_index in answer["detail"]
        metrics = server.client.get("/metrics").text
        assert 'mlgraph_request_errors_total{kind="internal"} 2.0' in metrics
    logged = [
        json.loads(line) for line in DriveLayout.at(root).prediction_log_path(REGRESSION).read_text().splitlines()
    ]
    assert [r["request_id"] for r in logged] == [fine.json()["request_id"]]  # the refused ones were not logged
    assert "non-finite output" in server.log.read_text()


def test_a_champion_whose_first_load_fails_is_retried_until_it_loads(serving_drive, tmp_path) -> None:  # noqa: F811
    """The pointer names a file not there yet (a drive still syncing): not ready, the failure and its retries
    shown; once the file is there the champion is served, without the pointer changing again."""
    root = drive_copy(serving_drive, tmp_path / "shared")
    drive, config = DriveLayout.at(root), config_of(serving_drive[1], BINARY)
    staged = tmp_path / "logistic_regression.joblib"
    model = fit(config, pd.read_parquet(drive.dataset_path(BINARY, "train")), "logistic_regression")
    promote_model(drive, config, model, "logistic_regression", "2", threshold=0.5, export=False)
    served = drive.champion_bundle(BINARY, "2") / "logistic_regression.joblib"
    served.rename(staged)
    with Server(root, serving_drive[1], BINARY) as server:
        server.wait_up(ready=False)

        def retried() -> dict | None:
            failure = server.client.get("/health").json()["last_load_failure"]
            return failure if failure and failure.get("attempts", 0) >= 2 else None

        failure = wait_for(retried, 30, "a second failed load of v2")
        assert "v2" in failure["error"] and failure["next_retry"] >= failure["at"]
        not_ready = server.client.get("/ready")
        assert not_ready.status_code == 503 and "v2" in not_ready.json()["detail"]
        staged.rename(served)
        health = wait_for(lambda: (h := server.client.get("/health").json())["ready"] and h, 30, "v2 served")
        assert health["model_version"] == "2" and health["last_load_failure"] is None
        assert "attempt 2" in server.log.read_text()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_reloader_backs_off_up_to_a_cap_and_marks_a_pointer_seen_only_once_loaded(serving_drive, tmp_path) -> None:  # noqa: F811
    root = drive_copy(serving_drive, tmp_path / "shared")
    drive, config = DriveLayout.at(root), config_of(serving_drive[1], BINARY)
    calls, failing = [], [True]

    def loader(*_):
        calls.append(clock.now)
        if failing[0]:
            raise OSError("Input/output error")
        return SimpleNamespace(version="1", runtime="native", champion=SimpleNamespace(model_name="m"))

    clock = _Clock()
    holder = ModelHolder(drive, config, input_spec(drive, config), loader, retry_first=1, retry_max=8, clock=clock)
    for _ in range(40):  # polled every half second for 20 s
        assert holder.poll() is False
        clock.now += 0.5
    assert [t - 1000 for t in calls] == [0, 1, 3, 7, 15]  # 1, 2, 4, 8, then the cap: 8
    assert holder.failure.attempts == 5 and "Input/output error" in holder.failure.error and holder.current is None
    failing[0] = False
    wait = calls[-1] + 8 - clock.now
    clock.now += wait - 0.5
    assert holder.poll() is False  # still backing off
    clock.now += 0.5
    assert holder.poll() is True and holder.failure is None and holder.current.version == "1"
    assert holder.poll() is False and len(calls) == 6  # loaded: seen, not loaded again
    # A new pointer that fails is tried at once, its backoff starting over.
    failing[0] = True
    store = PromotionStore(drive.promotion_dir(config.config_hash))
    store.promote({**store.current(), "model_version": "9"})
    assert holder.poll() is False and calls[-1] == clock.now and holder.failure.attempts == 1
    assert holder.current.version == "1"  # the old model keeps answering
    # An unreadable pointer is a failure too: logged, shown, retried, and poll never raises.
    pointer = store.current()
    holder.pointer.unlink()
    holder.pointer.mkdir()
    clock.now += 100
    assert holder.poll() is False and "cannot read" in holder.failure.error and holder.failure.attempts == 1
    assert holder.poll() is False and len(calls) == 7  # not read again before its backoff is over
    holder.pointer.rmdir()
    failing[0] = False
    store.promote(pointer)
    clock.now += 1
    assert holder.poll() is True and holder.failure is None and len(calls) == 8


def test_the_string_bound_is_a_serve_option() -> None:
    from mlgraph.cli.main import build_parser

    parse = build_parser().parse_args
    assert parse(["serve", "--experiment", "x"]).max_string_length == 256
    assert parse(["serve", "--experiment", "x", "--max-string-length", "64"]).max_string_length == 64
    with pytest.raises(SystemExit):
        parse(["serve", "--experiment", "x", "--max-string-length", "0"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("planted", ["fifo", "link to /dev/zero"])
def test_a_fifo_or_device_link_at_the_promotion_pointer_never_hangs_the_reloader(
    serving_drive,  # noqa: F811
    tmp_path,
    planted: str,
) -> None:
    import os

    root = drive_copy(serving_drive, tmp_path / "shared")
    drive, config = DriveLayout.at(root), config_of(serving_drive[1], BINARY)
    holder = ModelHolder(drive, config, input_spec(drive, config))
    assert holder.poll() is True
    pointer = holder.pointer.read_bytes()
    holder.pointer.unlink()
    if planted == "fifo":
        os.mkfifo(holder.pointer)  # reading it would block forever: no writer ever comes
    else:
        holder.pointer.symlink_to("/dev/zero")  # reading it would never end
    # The poll returns (the timeout above fails the test if it blocks) and says what is wrong.
    assert holder.poll() is False
    assert "not a regular file" in holder.failure.error or "outside" in holder.failure.error, holder.failure
    assert holder.current.version == "1"  # the old model keeps answering
    store = PromotionStore(drive.promotion_dir(config.config_hash))
    with pytest.raises(ValueError, match="current.json"):
        store.current()
    holder.pointer.unlink()
    holder.pointer.write_bytes(pointer)
