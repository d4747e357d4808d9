"""The dashboard's parts without a browser: status colours and Slurm state names, escaping, open alerts,
the Slurm poller against the real local cluster (and a broken squeue path), the poll floor, the CLI."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path

import httpx
import pytest

from mlgraph.core.drive import DriveLayout
from mlgraph.dashboard import render
from mlgraph.dashboard.alerts import open_alerts
from mlgraph.dashboard.settings import PASSWORD_ENV, USERNAME_ENV, DashboardSettings
from mlgraph.dashboard.slurm_poller import MIN_POLL_SECONDS, SlurmPoller
from mlgraph.dashboard.state import RunRow, classify
from tests.support import dagster_instance, wait_for
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


# --- Paging and gzip over real HTTP, 5,000 runs ------------------------------------------------------------------

_MANY = 5000
_RUNS_TABLE = re.compile(r'<table id="runs">(.*?)</table>', re.S)
_FAILED_TABLE = re.compile(r'<table id="failed-runs">(.*?)</table>', re.S)
_RUN_IDS = re.compile(r'data-run-id="([0-9a-f-]{36})"')
_OLDER = re.compile(r'<a class="page-older" href="([^"]*)"')


def _ids(pattern: re.Pattern, html: str) -> list[str]:
    table = pattern.search(html)
    return _RUN_IDS.findall(table.group(1)) if table else []


def _older_href(html: str) -> str | None:
    found = _OLDER.search(html)
    return unescape(found.group(1)) if found else None


@pytest.fixture(scope="module")
def many_runs(tmp_path_factory):
    """A real uvicorn serving the dashboard over an instance of 5,000 runs (added directly, as the benchmark does):
    a fixed share failed, one asset materialization and one data_job run; one critical alert under 250 warnings.
    Slurm is a real poller pointed at a directory without squeue."""
    import dagster as dg
    import uvicorn
    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
    from dagster._core.utils import make_new_run_id

    from mlgraph.core.tags import DAGSTER_PARTITION_TAG, SLURM_JOB_ID_TAG, TAG_EXPERIMENT
    from mlgraph.dashboard.app import create_app
    from mlgraph.ops import alerts

    tmp = tmp_path_factory.mktemp("many")
    drive = DriveLayout(tmp / "drive")
    alerts.raise_alert(drive, alerts.HEARTBEAT_STALE, alerts.HEARTBEAT_STALE, "daemon down", "critical")
    alerts.record(
        drive, [alerts.signal_rejected_change(f"k{i}", f"models/e{i}/.training_complete: bad") for i in range(250)]
    )
    created: list[dict] = []  # oldest first
    with dagster_instance() as instance:
        for i in range(_MANY):
            experiment = f"exp{i % 40:02d}"
            failed = i % 33 == 5
            job_name, selection, tags = ("checkpoint_evaluation_job", None, {TAG_EXPERIMENT: experiment})
            if i == _MANY - 7:  # a plain "materialize these assets" run
                job_name = "__ASSET_JOB"
                selection = frozenset({dg.AssetKey("trained_models"), dg.AssetKey(["features", "batch"])})
                tags = {DAGSTER_PARTITION_TAG: experiment}
            elif i == _MANY - 8:
                job_name, tags = "data_job", {DAGSTER_PARTITION_TAG: experiment}
            run = DagsterRun(
                job_name=job_name,
                run_id=make_new_run_id(),
                status=DagsterRunStatus.FAILURE if failed else DagsterRunStatus.SUCCESS,
                asset_selection=selection,
                tags={**tags, SLURM_JOB_ID_TAG: str(700000 + i)},
            )
            instance.add_run(run)
            created.append({"id": run.run_id, "experiment": experiment, "failed": failed, "job": job_name})
        settings = DashboardSettings(drive_root=drive.root_path, slurm_bin_dir=str(tmp / "no-slurm"))
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings, instance), host="127.0.0.1", port=0, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            wait_for(lambda: server.started or not thread.is_alive(), 60, "uvicorn to start")
            assert server.started, "uvicorn did not start"
            port = server.servers[0].sockets[0].getsockname()[1]
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                yield {"client": client, "newest_first": created[::-1]}
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def test_the_page_holds_one_page_of_runs_newest_first_and_links_walk_every_run(many_runs):
    client, newest_first = many_runs["client"], many_runs["newest_first"]
    first = client.get("/", headers={"Accept-Encoding": "identity"})
    assert first.status_code == 200 and "content-encoding" not in first.headers
    assert _ids(_RUNS_TABLE, first.text) == [r["id"] for r in newest_first[:100]]
    assert "runs 1–100 of 5,000 matching" in first.text and "page 1 of 50" in first.text
    assert 'class="page-newer"' not in first.text and _older_href(first.text) == "?page=2"
    assert len(first.content) < 300_000, len(first.content)  # was 4.2 MB with every run on the page

    # Follow "older" links, 500 a page: every run exactly once, newest first; "newer" leads back.
    seen, href = [], "?per_page=500"
    while href:
        html = client.get("/" + href).text
        seen += _ids(_RUNS_TABLE, html)
        href = _older_href(html)
    assert seen == [r["id"] for r in newest_first]
    assert 'class="page-newer" href="?page=9&amp;per_page=500"' in html and "page 10 of 10" in html
    # The live fragment pages the same way.
    fragment = client.get("/fragment", params={"page": "2"}).text
    assert _ids(_RUNS_TABLE, fragment) == [r["id"] for r in newest_first[100:200]]
    past = client.get("/", params={"page": "51"})
    assert past.status_code == 200 and "page 51 is past the last page" in past.text and "?page=50" in past.text


def test_the_page_is_gzip_compressed_when_the_client_accepts_it(many_runs):
    import gzip

    client = many_runs["client"]
    plain = client.get("/", headers={"Accept-Encoding": "identity"}).content
    with client.stream("GET", "/", headers={"Accept-Encoding": "gzip"}) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip" and "Accept-Encoding" in response.headers["vary"]
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    page = gzip.decompress(raw)
    assert page.startswith(b"<!doctype html>") and abs(len(page) - len(plain)) < 200  # only the clock differs
    assert len(raw) * 5 < len(plain), (len(raw), len(plain))


def test_filters_are_kept_in_the_paging_links(many_runs):
    client, newest_first = many_runs["client"], many_runs["newest_first"]
    wanted = [r["id"] for r in newest_first if r["experiment"] == "exp05" and r["failed"]]
    assert len(wanted) > 3
    seen, href, hrefs = [], "?experiment=exp05&status=failed&per_page=3", []
    while href:
        html = client.get("/" + href).text
        seen += _ids(_RUNS_TABLE, html)
        href = _older_href(html)
        hrefs.append(href)
    assert seen == wanted
    assert hrefs[0] == "?experiment=exp05&status=failed&page=2&per_page=3"
    # The form keeps the page size: a new filter starts again at page 1 with it.
    assert '<input type="hidden" name="per_page" value="3">' in html


def test_the_first_page_still_holds_failed_runs_and_open_alerts(many_runs):
    client, newest_first = many_runs["client"], many_runs["newest_first"]
    failed = [r["id"] for r in newest_first if r["failed"]]
    html = client.get("/").text
    on_page, older = _ids(_RUNS_TABLE, html), _ids(_FAILED_TABLE, html)
    k = len(set(on_page) & set(failed))
    # The newest failed runs are in the page's table, the next 100 under it, and a link leads to the rest.
    assert k >= 1 and [i for i in on_page if i in set(failed)] == failed[:k] and older == failed[k : k + 100]
    rest = len(failed) - k - 100
    assert rest > 0 and f"Older failed runs ({len(failed) - k})" in html
    assert f"{rest} older failed run(s) not listed here" in html and 'href="?status=failed"' in html
    assert "Open alerts (251)" in html and "daemon down" in html and "51 more open warning(s)" in html
    # Later pages do not repeat the older failed runs; a status filter shows exactly what it asks for.
    assert _FAILED_TABLE.search(client.get("/", params={"page": "2"}).text) is None
    assert _FAILED_TABLE.search(client.get("/", params={"status": "complete"}).text) is None


def test_every_run_says_what_it_ran(many_runs):
    client, newest_first = many_runs["client"], many_runs["newest_first"]
    html = client.get("/", params={"per_page": "10"}).text
    rows = {m.group(1): m.group(2) for m in re.finditer(r'data-run-id="([^"]+)">(.*?)</tr>', html, re.S)}
    materialize = next(r["id"] for r in newest_first if r["job"] == "__ASSET_JOB")
    data = next(r["id"] for r in newest_first if r["job"] == "data_job")
    assert "assets: features/batch, trained_models" in rows[materialize] and "partition exp33" in rows[materialize]
    assert "__ASSET_JOB" not in rows[materialize]
    assert '<code class="job-name">data_job</code>' in rows[data] and "partition exp32" in rows[data]
    assert '<span class="kind">evaluation</span> <code class="job-name">checkpoint_evaluation_job</code>' in html
    assert ">other<" not in html and html.count("assets:") == 1  # a whole job's run lists no assets


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"page": "0"}, "page must be a whole number from 1 to 1,000,000"),
        ({"page": "-2"}, "page must be a whole number"),
        ({"page": "two"}, "page must be a whole number"),
        ({"page": "1.5"}, "page must be a whole number"),
        ({"page": "99999999999999999999"}, "page must be a whole number"),
        ({"page": "\u0663"}, "page must be a whole number"),  # an Arabic-Indic 3: int() takes it, the page does not
        ({"per_page": "0"}, "per_page must be a whole number from 1 to 500"),
        ({"per_page": "501"}, "per_page must be a whole number from 1 to 500"),
        ({"per_page": "<b>"}, "per_page must be a whole number"),
    ],
)
def test_bad_page_parameters_are_answered_400_saying_what_is_wrong(many_runs, params, says):
    for path in ("/", "/fragment"):
        answer = many_runs["client"].get(path, params=params)
        assert answer.status_code == 400 and answer.text.startswith(says), (path, answer.text)
        assert answer.headers["content-type"].startswith("text/plain") and "<b>" not in answer.text


def test_what_ran_names_the_job_the_first_assets_and_the_partition_range():
    import dagster as dg
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster._core.utils import make_new_run_id

    from mlgraph.dashboard.slurm_poller import SlurmSnapshot
    from mlgraph.dashboard.state import MAX_ASSETS, build_row

    keys = frozenset(dg.AssetKey(f"a{i:02d}") for i in range(60))
    range_tags = {
        "dagster/asset_partition_range_start": "2026-01-01",
        "dagster/asset_partition_range_end": "2026-01-31",
    }
    with dagster_instance() as instance:
        for name, selection, tags in (
            ("__anonymous_asset_job_1", keys, range_tags),
            ("some_op_job", frozenset(), {}),  # an op job: an empty selection, not "assets: "
        ):
            instance.add_run(DagsterRun(job_name=name, run_id=make_new_run_id(), asset_selection=selection, tags=tags))
        ops, wide = (build_row(r, SlurmSnapshot(), 0.0) for r in instance.get_run_records())  # newest first
    html = render.what_ran(wide)
    assert wide.kind == "" and wide.assets_total == 60 and len(wide.assets) == MAX_ASSETS
    assert "assets: a00, a01, a02 +57 more" in html and "partition 2026-01-01…2026-01-31" in html
    assert "a49 …" in html and "anonymous" not in html
    assert ops.assets is None and render.what_ran(ops) == '<code class="job-name">some_op_job</code>'
