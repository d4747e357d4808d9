"""Alerts: once per condition, resolved when it clears, POSTed to a real local webhook, safe under
concurrent writers; the heartbeat check through a real instance and the CLI; failed runs through a
real daemon and the real Slurm launcher (a step whose process dies, three times for one experiment)."""

import json
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._daemon.types import DaemonHeartbeat

from mlgraph.cli.main import main
from mlgraph.core.drive import PROJECT_ROOT, DriveLayout
from mlgraph.core.tags import COMPUTE_TAG, TAG_EXPERIMENT
from mlgraph.ops import alerts, webhook
from mlgraph.ops.webhook import WEBHOOK_URL_ENV
from tests.support import dagster_instance, wait_for
from tests.support.slurm import harness
from tests.test_signal_sensors import TRAINING_SENSOR, tick

T0 = alerts.utc_now()


def lines(drive: DriveLayout) -> list[dict]:
    return alerts.read_records(drive.alerts_jsonl())


class Receiver:
    """A real HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers["Content-Length"])
                received.paths.append(self.path)
                received.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def test_same_condition_alerts_once_per_cooldown_and_resolves(shared_drive: Path):
    drive = DriveLayout.at(shared_drive)
    first = alerts.raise_alert(drive, alerts.DISK_SPACE_LOW, "disk_space_low", "5% free", "critical", now=T0)
    again = alerts.raise_alert(
        drive, alerts.DISK_SPACE_LOW, "disk_space_low", "4% free", "critical", now=T0 + timedelta(minutes=59)
    )
    assert first is not None and again is None
    later = alerts.raise_alert(
        drive, alerts.DISK_SPACE_LOW, "disk_space_low", "3% free", "critical", now=T0 + timedelta(minutes=61)
    )
    assert later is not None and [r["message"] for r in lines(drive)] == ["5% free", "3% free"]
    assert [a["key"] for a in alerts.read_open_alerts(drive, now=T0 + timedelta(minutes=62))] == ["disk_space_low"]

    assert alerts.resolve_alert(drive, "disk_space_low", "back to 30%", now=T0 + timedelta(minutes=63))
    assert alerts.resolve_alert(drive, "disk_space_low", "still fine") is None  # only an open key resolves
    assert alerts.read_open_alerts(drive) == []
    record = lines(drive)[-1]
    assert record["resolved"] is True and record["time"].endswith("Z")
    # A new episode alerts at once, cooldown or not.
    assert alerts.raise_alert(
        drive, alerts.DISK_SPACE_LOW, "disk_space_low", "2% free", "critical", now=T0 + timedelta(minutes=64)
    )

    # Event alerts (a failed run) stay open for a day, then drop off the dashboard.
    alerts.run_failed(drive, "r" * 32, "training_job", "boom postgresql://u:hunter2@db/x", "salary", now=T0)
    failed = lines(drive)[-1]
    assert "hunter2" not in json.dumps(failed) and failed["experiment"] == "salary"
    assert "r" * 32 in [a.get("run_id") for a in alerts.read_open_alerts(drive, now=T0 + timedelta(hours=23))]
    assert "r" * 32 not in [a.get("run_id") for a in alerts.read_open_alerts(drive, now=T0 + timedelta(hours=25))]


def _raise_many(root: str, worker: int) -> int:
    drive = DriveLayout.at(root)
    fired = 0
    for i in range(40):
        fired += (
            alerts.raise_alert(drive, alerts.SIGNAL_REJECTED, f"own:{worker}:{i}", "x" * 3000, "warning") is not None
        )
        fired += alerts.raise_alert(drive, alerts.HEARTBEAT_STALE, "shared", "daemon down", "critical") is not None
    return fired


def test_concurrent_writers_never_interleave_or_double_fire(shared_drive: Path):
    with ProcessPoolExecutor(4) as pool:
        fired = sum(pool.map(_raise_many, [str(shared_drive)] * 4, range(4)))
    raw = DriveLayout.at(shared_drive).alerts_jsonl().read_text().splitlines()
    records = [json.loads(line) for line in raw]  # every line whole
    assert fired == len(records) == 4 * 40 + 1
    assert sum(r["key"] == "shared" for r in records) == 1


def test_webhook_receives_each_alert_and_a_dead_one_is_logged_without_its_token(
    shared_drive, receiver, monkeypatch, caplog
):
    drive = DriveLayout.at(shared_drive)
    monkeypatch.setenv(WEBHOOK_URL_ENV, f"{receiver.url}/hooks/SECRET-TOKEN")
    alerts.consecutive_failures(drive, "salary", ["FAILURE"] * 3)
    alerts.consecutive_failures(drive, "salary", ["FAILURE"] * 3)  # deduped: not posted again
    alerts.consecutive_failures(drive, "salary", ["SUCCESS", "FAILURE", "FAILURE"])
    assert webhook.flush(30)  # sent by the background sender, in order
    assert receiver.paths == ["/hooks/SECRET-TOKEN"] * 2
    assert [(b["kind"], b["resolved"], b["severity"]) for b in receiver.bodies] == [
        ("consecutive_failures", False, "critical"),
        ("consecutive_failures", True, "critical"),
    ]
    assert receiver.bodies[0] == lines(drive)[0]

    monkeypatch.setenv(WEBHOOK_URL_ENV, "http://127.0.0.1:9/hooks/SECRET-TOKEN")  # discard port: refused
    with caplog.at_level(logging.WARNING, logger="mlgraph.ops.webhook"):
        assert alerts.raise_alert(drive, alerts.DISK_SPACE_LOW, "disk_space_low", "low", "critical")
        assert webhook.flush(30)
    assert "unreachable" in caplog.text and "SECRET-TOKEN" not in caplog.text
    assert "SECRET-TOKEN" not in DriveLayout.at(shared_drive).alerts_jsonl().read_text()


def test_stale_heartbeat_and_low_disk_through_alerts_check(shared_drive: Path, tmp_path, monkeypatch, capsys):
    home = tmp_path / "dagster_home"
    with dagster_instance(home):
        pass  # an instance that never saw a daemon
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    drive = DriveLayout.at(shared_drive)
    assert main(["alerts", "check"]) == 0
    assert "daemon heartbeat: skipped" in capsys.readouterr().out and lines(drive) == []

    with dagster_instance(home) as instance:
        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - 600, "SENSOR", None, None))
    monkeypatch.setenv(alerts.DISK_MIN_FREE_ENV, "100")  # any real disk is under 100 % free
    for _ in range(3):  # cron runs it every minute; one alert per condition
        assert main(["alerts", "check"]) == 0
    out = capsys.readouterr().out
    assert "daemon heartbeat: FAIL" in out and "disk space: FAIL" in out
    kinds = sorted(a["kind"] for a in alerts.read_open_alerts(drive))
    assert kinds == ["daemon_heartbeat_stale", "disk_space_low"] and len(lines(drive)) == 2

    with dagster_instance(home) as instance:
        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time(), "SENSOR", None, None))
    monkeypatch.setenv(alerts.DISK_MIN_FREE_ENV, "0")
    assert main(["alerts", "check"]) == 0
    assert alerts.read_open_alerts(drive) == [] and [r["resolved"] for r in lines(drive)] == [False, False, True, True]
    assert main(["alerts", "list"]) == 0 and "no open alerts" in capsys.readouterr().out


def test_rejected_signal_alerts_once(shared_drive: Path, config_dir: Path, instance):
    bad = shared_drive / "models" / "salary" / ".training_complete"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    os.utime(bad, (time.time() - 60, time.time() - 60))
    result = tick(TRAINING_SENSOR, instance, shared_drive, config_dir)
    tick(TRAINING_SENSOR, instance, shared_drive, config_dir, cursor=result.cursor)
    records = lines(DriveLayout.at(shared_drive))
    assert [r["kind"] for r in records] == ["signal_rejected"]
    assert "models/salary/.training_complete" in records[0]["message"] and records[0]["severity"] == "warning"


# A test-only code location: a step whose process dies (as a crashed trainer's would) and the alert sensors.
CRASH_LOCATION = '''
import os
import dagster as dg
from resources.storage import SharedDrive
from sensors.alerts import build_alert_sensors


@dg.asset
def crashing_asset():
    """Ends its process with status 3 mid-step."""
    os._exit(3)


defs = dg.Definitions(
    assets=[crashing_asset],
    jobs=[dg.define_asset_job("crash_job", selection=[crashing_asset])],
    sensors=build_alert_sensors(minimum_interval_seconds=1, disk_interval_seconds=3600),
    resources={"storage": SharedDrive()},
    executor=dg.in_process_executor,
)
'''


@pytest.mark.slurm
@pytest.mark.daemon
@pytest.mark.timeout(240)
def test_slurm_failures_alert_per_run_and_once_for_three_in_a_row(tmp_path: Path, monkeypatch):
    harness.require_slurm()
    shared, home = tmp_path / "shared", tmp_path / "dagster_home"
    shared.mkdir()
    (tmp_path / "crash_location.py").write_text(CRASH_LOCATION)
    harness.write_slurm_instance(home, {"route": "tagged", "cpus": 1, "mem": "512M", "time": "00:05:00"})
    workspace_yaml = tmp_path / "workspace.yaml"
    workspace_yaml.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_file": {
                            "relative_path": str(tmp_path / "crash_location.py"),
                            "location_name": "crash",
                            "working_directory": str(PROJECT_ROOT),
                        }
                    }
                ]
            }
        )
    )
    monkeypatch.setenv("SHARED_DRIVE", str(shared))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    daemon = harness.Daemon(workspace_yaml, dict(os.environ), tmp_path / "daemon.log")
    drive = DriveLayout.at(shared)
    with (
        dagster_instance(home) as instance,
        WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(workspace_yaml)])) as workspace,
    ):
        try:
            daemon.start(instance)
            context = workspace.create_request_context()
            run_ids = []
            for _ in range(3):
                run = harness.create_run(
                    instance, context, "crash", "crash_job", tags={COMPUTE_TAG: "slurm", TAG_EXPERIMENT: "salary"}
                )
                instance.submit_run(run.run_id, context)
                run_ids.append(run.run_id)

            def alerted():
                records = lines(drive)
                failed = {r["run_id"] for r in records if r["kind"] == "run_failed"}
                return failed == set(run_ids) and any(r["kind"] == "consecutive_failures" for r in records)

            def diagnostics() -> str:
                statuses = [instance.get_run_by_id(r).status for r in run_ids]
                return f"{statuses}\n{lines(drive)}\n{daemon.log_path.read_text()[-3000:]}"

            wait_for(alerted, 150, "three run_failed alerts and one consecutive_failures alert", on_timeout=diagnostics)
            for run_id in run_ids:
                assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
            # Two more sensor ticks over the same failures: nothing new is written.
            origin = _sensor_origin(workspace)
            seen = len(lines(drive))
            ticks = len(instance.get_ticks(*origin))
            wait_for(lambda: len(instance.get_ticks(*origin)) >= ticks + 2, 30, "two more sensor ticks")
        finally:
            daemon.stop()
            # Jobs still queued or running die with the test (scancel of an ended job is a no-op).
            job_ids = [run.tags["slurm/job_id"] for run in instance.get_runs() if "slurm/job_id" in run.tags]
            if job_ids:
                subprocess.run(["scancel", *job_ids], check=False, capture_output=True, timeout=30)
    records = lines(drive)
    assert len(records) == seen
    failed = [r for r in records if r["kind"] == "run_failed"]
    assert len(failed) == 3 and {r["slurm_state"] for r in failed} == {"FAILED"}, failed
    assert all(r["experiment"] == "salary" and r["job"] == "crash_job" for r in failed)
    (streak,) = [r for r in records if r["kind"] == "consecutive_failures"]
    assert streak["severity"] == "critical" and streak["key"] == "consecutive_failures:salary"
    assert [a["kind"] for a in alerts.read_open_alerts(drive)].count("run_failed") == 3


def _sensor_origin(workspace):
    location = workspace.create_request_context().get_code_location("crash")
    repo = next(iter(location.get_repositories().values()))
    sensor = repo.get_sensor("alert_run_failure_sensor")
    return sensor.get_remote_origin_id(), sensor.selector_id


def test_a_long_alert_log_is_read_from_its_tail(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    old = json.dumps({"key": "old", "kind": "run_failed", "message": "x" * 200})
    new = json.dumps({"key": "new", "kind": "run_failed", "message": "latest"})
    path.write_text("\n".join([old] * 100 + [new]) + "\n")
    records = alerts.read_records(path, tail_bytes=1000)
    # Only whole lines of the last 1,000 bytes: the cut first line is dropped, the newest is kept.
    assert records[-1]["key"] == "new" and 0 < len(records) <= 1000 // len(old) + 1
    assert all(r["message"] in ("x" * 200, "latest") for r in records)
    assert len(alerts.read_records(path)) == 101


class GatedReceiver(Receiver):
    """A Receiver whose answers wait for `gate`: a receiver as slow as you like, released by the test."""

    def __init__(self):
        self.gate = threading.Event()
        self.entered = threading.Event()
        super().__init__()
        handle = self.server.RequestHandlerClass.do_POST
        received = self

        def do_post(handler):
            received.entered.set()
            received.gate.wait(60)
            handle(handler)

        self.server.RequestHandlerClass.do_POST = do_post

    def close(self):
        self.gate.set()
        super().close()


@pytest.fixture
def gated():
    r = GatedReceiver()
    try:
        yield r
    finally:
        r.close()


@pytest.mark.timeout(120)
def test_a_tick_of_300_rejections_is_one_batch_and_a_stuck_webhook_never_delays_it(
    shared_drive: Path, gated: GatedReceiver, monkeypatch
):
    from sensors.alerts import alert_rejected_signals

    monkeypatch.setenv(WEBHOOK_URL_ENV, f"{gated.url}/hooks/T")
    counts = {"fsync": 0, "read": 0}
    real_fsync, real_read = os.fsync, alerts.read_regular_tail

    def fsync(fd):  # counted, then the real call
        counts["fsync"] += 1
        real_fsync(fd)

    def read(*args, **kwargs):
        counts["read"] += 1
        return real_read(*args, **kwargs)

    monkeypatch.setattr(alerts.os, "fsync", fsync)
    monkeypatch.setattr(alerts, "read_regular_tail", read)
    reasons = [f"models/e{i}/.training_complete: not valid JSON" for i in range(300)]
    errors = []
    log = logging.getLogger("test-tick")
    log.error = errors.append
    started = time.monotonic()
    alert_rejected_signals(shared_drive, reasons, log)
    elapsed = time.monotonic() - started
    # The receiver has not answered a single POST yet: the tick did not wait for it.
    assert not errors and elapsed < 10, (errors, elapsed)
    assert counts == {"fsync": 1, "read": 1}
    records = lines(DriveLayout.at(shared_drive))
    assert len(records) == 300 and {r["kind"] for r in records} == {"signal_rejected"}
    # The same tick again (the files are still there): deduped by the cooldown, nothing written or sent.
    alert_rejected_signals(shared_drive, reasons, log)
    assert len(lines(DriveLayout.at(shared_drive))) == 300

    gated.gate.set()
    assert webhook.flush(60)
    assert len(gated.bodies) == 300 and {b["key"] for b in gated.bodies} == {r["key"] for r in records}


def test_the_webhook_queue_is_bounded_and_every_drop_is_counted_and_logged(gated: GatedReceiver, caplog):
    sender = webhook.Sender(limit=2)
    url = f"{gated.url}/hooks/SECRET-TOKEN"
    assert sender.submit({"key": "a"}, url)
    assert gated.entered.wait(30)  # the sender thread holds "a" in a POST the receiver does not answer
    with caplog.at_level(logging.WARNING, logger="mlgraph.ops.webhook"):
        assert [sender.submit({"key": k}, url) for k in "bcd"] == [True, True, False]
    assert sender.stats()["dropped"] == 1 and "alert d not sent (1 dropped so far)" in caplog.text
    assert "SECRET-TOKEN" not in caplog.text
    assert not sender.flush(0.05)  # still stuck: flush gives up at its bound instead of hanging
    gated.gate.set()
    assert sender.flush(30)
    assert [b["key"] for b in gated.bodies] == ["a", "b", "c"]
    assert sender.stats() == {"queued": 0, "sent": 3, "failed": 0, "dropped": 1, "abandoned": 0}


def test_a_cli_process_sends_its_alert_before_it_exits(shared_drive: Path, receiver: Receiver):
    # A cron-run `mlgraph alerts check` exits right after raising: the sender's queue is flushed at exit.
    code = (
        "from mlgraph.core.drive import DriveLayout\n"
        "from mlgraph.ops import alerts\n"
        f"alerts.raise_alert(DriveLayout.at({str(shared_drive)!r}), alerts.HEARTBEAT_STALE, 'hb', 'down', 'critical')\n"
    )
    env = {**os.environ, WEBHOOK_URL_ENV: f"{receiver.url}/hooks/T"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120, cwd=PROJECT_ROOT)
    assert [b["key"] for b in receiver.bodies] == ["hb"]


def test_open_alerts_list_critical_first(shared_drive: Path):
    drive = DriveLayout.at(shared_drive)
    alerts.raise_alert(drive, alerts.HEARTBEAT_STALE, alerts.HEARTBEAT_STALE, "daemon down", "critical", now=T0)
    alerts.record(
        drive,
        [alerts.signal_rejected_change(f"k{i}", f"file {i}") for i in range(5)],
        now=T0 + timedelta(minutes=1),
    )
    alerts.run_failed(drive, "r" * 32, "training_job", "boom", now=T0 + timedelta(minutes=2))
    found = alerts.read_open_alerts(drive, now=T0 + timedelta(minutes=3))
    assert found[0]["kind"] == alerts.HEARTBEAT_STALE and found[1]["kind"] == alerts.RUN_FAILED
    assert [a["severity"] for a in found] == ["critical"] + ["warning"] * 6


def test_scrub_hides_passwords_with_any_character_and_as_a_parameter(shared_drive: Path):
    drive = DriveLayout.at(shared_drive)
    message = (
        "connect failed: postgresql+psycopg2://mlgraph:pa/ss:w@rd1@db:5432/x and "
        "postgresql://mlgraph@db/x?sslmode=require&password=hunter2 and http://u:sec/ret2@h/p"
    )
    alerts.run_failed(drive, "r" * 32, "training_job", message, now=T0)
    text = drive.alerts_jsonl().read_text()
    for secret in ("pa/ss", "w@rd1", "rd1", "hunter2", "sec/ret2", "ret2"):
        assert secret not in text, secret
    assert "db:5432/x" in text and "sslmode=require" in text


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["fifo", "symlink out of the drive", "fifo lock"])
def test_a_fifo_or_link_at_the_alert_log_is_refused_never_opened(shared_drive: Path, tmp_path: Path, what: str):
    from mlgraph.core.untrusted import Unusable
    from mlgraph.dashboard.alerts import open_alerts

    drive = DriveLayout.at(shared_drive)
    path = drive.alerts_jsonl()
    path.parent.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text('{"key": "planted", "kind": "run_failed", "severity": "critical", "resolved": false}\n')
    if what == "fifo":
        os.mkfifo(path)
    elif what == "fifo lock":
        os.mkfifo(path.with_name(path.name + ".lock"))
    else:
        path.symlink_to(outside)
    # Before: open() blocked for ever on the FIFO (no writer/reader), or followed the link out of the drive.
    with pytest.raises(Unusable) as raised:
        alerts.raise_alert(drive, alerts.DISK_SPACE_LOW, "disk", "low", "critical")
    assert str(path.name) in str(raised.value) and "Fix:" in str(raised.value)
    assert outside.read_text().count("\n") == 1  # nothing appended through the link
    if what != "fifo lock":
        with pytest.raises(Unusable, match="alert log"):
            alerts.read_open_alerts(drive)
        (shown,) = open_alerts(drive)
        assert shown["key"] == "alerts-unreadable" and str(path) in shown["message"]


def _file_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_log_rotates_by_size_keeping_open_alerts_and_cooldowns(shared_drive: Path):
    drive = DriveLayout.at(shared_drive)
    path, previous = drive.alerts_jsonl(), alerts.previous_log(drive.alerts_jsonl())
    limit = 30_000
    heartbeat = alerts.raise_alert(drive, alerts.HEARTBEAT_STALE, "hb", "daemon down", "critical", now=T0)
    alerts.raise_alert(drive, alerts.DISK_SPACE_LOW, "disk", "5% free", "critical", now=T0)
    alerts.resolve_alert(drive, "disk", "resolved: 50% free", now=T0)
    old_event = alerts.run_failed(drive, "o" * 32, "training_job", "boom", now=T0 - timedelta(hours=30))
    written = []
    for i in range(60):  # one failed run an hour, about 60 kB in all: several rotations at 30 kB
        now = T0 + timedelta(hours=i)
        change = alerts.run_failed_change(f"{i:032d}", "training_job", "x" * 600)
        written += alerts.record(drive, [change], now=now, max_bytes=limit)

    assert len(written) == 60 and previous.exists()
    # Before: one file that only grew (60 kB here, for years on a real drive).
    assert path.stat().st_size <= limit and previous.stat().st_size <= limit
    current = _file_lines(path)
    # The open condition is carried verbatim (its first time: the cooldown still counts from it), once.
    assert [line for line in current if line["key"] == "hb"] == [heartbeat]
    # Resolved keys and events past their day (and cooldown) are not carried; recent events are.
    assert not any(line["key"] in ("disk", old_event["key"]) for line in current)
    # Events stay open for a day: the last day's are all carried (and shown), older ones are not.
    open_keys = {a["key"] for a in alerts.read_open_alerts(drive, now=T0 + timedelta(hours=59))}
    assert "hb" in open_keys and {w["key"] for w in written[36:]} <= open_keys
    assert not any(line["key"] == written[0]["key"] for line in current)
    # Every event written is in exactly one place in the new log; none is lost or doubled.
    keys = [line["key"] for line in current]
    assert len(keys) == len(set(keys)) and written[-1] in current

    # Cooldown survives rotation: "hb" is open and fired at T0, so within the hour it stays quiet...
    quiet = alerts.raise_alert(
        drive, alerts.HEARTBEAT_STALE, "hb", "still down", "critical", now=T0 + timedelta(minutes=59)
    )
    assert quiet is None
    # ...and after it, fires again; the disk alert, resolved before rotation, fires at once.
    assert alerts.raise_alert(
        drive, alerts.HEARTBEAT_STALE, "hb", "still down", "critical", now=T0 + timedelta(hours=2)
    )
    assert alerts.raise_alert(drive, alerts.DISK_SPACE_LOW, "disk", "4% free", "critical", now=T0 + timedelta(hours=2))


def test_a_rotation_cut_between_its_renames_loses_no_open_alert(shared_drive: Path):
    drive = DriveLayout.at(shared_drive)
    path, previous = drive.alerts_jsonl(), alerts.previous_log(drive.alerts_jsonl())
    alerts.raise_alert(drive, alerts.HEARTBEAT_STALE, "hb", "daemon down", "critical", now=T0)
    # A writer died after renaming the log to .1 and before renaming its new log into place.
    path.rename(previous)
    staged = path.with_name(path.name + ".rotating")
    staged.write_text('{"key": "half", "partial": true')
    assert [a["key"] for a in alerts.read_open_alerts(drive, now=T0)] == ["hb"]
    assert (
        alerts.raise_alert(drive, alerts.HEARTBEAT_STALE, "hb", "down", "critical", now=T0 + timedelta(minutes=5))
        is None
    )

    alerts.raise_alert(drive, alerts.DISK_SPACE_LOW, "disk", "5% free", "critical", now=T0 + timedelta(minutes=5))
    # The next writer finished the rotation: the open alert carried, then its own line; .1 untouched.
    assert [line["key"] for line in _file_lines(path)] == ["hb", "disk"]
    assert [line["key"] for line in _file_lines(previous)] == ["hb"] and not staged.exists()


def test_a_link_at_the_staging_or_previous_path_is_never_followed(shared_drive: Path, tmp_path: Path):
    drive = DriveLayout.at(shared_drive)
    path = drive.alerts_jsonl()
    alerts.raise_alert(drive, alerts.HEARTBEAT_STALE, "hb", "daemon down " + "x" * 500, "critical", now=T0)
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text("planted\n")
    path.with_name(path.name + ".rotating").symlink_to(outside)
    alerts.previous_log(path).symlink_to(outside)
    alerts.record(drive, [alerts.Raise(alerts.DISK_SPACE_LOW, "disk", "5% free", "critical")], now=T0, max_bytes=600)
    assert outside.read_text() == "planted\n"
    assert not alerts.previous_log(path).is_symlink() and not path.is_symlink()
    assert [line["key"] for line in _file_lines(path)] == ["hb", "disk"]


def _raise_and_resolve(root: str, worker: int) -> list[dict]:
    drive = DriveLayout.at(root)
    written = []
    for i in range(20):
        key = f"own:{worker}:{i}"
        written += alerts.record(drive, [alerts.Raise(alerts.DISK_SPACE_LOW, key, "x" * 1000, "warning")])
        written += alerts.record(drive, [alerts.Resolve(key, "resolved")])
        written += alerts.record(drive, [alerts.Raise(alerts.HEARTBEAT_STALE, "shared", "daemon down", "critical")])
    return written


@pytest.mark.timeout(120)
def test_concurrent_writers_rotate_once_without_losing_doubling_or_hiding_an_alert(shared_drive: Path, monkeypatch):
    # 4 workers x 20 raised (1.1 kB) and resolved (0.2 kB) lines: about 100 kB, so one rotation at 60 kB
    # (only "shared" is open, so carried).
    monkeypatch.setenv(alerts.LOG_MAX_BYTES_ENV, "60000")
    drive = DriveLayout.at(shared_drive)
    path, previous = drive.alerts_jsonl(), alerts.previous_log(drive.alerts_jsonl())
    alerts.raise_alert(drive, alerts.HEARTBEAT_STALE, "shared", "daemon down", "critical")
    done = threading.Event()
    reads = []

    def reader():  # no lock, as the dashboard reads: "shared" must be open in every read
        while not done.is_set():
            reads.append("shared" in {a["key"] for a in alerts.read_open_alerts(drive)})

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        with ProcessPoolExecutor(4) as pool:
            written = [
                line for lines_ in pool.map(_raise_and_resolve, [str(shared_drive)] * 4, range(4)) for line in lines_
            ]
    finally:
        done.set()
        thread.join()

    assert reads and all(reads)
    assert len(written) == 4 * 20 * 2 and previous.exists()  # "shared" never fired again
    old, new = _file_lines(previous), _file_lines(path)
    assert old[0]["key"] == "shared" and [line for line in new if line["key"] == "shared"] == [old[0]]
    # The new log starts with the carried lines: the latest line of each key open when it rotated ("shared",
    # and at most one raised-not-yet-resolved key per worker), verbatim.
    latest_old = {line["key"]: line for line in old}
    carried = [line for line in new if line in old]
    assert new[: len(carried)] == carried and 1 <= len(carried) <= 5
    assert all(latest_old[line["key"]] == line and not line["resolved"] for line in carried)
    assert {line["key"] for line in carried} == {k for k, line in latest_old.items() if not line["resolved"]}

    def as_sorted(records):
        return sorted(json.dumps(r, sort_keys=True) for r in records)

    # Every line written is in exactly one of the two files, the carried copies aside.
    assert as_sorted(old[1:] + new[len(carried) :]) == as_sorted(written)
