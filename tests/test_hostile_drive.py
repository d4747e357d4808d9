"""Issue #20's standing test: hostile things planted on a real drive beside a running daemon and a running model
service, and nothing stalls, leaks, dies or is lost.

- The daemon (a real `dagster-daemon`, DefaultRunLauncher): thousands of junk signal files with one forged
  future mtime, a FIFO and a link to /dev/zero at signal paths, an `.eval_complete` whose checkpoint id climbs
  out of its directory, then a FIFO at the alert log. A real trainer's signal still starts its evaluation run
  within two sensor ticks of the time it takes on a clean drive, ticks keep completing, no run starts for a
  planted file, the rejections are alerted in one batch while the alert log is a regular file, and every
  process the daemon led to is gone at the end.
- The service (a real `mlgraph serve`): a symlink at the prediction log path (never written through, shown
  unhealthy, recovered from once removed), the log moved away mid-traffic (later predictions reach the path),
  the log's filesystem full (a small tmpfs mounted there and filled; RLIMIT_FSIZE where mounting is not
  allowed): shown in /health, /ready and /metrics, 503 past the queue bound, and every answered prediction in
  the log exactly once after space is freed; hostile requests answer 4xx in valid JSON; /monitoring/drift
  right after N predictions counts all N.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import re
import resource
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

import dagster as dg
import httpx
import pandas as pd
import pytest
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from mlgraph.cli.staging import materialize_experiments
from mlgraph.core.drive import DriveLayout
from mlgraph.core.hashing import sha256_bytes
from mlgraph.core.prediction_log import log_files
from mlgraph.ops import alerts
from mlgraph.serving.settings import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_STRING_LENGTH
from pipeline_assets.definitions import defs
from sensors.signal_sensors import MAX_LISTED_REJECTIONS
from tests.support.chain import ANALYSIS_JOB, DATA_KEYS, EVAL_JOB, RUN_TIMEOUT, run_diagnostics, run_trainer
from tests.support.daemon import DagsterDaemon
from tests.support.fixtures import shrink_experiment
from tests.support.instance import dagster_instance, write_instance_config
from tests.support.serving import BINARY, Server, config_of, drive_copy, json_rows, serving_drive  # noqa: F401
from tests.support.wait import wait_for
from tests.test_serving import FEATURES

DAEMON_SENSOR_LOOP_SECONDS = 5  # dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME
ERROR_KINDS = ("validation", "too_large", "internal")

# ---- helpers: strict JSON, raw HTTP, metrics -------------------------------------------------------------


def strict_json(text: str | bytes) -> dict:
    """json.loads that refuses `NaN` and `Infinity` (not JSON; most clients choke on them)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def raw_post(port: int, path: str, body: bytes, timeout: float = 30) -> tuple[int, dict]:
    """POST `body` written in one sendall on a raw socket, read until the server closes: (status, JSON body).
    A reset instead of an answer raises (ConnectionResetError), which fails the test."""
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    response = b"".join(chunks)
    status_line, _, rest = response.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split(b" ", 2)[1]), strict_json(payload)


def metric(text: str, name: str) -> float:
    found = [float(line.split()[-1]) for line in text.splitlines() if line.split(" ", 1)[0] in (name, name + "_total")]
    assert found, f"{name} not in /metrics"
    return found[0]


def logged_ids(paths: list[Path]) -> Counter:
    """request id → lines, over `paths`; json.loads fails on a torn line, so every line must be whole."""
    ids: Counter = Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                ids[json.loads(line)["request_id"]] += 1
    return ids


class Traffic:
    """One client thread posting /predict in a loop until stopped; keeps the id of every 200."""

    def __init__(self, url: str, row: dict) -> None:
        self.url, self.row = url, row
        self.answered: list[str] = []
        self.other: list[tuple[int, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=20) as client:
            while not self.stop.is_set():
                response = client.post("/predict", json=self.row)
                if response.status_code == 200:
                    self.answered.append(response.json()["request_id"])
                else:
                    self.other.append((response.status_code, response.text[:300]))

    def more(self, n: int) -> None:
        target = len(self.answered) + n
        wait_for(lambda: len(self.answered) >= target or self.other, 30, f"{n} more answered predictions")
        assert not self.other, self.other

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


# ---- a small filesystem at the log's directory ------------------------------------------------------------


def mount_tmpfs(directory: Path, size: str = "1m") -> str | None:
    """Mount a tmpfs of `size` at `directory`; None when mounted, else why not (not root, no CAP_SYS_ADMIN).

    1 MiB rather than 256 KiB: the phases before the full disk log a few hundred records (~100 KB) there, and
    `fill` decides when writes fail (8 KiB left), so the size only has to hold what comes before."""
    if shutil.which("mount") is None:
        return "no mount command"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True, text=True
    )
    return None if done.returncode == 0 else (done.stderr.strip() or f"mount exited {done.returncode}")


