"""The service's life under load (real uvicorn, real signals): hot reload fails no request and never
swaps in a broken model; SIGTERM answers what is in flight and logs every answered row exactly once
(across size rotations); SIGKILL loses at most the last second of the log."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import pandas as pd
import pytest

from mlgraph.core.drive import DriveLayout
from mlgraph.core.hashing import sha256_file
from mlgraph.core.prediction_log import log_files
from mlgraph.training.promotion import PromotionStore
from tests.support.serving import (  # noqa: F401
    BINARY,
    Server,
    config_of,
    drive_copy,
    export_current,
    fit,
    json_rows,
    promote_model,
    serving_drive,
    wait_for,
)
from tests.test_serving import FEATURES


@dataclass(frozen=True)
class Answer:
    status: int
    version: str | None
    request_id: str | None
    rows: int
    at: float  # time.monotonic() when the response arrived


class Load:
    """Client threads posting in a loop until stopped or the server goes away."""

    def __init__(self, url: str, jobs: list[tuple[str, dict, int]]) -> None:
        self.url, self.stop, self.answers = url, threading.Event(), []
        self.per_thread: list[list[Answer]] = [[] for _ in jobs]
        self.threads = [threading.Thread(target=self._run, args=(i, *job), daemon=True) for i, job in enumerate(jobs)]

    def _run(self, index: int, path: str, body: dict, rows: int) -> None:
        with httpx.Client(base_url=self.url, timeout=20) as client:
            while not self.stop.is_set():
                try:
                    response = client.post(path, json=body)
                except httpx.TransportError:
                    return  # the server went away
                data = response.json()
                answer = Answer(
                    response.status_code, data.get("model_version"), data.get("request_id"), rows, time.monotonic()
                )
                self.per_thread[index].append(answer)
                self.answers.append(answer)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def more(self, n: int, timeout: float = 30) -> None:
        target = len(self.answers) + n
        wait_for(lambda: len(self.answers) >= target, timeout, f"{n} more answers")


def _jobs(drive: DriveLayout) -> list[tuple[str, dict, int]]:
    rows = json_rows(drive, BINARY, FEATURES, 5)
    return [("/predict", rows[i % 5], 1) for i in range(6)] + [("/batch_predict", {"rows": rows}, 5)] * 2


def _records(drive: DriveLayout) -> list[dict]:
    return [
        json.loads(line) for f in log_files(drive.prediction_log_path(BINARY)) for line in f.read_text().splitlines()
    ]


@pytest.fixture
def private(serving_drive, tmp_path):  # noqa: F811
    root = drive_copy(serving_drive, tmp_path / "shared")
    return root, serving_drive[1], DriveLayout.at(root)


def test_hot_reload_under_load_fails_no_request(private) -> None:
    root, config_dir, drive = private
    config = config_of(config_dir, BINARY)
    with Server(root, config_dir, BINARY) as server:
        server.wait_up()
        with Load(server.url, _jobs(drive)) as load:
            load.more(100)
            train = pd.read_parquet(drive.dataset_path(BINARY, "train"))
            promote_model(
                drive,
                config,
                fit(config, train, "logistic_regression", {"C": 0.01}),
                "logistic_regression",
                "2",
                threshold=0.5,
            )
            wait_for(lambda: any(a.version == "2" for a in load.answers[-20:]), 30, "answers from v2")
            load.more(100)
            # A broken v3 (not a model file at all) is promoted: it must never answer.
            broken = drive.champion_bundle(BINARY, "3") / "logistic_regression.joblib"
            broken.parent.mkdir(parents=True)
            broken.write_bytes(b"not a pickle")
            PromotionStore(drive.promotion_dir(config.config_hash)).promote(
                {
                    "model_path": str(broken),
                    "model_type": "logistic_regression",
                    "model_version": "3",
                    "run_id": "run-broken",
                    "artifact_sha256": sha256_file(broken),
                    "threshold": 0.5,
                }
            )
            # Wait for v3's own refusal: a poll that saw the pointer move while v2 was loading may have left
            # an earlier "champion changed" failure there (the next poll loads v2; the failure stays shown).
            failure = wait_for(
                lambda: (f := server.client.get("/health").json()["last_load_failure"]) and "v3" in f["error"] and f,
                30,
                "v3 refused",
            )
            load.more(100)
        health = server.client.get("/health").json()
    assert "v3" in failure["error"] and "cannot be loaded" in failure["error"]
    assert health["model_version"] == "2" and health["ready"]
    assert Counter(a.status for a in load.answers) == {200: len(load.answers)}
    assert {a.version for a in load.answers} == {"1", "2"}
    for answers in load.per_thread:  # each client sees v1, then only v2
        versions = [int(a.version) for a in answers]
        assert versions == sorted(versions)


def test_sigterm_under_load_logs_every_answered_row_once(private) -> None:
    root, config_dir, drive = private
    with Server(root, config_dir, BINARY, "--log-max-bytes", "40000") as server:
        server.wait_up()
        with Load(server.url, _jobs(drive)) as load:
            load.more(400)
            server.signal(signal.SIGTERM)
            wait_for(lambda: server.proc.poll() is not None, 30, "the server to exit")
        # A clean shutdown: uvicorn re-raises the signal once shut down (exit status SIGTERM); seen once in CI
        # under load ending with status 0 instead. Either way not an error exit, and every row is logged once.
        assert server.proc.returncode in (0, -signal.SIGTERM), server.proc.returncode
        assert "Application shutdown complete" in server.log.read_text()
    answered = [a for a in load.answers if a.status == 200]
    assert len(answered) == len(load.answers) >= 400
    logged = Counter(r["request_id"] for r in _records(drive))
    assert {a.request_id: a.rows for a in answered} == {rid: logged[rid] for rid in (a.request_id for a in answered)}
    assert len(log_files(drive.prediction_log_path(BINARY))) >= 3  # rotated, and no line lost across files


def test_sigkill_loses_at_most_the_last_second(private) -> None:
    root, config_dir, drive = private
    with Server(root, config_dir, BINARY) as server:
        server.wait_up()
        with Load(server.url, _jobs(drive)) as load:
            wait_for(lambda: load.answers and time.monotonic() - load.answers[0].at > 3, 30, "3 s of load")
            killed_at = time.monotonic()
            server.signal(signal.SIGKILL)
            server.proc.wait(10)
    logged = {r["request_id"] for r in _records(drive)}  # every line whole: json.loads would fail otherwise
    old = {a.request_id for a in load.answers if a.status == 200 and a.at < killed_at - 1.5}
    assert len(old) > 100 and old <= logged


def test_a_new_champion_is_served_natively_until_its_export_passes_the_gates(private) -> None:
    """A just-promoted (or rolled-back) champion answers at once; ONNX takes over once its export passes."""
    root, config_dir, drive = private
    config = config_of(config_dir, BINARY)
    with Server(root, config_dir, BINARY) as server:
        assert server.wait_up()["model"]["note"] == "release gates passed"
        train = pd.read_parquet(drive.dataset_path(BINARY, "train"))
        promote_model(
            drive,
            config,
            fit(config, train, "logistic_regression", {"C": 0.05}),
            "logistic_regression",
            "2",
            threshold=0.5,
            export=False,
        )
        health = wait_for(
            lambda: (h := server.client.get("/health").json())["model_version"] == "2" and h, 30, "v2 served"
        )
        assert health["model"]["runtime"] == "native" and "not evaluated" in health["model"]["note"]
        row = json_rows(drive, BINARY, FEATURES, 1)[0]
        assert server.client.post("/predict", json=row).json()["model_version"] == "2"
        export_current(drive, config)
        wait_for(lambda: server.client.get("/health").json()["model"]["runtime"] == "onnx_fp32", 30, "v2 on ONNX")
