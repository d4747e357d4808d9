"""The dashboard in a real headless Chromium, served by `mlgraph dashboard` (real uvicorn), reading a real
Dagster instance and the real local Slurm cluster.

The instance holds a completed chain (training signal → evaluation → analysis, both on real Slurm jobs
that completed), an evaluation whose Slurm job is running, one whose job failed, and a queued analysis.
A second server points its poller at a directory without squeue (a real failure) and requires basic auth.
Needs /usr/bin/chromium and /usr/bin/chromedriver (`scripts/browser-local` installs them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import httpx
import pytest
from dagster._core.events import DagsterEventType

from mlgraph.core.drive import PROJECT_ROOT, DriveLayout
from mlgraph.core.signals import TrainingComplete
from mlgraph.core.tags import (
    DAGSTER_PARTITION_TAG,
    SLURM_JOB_ID_TAG,
    SLURM_LOG_TAG,
    TAG_EXPERIMENT,
    TAG_MLFLOW_RUN_ID,
    slurm_tags,
)
from mlgraph.ops.alerts import CONSECUTIVE_FAILURES, raise_alert
from tests.support import dagster_instance, wait_for
from tests.support.browser import headless_chromium, require_chromium
from tests.support.serving import free_port
from tests.support.slurm.harness import require_slurm, squeue_state

REFRESH_SECONDS = 1
DAGSTER_URL, MLFLOW_URL = "http://dagster.test:3000", "http://mlflow.test:5000"
AUTH = ("ops", "s3cret-for-this-test")
pytestmark = [pytest.mark.timeout(240), pytest.mark.browser, pytest.mark.slurm]
# Headless Chromium is always "visible": the page is told otherwise, as a hidden tab would be.
VISIBILITY_JS = """Object.defineProperty(document, 'visibilityState', {value: arguments[0], configurable: true});
document.dispatchEvent(new Event('visibilitychange'));"""


@dg.op
def _step():
    return None


# Stand-ins named like the pipeline's jobs: the dashboard reads names, tags and statuses, not asset graphs.
@dg.job(name="checkpoint_evaluation_job")
def evaluation_job():
    _step()


@dg.job(name="checkpoint_comparison_report_job")
def analysis_job():
    _step()


def _sbatch(log: Path, command: str, name: str) -> str:
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--job-name={name}",
            "--time=5",
            "--mem=100M",
            f"--output={log}",
            f"--wrap={command}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip().split(";")[0]


def _event(instance: dg.DagsterInstance, run: dg.DagsterRun, kind: DagsterEventType) -> None:
    instance.report_dagster_event(dg.DagsterEvent(event_type_value=kind.value, job_name=run.job_name), run.run_id)


def _tags(experiment: str, kind: str, job_id: str, log: Path, **extra: str) -> dict[str, str]:
    return {
        **slurm_tags(kind=kind),
        TAG_EXPERIMENT: experiment,
        DAGSTER_PARTITION_TAG: experiment,
        SLURM_JOB_ID_TAG: job_id,
        SLURM_LOG_TAG: str(log),
        **extra,
    }


def _serve(port: int, home: Path, drive: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    args = [
        str(Path(sys.executable).parent / "mlgraph"),
        "dashboard",
        "--port",
        str(port),
        "--drive",
        str(drive),
        "--refresh-seconds",
        str(REFRESH_SECONDS),
        "--slurm-poll-seconds",
        "1",
        "--dagster-url",
        DAGSTER_URL,
        "--mlflow-url",
        MLFLOW_URL,
        *extra,
    ]
    environment = {**os.environ, "DAGSTER_HOME": str(home), **(env or {})}
    # The checkout under test, whatever directory the venv's editable install of mlgraph points at.
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    for name in ("MLGRAPH_DASHBOARD_USERNAME", "MLGRAPH_DASHBOARD_PASSWORD"):
        if not env or name not in env:
            environment.pop(name, None)
    return subprocess.Popen(
        args, env=environment, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_polled(proc: subprocess.Popen, url: str, auth=None) -> dict:
    def polled():
        if proc.poll() is not None:
            raise AssertionError(f"dashboard exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            status = httpx.get(f"{url}/api/status", auth=auth, timeout=5).json()
        except httpx.HTTPError:
            return None
        return status if status["slurm_polled_at"] else None

    return wait_for(polled, 60, f"the dashboard at {url} to poll Slurm once")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Instance + drive + real Slurm jobs + two dashboard servers; everything stopped in finally."""
    require_slurm()
    require_chromium()
    tmp = tmp_path_factory.mktemp("dashboard")
    drive, home = tmp / "drive", tmp / "dagster_home"
    layout = DriveLayout(drive)
    logs = layout.logs_root() / "evaluation"
    logs.mkdir(parents=True)
    jobs: list[str] = []
    servers: list[subprocess.Popen] = []
    with dagster_instance(home) as instance:
        try:
            done_eval = _sbatch(logs / "%j.log", "echo evaluated", "mlgraph-dash-eval")
            done_analysis = _sbatch(logs / "%j.log", "echo analysed", "mlgraph-dash-analysis")
            running = _sbatch(logs / "%j.log", "echo dashboard-test-running; sleep 300", "mlgraph-dash-running")
            failed = _sbatch(logs / "%j.log", "echo failing; exit 1", "mlgraph-dash-failed")
            jobs += [done_eval, done_analysis, running, failed]
            wait_for(lambda: squeue_state(running) == "RUNNING", 60, f"job {running} to run")
            for job_id, state in ((failed, "FAILED"), (done_eval, "COMPLETED"), (done_analysis, "COMPLETED")):
                wait_for(
                    lambda job_id=job_id, state=state: squeue_state(job_id) in (state, None),
                    60,
                    f"job {job_id} to end {state}",
                )

            checkpoint = layout.models_dir("salary") / "checkpoints" / "ckpt-7"
            checkpoint.mkdir(parents=True)
            layout.training_complete_signal("salary").write_text(
                TrainingComplete(
                    timestamp=datetime(2026, 11, 30, 9, tzinfo=UTC),
                    experiment="salary",
                    checkpoint_path=str(checkpoint),
                    hostname="wild-west",
                    user="trainer",
                    mlflow_run_id="a" * 32,
                ).to_json()
            )

            # An open alert as the alerting module writes it (logs/alerts.jsonl on the drive).
            raise_alert(
                layout,
                CONSECUTIVE_FAILURES,
                "dashboard-test",
                "3 evaluation jobs failed in a row",
                "critical",
                experiment="demand_forecast",
            )
            runs = {}
            runs["eval"] = evaluation_job.execute_in_process(
                instance=instance,
                tags=_tags(
                    "salary", "evaluation", done_eval, logs / f"{done_eval}.log", **{TAG_MLFLOW_RUN_ID: "b" * 32}
                ),
            ).run_id
            runs["analysis"] = analysis_job.execute_in_process(
                instance=instance, tags=_tags("salary", "analysis", done_analysis, logs / f"{done_analysis}.log")
            ).run_id
            run = instance.create_run_for_job(
                evaluation_job, tags=_tags("student_engagement", "evaluation", running, logs / f"{running}.log")
            )
            _event(instance, run, DagsterEventType.RUN_START)
            runs["running"] = run.run_id
            run = instance.create_run_for_job(
                evaluation_job, tags=_tags("demand_forecast", "evaluation", failed, logs / f"{failed}.log")
            )
            _event(instance, run, DagsterEventType.RUN_START)
            instance.report_run_failed(run, f"Slurm job {failed} FAILED")
            runs["failed"] = run.run_id
            # NOT_STARTED: a QUEUED run needs a code location origin, which a bare test instance has not.
            queued = instance.create_run_for_job(analysis_job, tags={TAG_EXPERIMENT: "student_engagement"})
            runs["queued"] = queued.run_id

            port, broken_port = free_port(), free_port()
            servers.append(_serve(port, home, drive))
            servers.append(
                _serve(
                    broken_port,
                    home,
                    drive,
                    "--slurm-bin-dir",
                    str(tmp / "no-such-bin"),
                    env={"MLGRAPH_DASHBOARD_USERNAME": AUTH[0], "MLGRAPH_DASHBOARD_PASSWORD": AUTH[1]},
                )
            )
            url, broken_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{broken_port}"
            started = time.monotonic()
            _wait_polled(servers[0], url)
            _wait_polled(servers[1], broken_url, auth=AUTH)
            yield {
                "url": url,
                "broken_url": broken_url,
                "instance": instance,
                "runs": runs,
                "queued": queued,
                "jobs": {"eval": done_eval, "running": running, "failed": failed},
                "started": started,
                "tmp": tmp,
            }
        finally:
            for proc in servers:
                _stop(proc)
            for job_id in jobs:
                subprocess.run(["scancel", job_id], capture_output=True, timeout=30, check=False)


