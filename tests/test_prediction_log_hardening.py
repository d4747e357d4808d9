"""The prediction log under an operator's and an attacker's hands (issue #20, items 4, 5, 6, 9, 10), with real
files and a real service: a log moved or deleted is reopened; a full disk (a real EFBIG from RLIMIT_FSIZE) never
kills the writer, bounds its queue, answers 503 past it and shows in /health, /ready and /metrics, and nothing
answered is lost once the disk recovers; a symlink or FIFO at the log path is refused, never written through;
the monitoring endpoints count every prediction answered before the call; the drift window is bounded in
bytes; rotated files are kept by size and age; line counts are cached per experiment without thrashing."""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from mlgraph.core.drive import DriveLayout
from mlgraph.core.prediction_log import log_files, prune_rotated, rotated_name
from mlgraph.monitoring import drift, log_status, window
from mlgraph.serving.log_writer import Entry, LogFull, PredictionLogWriter
from tests.support.serving import BINARY, config_of, drive_copy, free_port, json_rows, serving_drive  # noqa: F401
from tests.support.wait import wait_for
from tests.test_serving import FEATURES

UTC = dt.UTC


def _entry(i: int, rows: int = 1, pad: int = 40) -> Entry:
    return Entry(
        1_700_000_000.0 + i,
        f"req-{i}",
        "7",
        [{"x": i, "pad": "p" * pad}] * rows,
        [{"prediction": i % 2, "probability": 0.5}] * rows,
    )


def _ids(*paths: Path) -> list[str]:
    return [json.loads(line)["request_id"] for p in paths for line in p.read_text().splitlines() if line.strip()]


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "drive" / "serving" / "exp" / "prediction_log.jsonl"


# ---- item 4: moved or deleted files are reopened ---------------------------------------------------


def test_a_log_moved_away_or_deleted_is_reopened_and_the_old_inode_gets_nothing(log_path: Path) -> None:
    writer = PredictionLogWriter(log_path, within=log_path.parents[2]).start()
    try:
        writer.submit(_entry(0))
        assert writer.flush(5)
        moved = log_path.with_name("prediction_log.jsonl.1")
        os.rename(log_path, moved)  # logrotate's default (create) mode
        for i in range(1, 51):
            writer.submit(_entry(i))
        assert writer.flush(5)
        assert _ids(moved) == ["req-0"]
        assert _ids(log_path) == [f"req-{i}" for i in range(1, 51)]
        log_path.unlink()  # deleted outright
        writer.submit(_entry(51))
        assert writer.flush(5)
        assert _ids(log_path) == ["req-51"]
        status = writer.status()
        assert status.reopens == 2 and status.healthy and status.write_errors == 0
    finally:
        writer.close()


# ---- item 5: a symlink or FIFO planted at the path -------------------------------------------------


