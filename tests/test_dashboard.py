"""The dashboard's parts without a browser: status colours and Slurm state names, escaping, open alerts,
the Slurm poller against the real local cluster (and a broken squeue path), the poll floor, the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mlgraph.core.drive import DriveLayout
from mlgraph.dashboard import render
from mlgraph.dashboard.alerts import open_alerts
from mlgraph.dashboard.settings import PASSWORD_ENV, USERNAME_ENV, DashboardSettings
from mlgraph.dashboard.slurm_poller import MIN_POLL_SECONDS, SlurmPoller
from mlgraph.dashboard.state import RunRow, classify
from tests.support import dagster_instance
from tests.support.slurm.harness import require_slurm


@pytest.mark.parametrize(
    ("state", "words"),
    [
        ("CANCELLED", "cancelled"),
        ("TIMEOUT", "time limit reached"),
        ("OUT_OF_MEMORY", "out of memory"),
        ("NODE_FAIL", "node failure"),
        ("FAILED", "FAILED"),
    ],
)
def test_a_failed_slurm_job_is_red_and_named_even_before_dagster_notices(state, words):
    colour, label = classify("STARTED", state)
    assert colour == "failed" and state in label and words in label


@pytest.mark.parametrize(
    ("dagster", "slurm", "colour"),
    [
        ("SUCCESS", "COMPLETED", "complete"),
        ("SUCCESS", None, "complete"),
        ("STARTED", "RUNNING", "running"),
        ("STARTING", "PENDING", "running"),
        ("QUEUED", None, "running"),
        ("FAILURE", None, "failed"),
        ("CANCELED", "CANCELLED", "failed"),
        ("FAILURE", "COMPLETED", "failed"),
    ],
)
def test_colour_follows_dagster_for_finished_runs_and_slurm_for_the_rest(dagster, slurm, colour):
    assert classify(dagster, slurm)[0] == colour


def _row(**overrides) -> RunRow:
    values = {
        "run_id": "0f0f0f0f-0000-4000-8000-000000000001",
        "job_name": "checkpoint_evaluation_job",
        "kind": "evaluation",
        "experiment": "salary",
        "status": "failed",
        "label": "FAILURE",
        "dagster_status": "FAILURE",
        "slurm_job_id": "12",
        "slurm_state": "FAILED",
        "reason": None,
        "submitted": None,
        "started": None,
        "elapsed": None,
        "time_limit": None,
        "mlflow_run_id": None,
        "log_path": None,
        "created": 0.0,
    }
    return RunRow(**{**values, **overrides})


def test_every_value_is_escaped_in_text_and_in_attributes(tmp_path):
    settings = DashboardSettings(drive_root=tmp_path, mlflow_url="http://m/")
    html = render.run_row(
        _row(
            experiment="<script>alert(1)</script>",
            reason='"><img src=x onerror=alert(1)>',
            mlflow_run_id='x"onmouseover="alert(1)',
            log_path="/x.log",
        ),
        settings,
    )
    assert "<script>" not in html and "<img" not in html and 'x"onmouseover' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="http://m/#/runs/x%22onmouseover%3D%22alert%281%29"' in html


def test_open_alerts_are_those_whose_latest_line_is_not_resolved(tmp_path):
    drive = DriveLayout(tmp_path)
    path = drive.alerts_jsonl()
    path.parent.mkdir(parents=True)
    now = datetime.now(UTC)
    stamp = [(now - timedelta(minutes=m)).isoformat() for m in (3, 2, 1)]
    lines = [
        {
            "time": stamp[0],
            "kind": "slurm_failures",
            "key": "a",
            "message": "3 failures",
            "severity": "critical",
            "experiment": "salary",
            "resolved": False,
        },
        {
            "time": stamp[1],
            "kind": "queue_depth",
            "key": "b",
            "message": "60 jobs",
            "severity": "warning",
            "resolved": False,
        },
        {"time": stamp[2], "kind": "queue_depth", "key": "b", "message": "ok", "severity": "warning", "resolved": True},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"torn": ')
    alerts = open_alerts(drive)
    assert [a["key"] for a in alerts] == ["a"] and alerts[0]["message"] == "3 failures"
    assert open_alerts(DriveLayout(tmp_path / "empty")) == []


def test_the_poll_interval_has_a_floor_whatever_is_asked():
    assert SlurmPoller(0.01).interval == MIN_POLL_SECONDS == 10.0
    assert SlurmPoller(45).interval == 45.0


def test_a_missing_squeue_makes_slurm_unavailable_not_an_exception(tmp_path):
    poller = SlurmPoller(bin_dir=str(tmp_path / "no-such-dir"))
    snapshot = poller.poll()
    assert not snapshot.available and "squeue" in snapshot.error and "not found" in snapshot.error
    assert poller.polls == 1


@pytest.mark.slurm
def test_the_poller_reads_the_real_queue_and_follows_new_completion_records(tmp_path):
    require_slurm()
    jobcomp = tmp_path / "jobcomp.txt"
    record = (
        "JobId={id} UserId=u(1) GroupId=g(1) Name=n JobState={state} Partition=debug TimeLimit=7 "
        "StartTime=2026-11-30T16:00:20 EndTime=2026-11-30T16:00:22 NodeList=vm ProcCnt=1 "
        "SubmitTime=2026-11-30T16:00:19 ExitCode=0:9\n"
    )
    jobcomp.write_text(record.format(id=990001, state="TIMEOUT"))
    poller = SlurmPoller(jobcomp_file=str(jobcomp))
    snapshot = poller.poll()
    assert snapshot.available, snapshot.error
    assert snapshot.job("990001").state == "TIMEOUT"
    assert snapshot.job("990001").raw["SubmitTime"] == "2026-11-30T16:00:19"
    with jobcomp.open("a") as fh:
        fh.write(record.format(id=990002, state="NODE_FAIL"))
        fh.write("JobId=990003 JobState=COMPL")  # still being written: read on a later poll
    snapshot = poller.poll()
    assert snapshot.job("990002").state == "NODE_FAIL" and snapshot.job("990003") is None


def test_cli_refuses_a_username_without_a_password(tmp_path):
    env = {"PATH": "/usr/bin:/bin", USERNAME_ENV: "ops", "DAGSTER_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "mlgraph.cli.main", "dashboard", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[1],
    )
    assert proc.returncode == 2 and PASSWORD_ENV in proc.stderr


def test_run_records_follow_updates_incrementally_and_drop_deleted_runs_on_a_full_read():
    import dagster as dg

    from mlgraph.dashboard.app import RunRecords
    from tests.test_dashboard_browser import evaluation_job as job

    with dagster_instance() as instance:
        runs = [instance.create_run_for_job(job, tags={"mlgraph/experiment": f"e{i}"}) for i in range(3)]
        source = RunRecords(instance, limit=2, full_seconds=3600)
        first = source.read()
        assert [r.dagster_run.run_id for r in first] == [runs[2].run_id, runs[1].run_id]
        instance.report_run_failed(runs[1], "slurm job FAILED")
        newer = instance.create_run_for_job(job)
        again = source.read()
        assert [r.dagster_run.run_id for r in again] == [newer.run_id, runs[2].run_id]
        instance.report_run_failed(runs[2], "slurm job TIMEOUT")
        assert source.read()[1].dagster_run.status == dg.DagsterRunStatus.FAILURE
        instance.delete_run(newer.run_id)
        source.full_seconds = 0
        assert [r.dagster_run.run_id for r in source.read()] == [runs[2].run_id, runs[1].run_id]


def test_error_answers_come_from_the_shared_error_kinds_as_plain_text(tmp_path):
    import httpx

    from mlgraph.core.http_errors import BAD_REQUEST, FORBIDDEN, NOT_FOUND, UNAUTHORIZED
    from mlgraph.core.tags import SLURM_LOG_TAG
    from mlgraph.dashboard.app import create_app
    from tests.test_dashboard_browser import evaluation_job as job

    logs = DriveLayout(tmp_path).logs_root() / "evaluation"
    logs.mkdir(parents=True)
    (logs / "7.log").write_text("evaluated\n")
    settings = DashboardSettings(drive_root=tmp_path, slurm_bin_dir=str(tmp_path / "no-slurm"), credentials=("u", "p"))
    with dagster_instance() as instance:
        run = {
            name: instance.create_run_for_job(job, tags={SLURM_LOG_TAG: str(path)}).run_id
            for name, path in (("inside", logs / "7.log"), ("outside", tmp_path / "x.log"), ("gone", logs / "8.log"))
        }

        async def calls() -> dict[str, httpx.Response]:
            transport = httpx.ASGITransport(app=create_app(settings, instance), raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                answers = {"denied": await client.get("/")}
                client.auth = ("u", "p")
                answers["bad"] = await client.get("/fragment", params={"status": "<x>"})
                answers["malformed"] = await client.get("/logs/not-a-run-id")
                for name, run_id in run.items():
                    answers[name] = await client.get(f"/logs/{run_id}")
                return answers

        answers = asyncio.run(calls())
    denied, bad = answers["denied"], answers["bad"]
    assert denied.status_code == UNAUTHORIZED.status and denied.text == "authentication required\n"
    assert "WWW-Authenticate" in denied.headers and denied.headers["X-Content-Type-Options"] == "nosniff"
    assert bad.status_code == BAD_REQUEST.status and bad.text.startswith("status must be one of")
    assert "<x>" not in bad.text and bad.headers["content-type"].startswith("text/plain")
    assert answers["inside"].status_code == 200 and answers["inside"].text == "evaluated\n"
    assert answers["outside"].status_code == FORBIDDEN.status and "outside the drive's logs" in answers["outside"].text
    assert answers["gone"].status_code == NOT_FOUND.status and "No such file" in answers["gone"].text
    assert answers["malformed"].status_code == NOT_FOUND.status and answers["malformed"].text == "no such run\n"


def test_a_flood_of_warnings_never_pushes_an_open_critical_alert_off_the_page(tmp_path):
    from mlgraph.dashboard.slurm_poller import SlurmSnapshot
    from mlgraph.dashboard.state import SignalCache, collect
    from mlgraph.ops import alerts

    drive = DriveLayout(tmp_path)
    start = datetime.now(UTC) - timedelta(hours=1)
    alerts.raise_alert(drive, alerts.HEARTBEAT_STALE, alerts.HEARTBEAT_STALE, "daemon down", "critical", now=start)
    # 250 rejected signals after it, each newer than the daemon-down alert.
    alerts.record(
        drive,
        [alerts.signal_rejected_change(f"k{i}", f"models/e{i}/.training_complete: bad") for i in range(250)],
        now=start + timedelta(minutes=5),
    )
    shown = open_alerts(drive)
    assert shown[0]["kind"] == alerts.HEARTBEAT_STALE and shown[0]["severity"] == "critical"
    assert len(shown) == 201 and shown[-1]["hidden"] == 51 and "mlgraph alerts list" in shown[-1]["message"]
    html = render._alerts(collect([], SlurmSnapshot(), drive, SignalCache(), shown))
    assert "Open alerts (251)" in html and "daemon down" in html and "51 more open warning(s)" in html
    # Every open critical alert is listed, however many there are.
    alerts.record(
        drive,
        [alerts.Raise(alerts.CONSECUTIVE_FAILURES, f"cf:{i}", f"e{i} failed 3 times", "critical") for i in range(210)],
    )
    shown = open_alerts(drive)
    assert sum(a["severity"] == "critical" for a in shown if a["kind"] != "dashboard") == 211
    assert shown[-1]["hidden"] == 250