@pytest.fixture
def browser():
    with headless_chromium("1600,1000", page_load_timeout=30) as driver:
        yield driver


def _wait(driver, condition, what: str, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message=what)


# Read the rows in one script run: the page swaps its tables every second, so element handles go stale.
_ROWS_JS = """
return Array.from(document.querySelectorAll('#runs tr.run')).map(function (tr) {
  var badge = tr.querySelector('.badge');
  var href = function (sel) { var a = tr.querySelector(sel); return a ? a.href : null; };
  return {id: tr.dataset.runId, classes: tr.className.split(' '), text: tr.innerText,
          state: tr.querySelector('.slurm-state').innerText, badge: getComputedStyle(badge).backgroundColor,
          dagster: href('a.dagster-link'), mlflow: href('a.mlflow-link'), log: href('a.log-link')};
});"""


def _rows(driver) -> dict[str, dict]:
    return {row["id"]: row for row in driver.execute_script(_ROWS_JS)}


def _visible_run_ids(driver) -> list[str]:
    return list(_rows(driver))


def _refreshes(driver) -> int:
    return int(driver.execute_script("return document.body.dataset.refreshes || '0';"))


def _save_screenshot(driver, name: str) -> Path:
    targets = [PROJECT_ROOT / "test-artifacts" / name]
    if os.environ.get("MLGRAPH_ARTIFACTS_DIR"):
        targets.insert(0, Path(os.environ["MLGRAPH_ARTIFACTS_DIR"]) / name)
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(target))
        print(f"dashboard screenshot: {target}")
    return targets[0]