def unmount(directory: Path) -> None:
    done = subprocess.run(["umount", str(directory)], capture_output=True, text=True)
    if done.returncode != 0:  # something still open there: detach it lazily rather than leave it mounted
        subprocess.run(["umount", "-l", str(directory)], check=True)


def fill(directory: Path, leave: int) -> Path:
    """A file taking all of `directory`'s filesystem but about `leave` bytes."""
    st = os.statvfs(directory)
    size = max(st.f_bavail * st.f_frsize - leave, 0)
    filler = directory / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        block = b"\0" * 65536
        while size > 0:
            try:
                size -= os.write(fd, block[: min(size, len(block))])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return filler


# ---- the service -----------------------------------------------------------------------------------------


def _write_baseline(drive: DriveLayout, config_dir: Path) -> None:
    from mlgraph.monitoring.baseline import compute_baseline, write_baseline
    from mlgraph.training.promotion import PromotionStore

    config = config_of(config_dir, BINARY)
    champion = PromotionStore(drive.promotion_dir(config.config_hash)).current()
    train = pd.read_parquet(drive.dataset_path(BINARY, "train"))
    write_baseline(drive, BINARY, compute_baseline(train, config, champion))


@pytest.mark.timeout(240)
def test_hostile_drive_never_stalls_or_loses_the_prediction_log(serving_drive, tmp_path: Path) -> None:  # noqa: F811
    root = drive_copy(serving_drive, tmp_path / "shared")
    drive = DriveLayout.at(root)
    _write_baseline(drive, serving_drive[1])
    serving_dir = drive.serving_dir(BINARY)
    serving_dir.mkdir(parents=True)
    log = drive.prediction_log_path(BINARY)
    # A real ENOSPC needs a filesystem of our own: a tmpfs (root or CAP_SYS_ADMIN). Elsewhere the named fallback
    # is RLIMIT_FSIZE on the server process (writes past it fail with EFBIG), as test_prediction_log_hardening does.
    not_mounted = mount_tmpfs(serving_dir)
    full_disk = (
        "a 1 MiB tmpfs filled but for 8 KiB (real ENOSPC)"
        if not_mounted is None
        else "RLIMIT_FSIZE (EFBIG, as on a full disk)"
    )
    print(f"\nfull disk simulated by {full_disk}" + (f"; tmpfs not mounted: {not_mounted}" if not_mounted else ""))
    outside = tmp_path / "outside" / "authorized_keys"
    outside.parent.mkdir()
    outside.write_text("ssh-ed25519 AAAA operator\n")
    rows = json_rows(drive, BINARY, FEATURES, 20)
    row = rows[0]
    answered: list[str] = []  # every request id answered 200, one row each
    moved: list[Path] = []  # log files moved away (logrotate style) or aside
    try:
        server = Server(root, serving_drive[1], BINARY, "--log-max-pending-rows", "300")
        with server:
            server.wait_up()
            client = server.client

            def predict(body: dict) -> httpx.Response:
                response = client.post("/predict", json=body)
                if response.status_code == 200:
                    answered.append(response.json()["request_id"])
                return response

            def writer() -> dict:
                return client.get("/health").json()["prediction_log"]

            # Item 6: the drift report right after N predictions counts all N.
            for i in range(60):
                assert predict(rows[i % len(rows)]).status_code == 200
            report = client.get("/monitoring/drift")
            assert report.status_code == 200, report.text
            assert report.json()["window"]["rows"] == 60, report.json()["window"]

            # Items 7-9: hostile requests answer 4xx in valid JSON; never 500, never a reset.
            huge = client.post("/predict", content=json.dumps({**row, "days_on_platform": 10**309}))
            assert huge.status_code == 422, huge.text
            assert [e["field"] for e in strict_json(huge.text)["detail"]] == ["days_on_platform"]
            nan = client.post("/predict", content=json.dumps({**row, "minutes_watched": float("nan")}))
            assert nan.status_code == 422, nan.text  # the body says NaN; the answer must not
            assert [e["field"] for e in strict_json(nan.text)["detail"]] == ["minutes_watched"]
            long = client.post("/predict", json={**row, "student_country": "x" * (DEFAULT_MAX_STRING_LENGTH + 1)})
            assert long.status_code == 422, long.text
            assert [e["field"] for e in strict_json(long.text)["detail"]] == ["student_country"]
            mib = json.dumps({**row, "student_country": "x" * (1 << 20)}).encode()
            assert len(mib) > DEFAULT_MAX_BODY_BYTES  # a 1 MiB string cannot fit the 1 MiB body limit
            status, answer = raw_post(server.port, "/predict", mib)
            assert status == 413 and answer["error"] == "too_large", answer
            oversize = json.dumps({"rows": [row] * 20_000}).encode()
            status, answer = raw_post(server.port, "/batch_predict", oversize)
            assert status == 413 and answer["error"] == "too_large" and answer["request_id"], answer
            metrics = client.get("/metrics").text
            errors = {k: metric(metrics, f'mlgraph_request_errors_total{{kind="{k}"}}') for k in ERROR_KINDS}
            assert errors == {"validation": 3, "too_large": 2, "internal": 0}, errors

            # Item 4: the log moved away mid-traffic (logrotate's create mode); later predictions reach the path.
            with Traffic(server.url, row) as traffic:
                traffic.more(50)
                rotated = log.with_name("prediction_log.jsonl.1")
                os.rename(log, rotated)
                moved.append(rotated)
                after_move = len(traffic.answered)
                traffic.more(100)
            answered += traffic.answered
            flushed = client.get("/monitoring/drift")  # waits until everything answered is written
            assert flushed.status_code == 200, flushed.text
            in_new = logged_ids([log])
            assert in_new and set(traffic.answered[after_move + 20 :]) <= set(in_new), "later answers not at the path"
            assert writer()["reopens"] >= 1 and writer()["healthy"]

            # Item 5: a symlink planted at the log path, pointing out of the drive: never written through.
            aside = log.with_name("prediction_log.jsonl.2")
            os.rename(log, aside)  # nothing in flight, so the writer has not reopened the path in between
            moved.append(aside)
            log.symlink_to(outside)
            during = []
            for i in range(20):
                response = predict(rows[i % len(rows)])
                assert response.status_code == 200, response.text  # queued: answered, not yet written
                during.append(response.json()["request_id"])
            refused = wait_for(
                lambda: (w := writer()) and not w["healthy"] and w,
                15,
                "/health to show the writer refusing the symlink",
            )
            assert "symlink" in refused["last_error"] and refused["running"] and refused["pending"] >= 1, refused
            assert client.get("/health").json()["status"] == "degraded"
            ready = client.get("/ready")
            assert ready.status_code == 503 and "prediction log" in strict_json(ready.text)["detail"], ready.text
            assert metric(client.get("/metrics").text, "mlgraph_prediction_log_writer_healthy") == 0
            assert outside.read_text() == "ssh-ed25519 AAAA operator\n"
            log.unlink()  # the operator removes the link: the writer recovers by itself
            wait_for(lambda: client.get("/ready").status_code == 200, 20, "the writer to recover from the symlink")
            assert not log.is_symlink() and set(during) <= set(logged_ids([log]))
            assert outside.read_text() == "ssh-ed25519 AAAA operator\n"

            # Item 4: the log's filesystem is full. Writes fail, the queue fills to its bound, then 503.
            if not_mounted is None:
                filler = fill(serving_dir, leave=8192)
            else:
                size = log.stat().st_size
                resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (size + 8192, resource.RLIM_INFINITY))
            refusals = []
            for _ in range(3000):
                response = predict(row)
                if response.status_code == 503:
                    refusals.append(strict_json(response.text))
                    if len(refusals) == 3:
                        break
                else:
                    assert response.status_code == 200, response.text
            assert len(refusals) == 3, "the queue never filled: predictions are answered unlogged"
            assert all(r["error"] == "not_ready" and "cannot be written" in r["detail"] for r in refusals), refusals
            health = client.get("/health").json()
            state = health["prediction_log"]
            assert health["status"] == "degraded" and not state["healthy"] and state["running"], health
            expected_error = "No space left on device" if not_mounted is None else "File too large"
            assert expected_error in state["last_error"] and state["write_errors"] >= 1, state
            assert state["rejected"] == 3 and 0 < state["pending"] <= 300, state
            ready = client.get("/ready")
            assert ready.status_code == 503 and expected_error in strict_json(ready.text)["detail"], ready.text
            metrics = client.get("/metrics").text
            assert metric(metrics, "mlgraph_prediction_log_writer_healthy") == 0
            assert metric(metrics, "mlgraph_prediction_log_write_errors") >= 1
            assert metric(metrics, "mlgraph_prediction_log_rejected") == 3
            # Space again: the writer catches up by itself.
            if not_mounted is None:
                filler.unlink()
            else:
                resource.prlimit(
                    server.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
                )
            wait_for(lambda: client.get("/ready").status_code == 200, 30, "the writer to recover from the full disk")
            assert predict(row).status_code == 200
            assert client.get("/monitoring/drift").status_code == 200  # flushed
            state = writer()
            assert state["healthy"] and state["pending"] == 0 and state["dropped"] == 0, state
            assert server.proc.poll() is None
        # Stopped (SIGTERM: the writer drains and closes); every answered prediction is in the log once.
        assert server.proc.returncode is not None
        files = [*moved, *log_files(log)]
        logged = logged_ids(files)
        assert len(answered) == len(set(answered)) > 500
        duplicates = {rid: n for rid, n in logged.items() if n != 1}
        assert not duplicates, duplicates
        assert set(logged) == set(answered), (len(set(answered) - set(logged)), len(set(logged) - set(answered)))
        assert outside.read_text() == "ssh-ed25519 AAAA operator\n"
    finally:
        if not_mounted is None:
            unmount(serving_dir)