def test_a_symlink_at_the_log_path_is_refused_and_its_target_untouched(log_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "outside" / "authorized_keys"
    target.parent.mkdir()
    target.write_text("ssh-ed25519 AAAA operator\n")
    log_path.parent.mkdir(parents=True)
    log_path.symlink_to(target)
    writer = PredictionLogWriter(log_path, within=log_path.parents[2], retry_max=0.2).start()
    try:
        writer.submit(_entry(1))
        assert not writer.flush(0.5)  # not written: refused, not lost (still pending)
        status = writer.status()
        assert not status.healthy and status.write_errors >= 1 and "symlink" in status.last_error
        assert status.pending == 1 and status.running
        assert target.read_text() == "ssh-ed25519 AAAA operator\n"
        log_path.unlink()  # the operator removes the link: the writer recovers on its own
        assert writer.flush(5)
        assert _ids(log_path) == ["req-1"] and not log_path.is_symlink() and writer.status().healthy
        # Planted while the file is open: moved away and replaced by a link. Still never written through.
        log_path.rename(log_path.with_name("prediction_log.jsonl.old"))
        log_path.symlink_to(target)
        writer.submit(_entry(2))
        assert not writer.flush(0.5)
        assert target.read_text() == "ssh-ed25519 AAAA operator\n" and not writer.status().healthy
    finally:
        writer.close(timeout=1)
    assert writer.status().dropped == 1  # what close could not write is counted (and logged), not silent


def test_a_fifo_at_the_log_path_neither_blocks_nor_is_written(log_path: Path) -> None:
    log_path.parent.mkdir(parents=True)
    os.mkfifo(log_path)
    reader = os.open(log_path, os.O_RDONLY | os.O_NONBLOCK)  # a reader waiting: an open for writing would succeed
    writer = PredictionLogWriter(log_path, within=log_path.parents[2], retry_max=0.2).start()
    try:
        writer.submit(_entry(1))
        assert not writer.flush(0.5)
        status = writer.status()
        assert not status.healthy and "FIFO" in status.last_error
        assert os.read(reader, 100) == b""  # nothing was written into the pipe (end of file: no writer has it open)
        os.unlink(log_path)
        assert writer.flush(5) and _ids(log_path) == ["req-1"]
    finally:
        os.close(reader)
        writer.close()


def test_a_log_directory_leading_out_of_the_drive_is_refused(tmp_path: Path) -> None:
    drive, elsewhere = tmp_path / "drive", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (drive / "serving").mkdir(parents=True)
    (drive / "serving" / "exp").symlink_to(elsewhere, target_is_directory=True)
    writer = PredictionLogWriter(drive / "serving" / "exp" / "prediction_log.jsonl", within=drive).start()
    try:
        writer.submit(_entry(1))
        assert not writer.flush(0.3)
        assert "outside the shared drive" in writer.status().last_error and not list(elsewhere.iterdir())
    finally:
        writer.close(timeout=0.5)


# ---- item 4: one bad input, the bounded queue, flush ------------------------------------------------


def test_an_unencodable_entry_costs_only_itself(log_path: Path) -> None:
    writer = PredictionLogWriter(log_path).start()
    try:
        bad = Entry(1.0, "bad", "7", [{"x": 1}, {"x": 2}], [{"prediction": 1}])  # rows and outputs disagree
        writer.submit(_entry(1))
        writer.submit(bad)
        writer.submit(_entry(2))
        assert writer.flush(5)
        assert _ids(log_path) == ["req-1", "req-2"]
        status = writer.status()
        assert status.dropped == 2 and status.records == 2 and status.running and status.pending == 0
    finally:
        writer.close()


def test_the_queue_is_bounded_in_rows_and_bytes(log_path: Path) -> None:
    writer = PredictionLogWriter(log_path, max_pending_rows=10, max_pending_bytes=10_000)  # not started: nothing drains
    for i in range(10):
        writer.submit(_entry(i))
    with pytest.raises(LogFull, match="10 rows behind"):
        writer.submit(_entry(10))
    other = PredictionLogWriter(log_path, max_pending_rows=1000, max_pending_bytes=3000)
    other.submit(Entry(1.0, "big", "7", [{"x": 1}], [{"prediction": 1}], body_bytes=50_000))  # an empty queue takes one
    with pytest.raises(LogFull):
        other.submit(_entry(1))
    assert (writer.status().rejected, writer.pending(), other.status().rejected) == (1, 10, 1)


def test_flush_returns_once_everything_submitted_is_in_the_file(log_path: Path) -> None:
    writer = PredictionLogWriter(
        log_path, drain_interval=1.0, sync_interval=1.0
    ).start()  # a slow drain: flush wakes it
    try:
        for i in range(1000):
            writer.submit(_entry(i))
        assert writer.flush(5)
        assert len(_ids(log_path)) == 1000 and writer.pending() == 0
    finally:
        writer.close()


# ---- the service: a full disk (real EFBIG), 503 past the bound, /health /ready /metrics, recovery -----

_SERVE = (
    "import json, sys; from mlgraph.serving.server import serve; from mlgraph.serving.settings import ServeSettings; "
)
_SERVE += "sys.exit(serve(ServeSettings(**json.loads(sys.argv[1]))))"


class _Service:
    """The real service (mlgraph.serving.server.serve: uvicorn) in a subprocess, with settings the CLI has no flag for
    and, optionally, a file-size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as on a full disk)."""

    def __init__(self, root: Path, config_dir: Path, fsize: int | None = None, **settings) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = root / f"service-{port}.log"
        data = {"experiment": BINARY, "port": port, "drive_root": str(root), "config_dir": str(config_dir), **settings}

        def limit() -> None:  # CPython ignores SIGXFSZ, so an oversized write fails instead of killing the process
            if fsize is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))

        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _SERVE, json.dumps(data)], stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit
            )
        self.client = httpx.Client(base_url=self.url, timeout=10)
        wait_for(self._up, 60, f"{self.url}/health", interval=0.05)

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"service exited: {self.log.read_text()[-3000:]}")
        try:
            return bool(self.client.get("/health").json()["ready"])
        except httpx.TransportError:
            return False

    def __enter__(self) -> _Service:
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_a_full_disk_is_shown_refused_past_the_bound_and_recovered_without_loss(serving_drive, tmp_path) -> None:  # noqa: F811
    root = drive_copy(serving_drive, tmp_path / "shared")
    drive = DriveLayout.at(root)
    path = drive.prediction_log_path(BINARY)
    path.parent.mkdir(parents=True)
    limit = 256 << 10
    path.write_bytes(b"\n" * (limit - 1500))  # a few records from "full"
    row = json_rows(drive, BINARY, FEATURES, 1)[0]
    answered, refused = [], []
    with _Service(root, serving_drive[1], fsize=limit, log_max_pending_rows=300) as service:
        for _ in range(3000):
            response = service.client.post("/predict", json=row)
            if response.status_code == 503:
                refused.append(response)
                if len(refused) == 3:
                    break
            else:
                assert response.status_code == 200, response.text
                answered.append(response.json()["request_id"])
        assert len(refused) == 3, "the queue never filled: predictions are answered unlogged"
        assert all(r.json()["error"] == "not_ready" and "cannot be written" in r.text for r in refused)
        assert str(root) not in refused[0].text  # the client is told why, not the server's paths
        health = service.client.get("/health").json()
        log = health["prediction_log"]
        assert health["status"] == "degraded" and health["ready"] is True, (health, [r.text for r in refused])
        assert not log["healthy"] and log["running"] and log["rejected"] == 3 and log["write_errors"] >= 1
        assert "File too large" in log["last_error"] and 0 < log["pending"] <= 300
        ready = service.client.get("/ready")
        assert ready.status_code == 503 and "prediction log" in ready.text
        metrics = service.client.get("/metrics").text
        assert _metric(metrics, "mlgraph_prediction_log_writer_healthy") == 0
        assert _metric(metrics, "mlgraph_prediction_log_rejected_total") == 3
        assert _metric(metrics, "mlgraph_prediction_log_write_errors_total") >= 1
        assert _metric(metrics, "mlgraph_prediction_log_pending") == log["pending"]
        # The disk has room again: the writer catches up by itself, and every answered prediction is there once.
        resource.prlimit(service.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        wait_for(lambda: service.client.get("/ready").status_code == 200, 15, "the writer to recover")
        after = service.client.post("/predict", json=row)
        assert after.status_code == 200
        answered.append(after.json()["request_id"])
        assert service.client.get("/monitoring/drift").json()["status"] == "no_baseline"  # after a flush
        health = service.client.get("/health").json()
        assert health["status"] == "ok" and health["prediction_log"]["pending"] == 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    logged = [json.loads(line)["request_id"] for line in lines]  # every line whole: a cut write was completed
    assert sorted(logged) == sorted(answered)


# ---- item 6: the monitoring endpoints count everything answered before the call ----------------------


def test_drift_counts_every_prediction_answered_before_the_call(serving_drive, tmp_path) -> None:  # noqa: F811
    import pandas as pd

    from mlgraph.monitoring.baseline import compute_baseline, write_baseline
    from mlgraph.training.promotion import PromotionStore

    root = drive_copy(serving_drive, tmp_path / "shared")
    drive, config = DriveLayout.at(root), config_of(serving_drive[1], BINARY)
    champion = PromotionStore(drive.promotion_dir(config.config_hash)).current()
    write_baseline(
        drive, BINARY, compute_baseline(pd.read_parquet(drive.dataset_path(BINARY, "train")), config, champion)
    )
    rows = (json_rows(drive, BINARY, FEATURES, 100) * 2)[:100]
    with _Service(root, serving_drive[1]) as service:
        for round_ in range(1, 7):
            assert service.client.post("/batch_predict", json={"rows": rows}).status_code == 200
            endpoint = "/monitoring/drift" if round_ % 2 else "/monitoring/retraining_trigger"
            report = service.client.get(endpoint)
            assert report.status_code == 200, report.text
            assert report.json()["window"]["rows"] == 100 * round_, (endpoint, report.json()["window"])


# ---- item 9: the drift window is bounded in bytes -----------------------------------------------------


def _record(i: int, pad: int = 0) -> bytes:
    inputs = {"f1": float(i), "plan": "basic", "note": "x" * pad}
    line = {"time": f"2026-12-01T00:00:{i % 60:02d}+00:00", "request_id": f"r{i}", "row": 0, "model_version": "1"}
    return json.dumps({**line, "inputs": inputs, "output": {"prediction": 1}}).encode() + b"\n"


def test_the_drift_window_reads_at_most_its_byte_cap(tmp_path: Path) -> None:
    current = tmp_path / "prediction_log.jsonl"
    older = rotated_name(current, dt.datetime(2026, 11, 30, tzinfo=UTC))
    older.write_bytes(b"".join(_record(i) for i in range(300)))
    current.write_bytes(b"".join(_record(i, pad=200_000) for i in range(300, 350)))  # 10 MB of hostile lines
    cap = 1 << 20
    capped = window.read_window(current, 5000, ["f1"], ["plan"], max_bytes=cap)
    assert capped.capped and capped.bytes_read <= cap and capped.rows <= 5
    assert capped.files == [str(current)]  # the older file is not reached: the budget is spent
    whole = window.read_window(current, 5000, ["f1"], ["plan"])
    assert whole.rows == 350 and not whole.capped and whole.bytes_read == current.stat().st_size + older.stat().st_size
    roomy = window.read_window(current, 320, ["f1"], ["plan"], max_bytes=50 << 20)
    assert roomy.rows == 320 and not roomy.capped


def test_the_window_byte_cap_has_a_default_and_an_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(drift.WINDOW_MAX_BYTES_ENV, raising=False)
    assert drift.window_byte_cap(5000) == 5000 * 16 * 1024 == 81_920_000
    assert drift.window_byte_cap(5000, {drift.WINDOW_MAX_BYTES_ENV: "1048576"}) == 1 << 20
    for bad in ("0", "-5", "lots"):
        with pytest.raises(ValueError, match="MLGRAPH_DRIFT_WINDOW_MAX_BYTES"):
            drift.window_byte_cap(5000, {drift.WINDOW_MAX_BYTES_ENV: bad})


# ---- item 10: retention, and line counts per experiment --------------------------------------------------


def test_rotated_files_are_pruned_by_size_and_age(tmp_path: Path) -> None:
    current = tmp_path / "prediction_log.jsonl"
    now = dt.datetime(2026, 12, 31, tzinfo=UTC)
    ages = (45, 31, 20, 3, 2, 1)  # days before `now`
    files = [rotated_name(current, now - dt.timedelta(days=d)) for d in ages]
    for path in files:
        path.write_bytes(b"x\n" * 500)  # 1,000 bytes each
    current.write_bytes(b"x\n" * 5000)
    stray = tmp_path / "prediction_log.20200101T000000000000.jsonl.keep"  # not a rotated name: never touched
    stray.write_text("mine")
    assert prune_rotated(current, keep_bytes=None, keep_days=30, now=now) == files[:2]
    assert prune_rotated(current, keep_bytes=2500, keep_days=None, now=now) == files[2:4]
    assert log_files(current) == [*files[4:], current] and stray.exists()


def test_the_writer_keeps_rotated_files_within_retention(log_path: Path) -> None:
    log_path.parent.mkdir(parents=True)
    ancient = rotated_name(log_path, dt.datetime.now(UTC) - dt.timedelta(days=90))
    ancient.write_text("{}\n")
    writer = PredictionLogWriter(log_path, max_bytes=2000, retention_bytes=6000, retention_days=30).start()
    try:
        wait_for(lambda: not ancient.exists(), 5, "the 90-day-old file to be deleted at start")
        for i in range(300):
            writer.submit(_entry(i))
        assert writer.flush(5)
    finally:
        writer.close()
    files = log_files(log_path)
    assert sum(p.stat().st_size for p in files[:-1]) <= 6000 and writer.status().removed_files > 5
    ids = _ids(*files)
    assert ids == [f"req-{i}" for i in range(300 - len(ids), 300)]  # the newest, contiguous: only the oldest went


def test_line_counts_are_remembered_per_experiment_without_thrashing(tmp_path: Path) -> None:
    # Over the old global cache's 4,096 entries in all, each experiment's files fit its own memory.
    logs = [tmp_path / name / "prediction_log.jsonl" for name in ("a", "b")]
    start = dt.datetime(2026, 1, 1, tzinfo=UTC)
    for current in logs:
        current.parent.mkdir()
        for k in range(2100):
            rotated_name(current, start + dt.timedelta(seconds=k)).write_bytes(b"{}\n{}\n")
        current.write_bytes(b"{}\n")
    assert [log_status.log_status(c).rows for c in logs] == [4201, 4201]
    # A rotated file of `a` changed behind the cache's back (same size and mtime): still remembered, so not re-read.
    first = log_files(logs[0])[0]
    before = first.stat()
    first.write_bytes(b"{}{}{}")  # no newline at all: a re-read would count 2 fewer
    os.utime(first, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert log_status.log_status(logs[0]).rows == 4201


def test_the_current_file_is_counted_incrementally_and_again_when_truncated_in_place(tmp_path: Path) -> None:
    current = tmp_path / "prediction_log.jsonl"
    current.write_bytes(b"".join(_record(i) for i in range(5)))
    assert log_status.log_status(current).rows == 5
    with open(current, "ab") as handle:
        handle.write(b"".join(_record(i) for i in range(5, 9)))
    assert log_status.log_status(current).rows == 9
    with open(current, "r+b") as handle:  # logrotate copytruncate: same inode, new content, now longer
        handle.truncate(0)
        handle.write(b"".join(_record(i, pad=20) for i in range(100, 112)))
    status = log_status.log_status(current)
    assert status.rows == 12 and status.bytes == current.stat().st_size


def test_readers_ignore_symlinks_and_fifos_named_like_log_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_bytes(b"".join(_record(i) for i in range(50)))
    logs = tmp_path / "serving"
    logs.mkdir()
    current = logs / "prediction_log.jsonl"
    rotated_name(current, dt.datetime(2026, 11, 30, tzinfo=UTC)).symlink_to(secret)
    os.mkfifo(rotated_name(current, dt.datetime(2026, 11, 29, tzinfo=UTC)))
    current.write_bytes(b"".join(_record(i) for i in range(3)))
    assert log_files(current) == [current]
    assert log_status.log_status(current).rows == 3
    assert window.read_window(current, 100, ["f1"], ["plan"]).rows == 3
    current.unlink()
    current.symlink_to(secret)
    assert log_status.log_status(current).rows == 0 and window.read_window(current, 100, ["f1"], ["plan"]).rows == 0