def test_a_person_sees_the_chain_colours_states_links_and_filters(world, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    runs, jobs = world["runs"], world["jobs"]
    browser.get(world["url"] + "/")
    _wait(browser, lambda d: len(_visible_run_ids(d)) == 5, "five run rows")
    rows = _rows(browser)

    expected = {
        "eval": ("status-complete", "COMPLETED"),
        "analysis": ("status-complete", "COMPLETED"),
        "running": ("status-running", "RUNNING"),
        "failed": ("status-failed", "FAILED"),
        "queued": ("status-running", ""),
    }
    for key, (css, state) in expected.items():
        row = rows[runs[key]]
        assert css in row["classes"] and row["state"] == state, (key, row)
    failed = rows[runs["failed"]]
    assert "FAILURE" in failed["text"] and jobs["failed"] in failed["text"]
    # A failed badge is red, a running one amber, as rendered (computed style, not just the class).
    assert failed["badge"] == "rgb(252, 165, 165)", failed["badge"]
    assert rows[runs["running"]]["badge"] == "rgb(253, 230, 138)"
    assert rows[runs["eval"]]["badge"] == "rgb(167, 243, 181)"

    assert rows[runs["eval"]]["dagster"] == f"{DAGSTER_URL}/runs/{runs['eval']}"
    assert rows[runs["eval"]]["mlflow"] == f"{MLFLOW_URL}/#/runs/{'b' * 32}"
    log_href = rows[runs["running"]]["log"]
    assert log_href == f"{world['url']}/logs/{runs['running']}"
    assert "dashboard-test-running" in httpx.get(log_href, timeout=10).text

    salary = browser.execute_script("""var tr = document.querySelector('tr.experiment[data-experiment="salary"]');
        return {text: tr.innerText, complete: tr.querySelectorAll('.badge.status-complete').length};""")
    assert "trainer@wild-west" in salary["text"] and "ckpt-7" in salary["text"] and salary["complete"] == 2
    assert "Slurm:" in browser.execute_script("return document.getElementById('slurm-status').innerText;")
    alert = browser.execute_script("return document.querySelector('#alerts li.alert.severity-critical').innerText;")
    assert "3 evaluation jobs failed in a row" in alert and "demand_forecast" in alert
    _save_screenshot(browser, "dashboard.png")

    Select(browser.find_element(By.ID, "status-filter")).select_by_value("failed")
    _wait(browser, lambda d: _visible_run_ids(d) == [runs["failed"]], "only the failed run after filtering")
    assert "status=failed" in browser.current_url
    Select(browser.find_element(By.ID, "status-filter")).select_by_value("")
    _wait(browser, lambda d: len(_visible_run_ids(d)) == 5, "all runs again")
    search = browser.find_element(By.ID, "experiment-filter")
    search.send_keys("demand")
    _wait(browser, lambda d: _visible_run_ids(d) == [runs["failed"]], "the demand_forecast run after searching")
    search.clear()
    _wait(browser, lambda d: len(_visible_run_ids(d)) == 5, "all runs after clearing the search")


def test_pages_keep_their_place_on_refresh_and_filters_start_again_at_page_one(world, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    runs = world["runs"]
    newest_first = [runs[k] for k in ("queued", "failed", "running", "analysis", "eval")]
    browser.get(world["url"] + "/?per_page=2&page=2")
    assert _visible_run_ids(browser) == newest_first[2:4]
    refreshed = _refreshes(browser)
    _wait(browser, lambda d: _refreshes(d) >= refreshed + 2, "two in-place refreshes")
    assert _visible_run_ids(browser) == newest_first[2:4]  # the refresh kept page 2
    # The failed run is on page 1, so page 2 lists no older failed runs; page 1 would have it in its table.
    assert not browser.find_elements(By.ID, "failed-runs")
    browser.find_element(By.CSS_SELECTOR, "a.page-older").click()
    _wait(browser, lambda d: _visible_run_ids(d) == newest_first[4:], "page 3 after following 'older'")
    assert "page=3" in browser.current_url and "per_page=2" in browser.current_url
    Select(browser.find_element(By.ID, "status-filter")).select_by_value("running")
    _wait(browser, lambda d: _visible_run_ids(d) == [runs["queued"], runs["running"]], "page 1 of the running runs")
    assert "page=" not in browser.current_url.replace("per_page=", "") and "per_page=2" in browser.current_url


def test_rows_refresh_in_place_and_pause_while_hidden(world, browser):
    instance, queued = world["instance"], world["queued"]
    browser.get(world["url"] + "/")
    _wait(browser, lambda d: len(_visible_run_ids(d)) == 5, "five run rows")
    browser.execute_script("window.__noReload = 'still here';")
    assert "status-running" in _rows(browser)[queued.run_id]["classes"]

    _event(instance, queued, DagsterEventType.RUN_START)
    _event(instance, queued, DagsterEventType.RUN_SUCCESS)
    _wait(
        browser,
        lambda d: "status-complete" in _rows(d)[queued.run_id]["classes"],
        "the queued run's row to turn complete on refresh",
    )
    assert browser.execute_script("return window.__noReload;") == "still here"

    # Hidden tab: no refreshes.
    browser.execute_script(VISIBILITY_JS, "hidden")
    hidden_at = _refreshes(browser)
    deadline = time.monotonic() + 3 * REFRESH_SECONDS
    while time.monotonic() < deadline:  # observing that nothing happens for three intervals
        assert _refreshes(browser) <= hidden_at + 1
        time.sleep(0.2)
    paused = _refreshes(browser)
    browser.execute_script(VISIBILITY_JS, "visible")
    _wait(browser, lambda d: _refreshes(d) >= paused + 2, "refreshes to resume when visible")
    assert browser.execute_script("return window.__noReload;") == "still here"


def test_slurm_unavailable_is_said_and_the_runs_still_show_behind_basic_auth(world, browser):

    url = world["broken_url"]
    assert httpx.get(url + "/", timeout=10).status_code == 401
    wrong = httpx.get(url + "/", auth=(AUTH[0], "wrong"), timeout=10)
    assert wrong.status_code == 401 and "WWW-Authenticate" in wrong.headers and "Traceback" not in wrong.text

    token = httpx.BasicAuth(*AUTH)._auth_header
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": token}})
    browser.get(url + "/")
    _wait(browser, lambda d: len(_visible_run_ids(d)) == 5, "the runs from Dagster despite Slurm")
    status = browser.execute_script(
        "var p = document.getElementById('slurm-status');return {text: p.innerText, cls: p.className};"
    )
    assert "Slurm unavailable" in status["text"] and "not found" in status["text"]
    assert status["cls"] == "slurm-unavailable"
    failed = _rows(browser)[world["runs"]["failed"]]
    assert "status-failed" in failed["classes"] and "FAILURE" in failed["text"]
    _wait(browser, lambda d: _refreshes(d) >= 1, "an authenticated refresh")
    _save_screenshot(browser, "dashboard-slurm-unavailable.png")


def test_many_viewers_never_poll_slurm_more_often_than_the_floor(world):
    url = world["url"]
    with ThreadPoolExecutor(8) as pool:
        pages = list(pool.map(lambda _: httpx.get(url + "/fragment", timeout=30).status_code, range(40)))
    assert pages == [200] * 40
    status = httpx.get(url + "/api/status", timeout=10).json()
    assert status["slurm_poll_seconds"] == 10.0  # asked for 1
    allowed = 1 + int((time.monotonic() - world["started"]) // 10) + 1
    assert 1 <= status["slurm_polls"] <= allowed
    bad = httpx.get(url + "/fragment?status=<x>", timeout=10)
    assert bad.status_code == 400 and "status must be one of" in bad.text and "<x>" not in bad.text