# ---- the daemon ------------------------------------------------------------------------------------------

JUNK = 5000
TRAINING_SENSOR, EVAL_SENSOR = "training_complete_sensor", "eval_complete_sensor"
# How a tick alerts the rejections it does not list one by one.
MORE = re.compile(r"(\d+) more signal files rejected in this tick")


def add_experiment(config_dir: Path, name: str) -> None:
    """config/experiments/{name}.yaml, a copy of salary's: a known experiment, so its signal files are read."""
    salary = (config_dir / "experiments" / "salary.yaml").read_text()
    (config_dir / "experiments" / f"{name}.yaml").write_text(salary.replace("name: salary", f"name: {name}"))


def plant_junk(drive: Path, count: int, mtime_ns: int) -> None:
    """`count` signal files in directories that name no experiment, all with one forged mtime: a third
    well-formed, the rest half-written JSON."""
    for i in range(count):
        path = drive / "models" / f"junk{i:05d}" / ".training_complete"
        path.parent.mkdir(parents=True)
        if i % 3:
            path.write_text('{"timestamp": "2025-09-30T14:32:15Z", "experiment": ')
        else:
            signal = {"timestamp": "2025-09-30T14:32:15Z", "experiment": path.parent.name, "hostname": "h", "user": "u"}
            path.write_text(json.dumps({**signal, "checkpoint_path": str(drive / "models" / "salary")}))
        os.utime(path, ns=(mtime_ns, mtime_ns))


