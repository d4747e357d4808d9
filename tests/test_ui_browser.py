"""The shipped Dagster instance configs turn off telemetry and the UI's "Join the Dagster community" modal.

The browser test serves a real `dagster-webserver` on a free loopback port with the shipped dagster.yaml and
loads its first page in headless Chromium (/usr/bin/chromium through /usr/bin/chromedriver:
`scripts/browser-local`). The modal is the UI's "nux": it opens on a 127.0.0.1/localhost origin when the
`shouldShowNux` GraphQL query answers true (instance setting `nux.enabled`, default true, and no
`.nux/nux.yaml` in DAGSTER_HOME). The page's fetch is wrapped before any of its scripts run, so the test
waits for that answer instead of sleeping; the same page with the `nux` block removed shows the modal.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest
import yaml

from mlgraph.core.drive import PROJECT_ROOT
from tests.support import wait_for
from tests.support.browser import headless_chromium
from tests.support.serving import free_port

SHIPPED = {"dagster.yaml": PROJECT_ROOT / "dagster.yaml", "postgres": PROJECT_ROOT / "deploy" / "dagster.postgres.yaml"}
MODAL_TEXT = "Join the Dagster community"
# Runs before the page's own scripts: keeps the body of the GraphQL answer that carries shouldShowNux.
RECORD_NUX_JS = """
window.__nux = undefined;
const originalFetch = window.fetch;
window.fetch = async function (...args) {
  const response = await originalFetch.apply(this, args);
  response.clone().text().then(function (body) {
    if (body.indexOf('shouldShowNux') !== -1) {
      try { window.__nux = JSON.parse(body).data.shouldShowNux; } catch (e) { window.__nux = 'unparsable: ' + body; }
    }
  }, function () {});
  return response;
};
"""


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_instance_config_turns_off_telemetry_and_nux(name):
    settings = yaml.safe_load(SHIPPED[name].read_text())
    assert settings["telemetry"] == {"enabled": False}
    assert settings["nux"] == {"enabled": False}


def test_instance_from_shipped_config_reports_both_off(tmp_path):
    shutil.copy(SHIPPED["dagster.yaml"], tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.telemetry_enabled is False
        assert instance.nux_enabled is False


@pytest.fixture
def browser():
    with headless_chromium("1400,900", page_load_timeout=60) as driver:
        yield driver


@contextlib.contextmanager
def _webserver(home: Path, log: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port), "--empty-workspace"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=home,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/server_info", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 90, "dagster-webserver to answer", on_timeout=lambda: log.read_text()[-3000:])
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _first_page(browser, url: str):
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_NUX_JS})
    browser.get(url + "/")
    return wait_for(
        lambda: (answer := browser.execute_script("return window.__nux;")) is not None and [answer],
        60,
        "the UI's shouldShowNux query to be answered",
    )[0]


def _modal_shown(browser) -> bool:
    return browser.execute_script("return document.body.innerText.indexOf(arguments[0]) !== -1;", MODAL_TEXT)


@pytest.mark.browser
@pytest.mark.timeout(300)
@pytest.mark.parametrize("nux", ["shipped", "removed"])
def test_first_page_has_no_community_modal(browser, tmp_path, nux):
    settings = SHIPPED["dagster.yaml"].read_text()
    if nux == "removed":  # the control: Dagster's default, which the shipped config overrides
        settings = settings.replace("nux:\n  enabled: false\n", "")
        assert "nux:" not in settings
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(settings)
    with _webserver(home, tmp_path / "webserver.log") as url:
        answer = _first_page(browser, url)
        if nux == "shipped":
            assert answer is False
            # With the answer false the modal component renders nothing, whatever the time.
            assert not _modal_shown(browser)
            assert not (home / ".nux").exists()
        else:
            assert answer is True
            wait_for(lambda: _modal_shown(browser), 30, "the community modal (nux on)")