def kind(path: Path) -> str:
    mode = os.lstat(path).st_mode
    return "fifo" if stat.S_ISFIFO(mode) else "link" if stat.S_ISLNK(mode) else "file" if stat.S_ISREG(mode) else "?"


def ticks_since(instance, sensor: str, since: float) -> list:
    """The finished ticks of `sensor` that ended after `since` (epoch seconds), newest first. Ended, not started:
    a tick listens for seconds (LISTEN_SECONDS), so one that started before `since` may be the one that acts on
    a file written after it (with a 0.5 s settle time, it can even reject it)."""
    found = []
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == sensor:
            found += [
                t
                for t in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=100)
                if t.status != TickStatus.STARTED and (t.end_timestamp or t.timestamp) > since
            ]
    return sorted(found, key=lambda t: t.timestamp, reverse=True)


def tick_logs(instance, sensor: str, since: float) -> list[str]:
    """What the finished ticks of `sensor` since `since` logged (the daemon captures each tick's log)."""
    texts = []
    for t in ticks_since(instance, sensor, since):
        if t.log_key:
            data = instance.compute_log_manager.get_log_data(t.log_key)
            texts.append(((data.stdout or b"") + (data.stderr or b"")).decode(errors="replace"))
    return texts


def normal_period(ticks: list, floor: float) -> float:
    """The median time between consecutive ticks (at least `floor`): a tick's length on this machine now."""
    stamps = sorted(t.timestamp for t in ticks)
    gaps = sorted(b - a for a, b in pairwise(stamps))
    return max(floor, gaps[len(gaps) // 2] if gaps else floor)


def successes(instance, job: str, diagnostics) -> int:
    """How many runs of `job` succeeded; a failed or canceled one fails the test at once."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job))
    bad = [r for r in runs if r.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)]
    assert not bad, f"{job} run {bad[0].run_id} {bad[0].status}\n{diagnostics()}"
    return sum(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)


def signal_to_run(instance, experiment: str, drive: Path, trainer_env: dict, epochs: int, diagnostics) -> dict:
    """A real trainer signals; wait until the evaluation run of that signal has started. Seconds from the signal
    file's change time to the run's creation and to its start, and the checkpoint id."""
    trained = run_trainer(experiment, trainer_env, epochs=epochs)
    signal = drive / "models" / experiment / ".training_complete"
    signalled, sha = signal.stat().st_ctime, sha256_bytes(signal.read_bytes())

    def started():
        records = instance.get_run_records(
            filters=dg.RunsFilter(job_name=EVAL_JOB, tags={"mlgraph/signal_sha256": sha}), limit=1
        )
        return records[0] if records and records[0].start_time else None

    record = wait_for(started, RUN_TIMEOUT, f"the evaluation run of {trained['checkpoint_id']}", on_timeout=diagnostics)
    created = record.create_timestamp
    created = created if created.tzinfo else created.replace(tzinfo=dt.UTC)
    return {
        "checkpoint_id": trained["checkpoint_id"],
        "created": created.timestamp() - signalled,
        "started": record.start_time - signalled,
    }


@pytest.mark.daemon
@pytest.mark.timeout(360)
def test_hostile_drive_beside_a_running_daemon(tmp_path: Path, shared_drive: Path, config_dir: Path) -> None:
    shrink_experiment(config_dir, "salary", 600)
    for name in ("fifo_exp", "zero_exp"):
        add_experiment(config_dir, name)
    home = tmp_path / "dagster_home"
    write_instance_config(home)
    env = {"SHARED_DRIVE": str(shared_drive), "MLGRAPH_CONFIG_DIR": str(config_dir), "PYTHONWARNINGS": "ignore"}
    trainer_env = {**os.environ, **env}
    trainer_env.pop("MLFLOW_TRACKING_URI", None)
    daemon = DagsterDaemon(home, env, tmp_path)
    alert_log = DriveLayout.at(shared_drive).alerts_jsonl()
    fifo = shared_drive / "models" / "fifo_exp" / ".training_complete"
    zero = shared_drive / "models" / "zero_exp" / ".training_complete"
    climbing = shared_drive / "evaluation" / "student_engagement" / ".eval_complete"
    # Dagster's sensor loop comes round every 5 s (a tick listens for up to 3.5 s of it): the tick cadence.
    tick = DAEMON_SENSOR_LOOP_SECONDS
    reader = None
    with dagster_instance(home) as instance:
        summary = materialize_experiments(
            defs, instance, ["salary"], selection=DATA_KEYS, echo=lambda _: None, raise_on_error=True
        )
        assert not summary.failed
        data_runs = {r.run_id for r in instance.get_runs()}  # in-process, before the daemon

        def diagnostics() -> str:
            return run_diagnostics(instance, daemon)

        def alive() -> None:
            assert daemon.proc.poll() is None, f"the daemon died ({daemon.proc.returncode})\n{diagnostics()}"

        def rejection_alerts() -> list[tuple[int, dict]]:
            """(line number, record) of every signal_rejected alert in the (regular) alert log."""
            records = alerts.read_records(alert_log, within=shared_drive)
            return [(i, r) for i, r in enumerate(records) if r["kind"] == alerts.SIGNAL_REJECTED]

        try:
            started_at = time.time()
            daemon.start()
            wait_for(
                lambda: ticks_since(instance, TRAINING_SENSOR, started_at), 120, "a first tick", on_timeout=diagnostics
            )

            # A clean drive: the time from a trainer's signal to its evaluation run, for comparison.
            clean = signal_to_run(instance, "salary", shared_drive, trainer_env, 2, diagnostics)
            for job in (EVAL_JOB, ANALYSIS_JOB):  # the chain finishes: the next measurement runs on a quiet machine
                wait_for(
                    lambda j=job: successes(instance, j, diagnostics) == 1, RUN_TIMEOUT, job, on_timeout=diagnostics
                )

            # The flood and the hostile files, planted beside the running daemon; then a real signal.
            planted_at = time.time()
            future = time.time_ns() + 365 * 86_400 * 10**9
            plant_junk(shared_drive, JUNK, future)
            fifo.parent.mkdir(parents=True)
            os.mkfifo(fifo)  # an open() for reading blocks until a writer comes
            zero.parent.mkdir(parents=True)
            zero.symlink_to("/dev/zero")  # a read to the end never ends
            climbing.parent.mkdir(parents=True)
            climbing.write_text(
                json.dumps(
                    {
                        "timestamp": "2025-09-30T15:00:00Z",
                        "experiment": "student_engagement",
                        "job_id": "77",
                        "status": "complete",
                        "checkpoint_id": "x/../../..",
                    }
                )
            )
            for path in (fifo, zero, climbing):
                os.utime(path, ns=(future, future), follow_symlinks=False)
            period = normal_period(
                [t for t in ticks_since(instance, TRAINING_SENSOR, started_at) if t.timestamp < planted_at], tick
            )
            flooded = signal_to_run(instance, "salary", shared_drive, trainer_env, 3, diagnostics)
            print(
                f"\nsignal -> evaluation run, clean drive: created {clean['created']:.1f} s, started "
                f"{clean['started']:.1f} s; with {JUNK} junk signal files (one forged future mtime), a FIFO, a link "
                f"to /dev/zero and a climbing checkpoint id: created {flooded['created']:.1f} s, started "
                f"{flooded['started']:.1f} s (sensor interval {tick} s, ticks every {period:.1f} s on this machine)"
            )
            # "Within two ticks of normal": a tick is the interval the daemon keeps between ticks on this machine now
            # (on 2 loaded cores more than the configured minimum), measured on the clean drive.
            assert flooded["created"] <= clean["created"] + 2 * period, (clean, flooded, period)
            assert flooded["started"] <= clean["started"] + 2 * period, (clean, flooded, period)
            alive()

            # Every planted file is rejected and alerted: the FIFO and the link in one batch (one tick's alerts
            # share a time and are written together), the flood as a bounded list (MAX_LISTED_REJECTIONS by
            # name, then a count), never an alert per junk file.
            wanted = ("models/fifo_exp/", "models/zero_exp/", "models/junk", "evaluation/student_engagement/")
            rejected = wait_for(
                lambda: (
                    (found := rejection_alerts())
                    and all(any(w in r["message"] for _, r in found) for w in wanted)
                    and found
                ),
                4 * tick + 30,
                "alerts for every planted file",
                on_timeout=lambda: f"{rejection_alerts()}\n{diagnostics()}",
            )
            [(fifo_at, fifo_alert)] = [(i, r) for i, r in rejected if "models/fifo_exp/" in r["message"]]
            [(zero_at, zero_alert)] = [(i, r) for i, r in rejected if "models/zero_exp/" in r["message"]]
            assert abs(fifo_at - zero_at) == 1 and fifo_alert["time"] == zero_alert["time"], rejected
            assert "named pipe (FIFO)" in fifo_alert["message"], fifo_alert
            assert "outside the shared drive" in zero_alert["message"], zero_alert
            [(_, climbing_alert)] = [(i, r) for i, r in rejected if "evaluation/student_engagement/" in r["message"]]
            assert "field 'checkpoint_id'" in climbing_alert["message"], climbing_alert
            listed = [r for _, r in rejected if "models/junk" in r["message"]]
            counted = [int(m.group(1)) for _, r in rejected if (m := MORE.search(r["message"]))]
            batches = {r["time"] for _, r in rejected if "models/junk" in r["message"] or MORE.search(r["message"])}
            assert len(listed) + len(counted) <= len(batches) * (MAX_LISTED_REJECTIONS + 1) < JUNK / 10, batches
            assert len(listed) + sum(counted) == JUNK, (len(listed), counted)  # each junk file listed or counted once
            assert kind(fifo) == "fifo" and os.readlink(zero) == "/dev/zero"  # refused, not removed or replaced

            # The alert log becomes a FIFO, a reader waiting (so a plain open for writing would succeed and write):
            # rejections can no longer be alerted, yet every tick completes and the chain goes on.
            fifo_planted_at = time.time()
            alert_log.rename(alert_log.with_name("alerts.before.jsonl"))
            os.mkfifo(alert_log)
            reader = os.open(alert_log, os.O_RDONLY | os.O_NONBLOCK)
            zero.unlink()
            zero.write_text('{"timestamp": "2025-09-30T14:32:15Z", "experiment": ')  # half-written JSON

            def rejected_again() -> bool:
                reasons = [t.skip_reason or "" for t in ticks_since(instance, TRAINING_SENSOR, fifo_planted_at)]
                return any("models/zero_exp/.training_complete" in r for r in reasons)

            wait_for(rejected_again, 3 * tick + 20, "a tick rejecting the rewritten file", on_timeout=diagnostics)
            # The refusal is reported in the tick's log, not swallowed.
            wait_for(
                lambda: any(
                    "could not record 1 signal-rejection alert" in log and "alerts.jsonl: is a named pipe" in log
                    for log in tick_logs(instance, TRAINING_SENSOR, fifo_planted_at)
                ),
                30,
                "the tick's log to report the unusable alert log",
                on_timeout=lambda: "\n".join(tick_logs(instance, TRAINING_SENSOR, fifo_planted_at))[-3000:],
            )
            # The second checkpoint's evaluation finishes, and its .eval_complete starts the second analysis.
            wait_for(lambda: successes(instance, EVAL_JOB, diagnostics) == 2, RUN_TIMEOUT, "the second evaluation")
            wait_for(
                lambda: len(instance.get_runs(filters=dg.RunsFilter(job_name=ANALYSIS_JOB))) == 2,
                RUN_TIMEOUT,
                "the second analysis run",
                on_timeout=diagnostics,
            )
            assert os.read(reader, 1 << 16) == b"" and kind(alert_log) == "fifo"  # nothing was written into it
            alive()
            # Ticks keep completing after everything planted, and none failed.
            for sensor in (TRAINING_SENSOR, EVAL_SENSOR):
                wait_for(
                    lambda s=sensor: len(ticks_since(instance, s, fifo_planted_at)) >= 2,
                    4 * tick + 20,
                    f"two more {sensor} ticks",
                    on_timeout=diagnostics,
                )
                since_planted = ticks_since(instance, sensor, planted_at)
                failed = [t for t in since_planted if t.is_failure]
                assert not failed, [t.error for t in failed]
                slow = [
                    t.end_timestamp - t.timestamp for t in since_planted if t.end_timestamp - t.timestamp > 2 * tick
                ]
                assert not slow, f"{sensor} ticks took {slow} s with the planted files"

            # The FIFO removed, rejections are alerted again.
            os.close(reader)
            reader = None
            alert_log.unlink()
            zero.write_text('{"timestamp": "2025-09-30T14:32:16Z", "experiment": ')
            wait_for(
                lambda: alert_log.exists() and any("models/zero_exp/" in r["message"] for _, r in rejection_alerts()),
                3 * tick + 20,
                "the rejection alerted in a regular alert log again",
                on_timeout=diagnostics,
            )
            alive()
        finally:
            if reader is not None:
                os.close(reader)
            daemon.stop_all()
        assert daemon.descendants() == []

        # No run for a planted file: every run the daemon started is salary's, started by its real signals.
        runs = [r for r in instance.get_runs() if r.run_id not in data_runs]
        assert {(r.job_name, r.tags.get("dagster/partition")) for r in runs} == {
            (EVAL_JOB, "salary"),
            (ANALYSIS_JOB, "salary"),
        }
        assert {r.tags["mlgraph/signal_file"] for r in runs} == {
            str(shared_drive / "models" / "salary" / ".training_complete"),
            str(shared_drive / "evaluation" / "salary" / ".eval_complete"),
        }
        evaluated = {r.tags["mlgraph/checkpoint_id"] for r in runs if r.job_name == EVAL_JOB}
        assert evaluated == {clean["checkpoint_id"], flooded["checkpoint_id"]}
