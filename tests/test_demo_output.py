"""What `mlgraph demo` prints: one progress line (pipe) or bar (terminal) per stage, not Dagster's events.

The events go to a log file under the drive whose path the demo prints; a failing step's error still
reaches stderr, with that path; `--verbose` prints the events as before. Each test runs a shrunk
experiment and a few data assets (`--select`), so the demo's whole output path is exercised in seconds.
The command runs as `python -m mlgraph.cli.main` from the repository root, so it is this checkout's code.
"""

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

from mlgraph.core.drive import PROJECT_ROOT
from tests.support.fixtures import shrink_experiment

SELECT = "raw_dataset,dataset_fingerprint,train_test_split"
MAX_LINES = 25  # the header, one line per stage, the summary; the events are ~30 lines per asset
LOG_LINE = re.compile(r"Dagster event log: (\S+\.log)")


def demo_env(tmp_path: Path, shared_drive: Path, config_dir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "SHARED_DRIVE": str(shared_drive),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "MLGRAPH_CONFIG_DIR": str(config_dir),
        "COLUMNS": "200",
    }
    env.pop("MLFLOW_LOGGING_LEVEL", None)
    return env


def demo_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlgraph.cli.main", "demo", *args]


def assert_quiet(text: str) -> None:
    assert " - DEBUG - " not in text and "STEP_START" not in text and "ASSET_MATERIALIZATION" not in text, text


def log_file(text: str) -> Path:
    match = LOG_LINE.search(text)
    assert match, text
    return Path(match.group(1))


def test_demo_in_a_pipe_prints_one_line_per_stage(tmp_path, shared_drive, config_dir):
    shrink_experiment(config_dir, "salary", 2000)
    result = subprocess.run(
        demo_cmd("salary", "--select", SELECT),
        cwd=PROJECT_ROOT,
        env=demo_env(tmp_path, shared_drive, config_dir),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert len(out.splitlines()) + len(result.stderr.splitlines()) <= MAX_LINES, out + result.stderr
    assert_quiet(out + result.stderr)
    assert "\r" not in out and "\x1b" not in out  # no bar in a pipe
    assert re.search(r"^\[experiment\] salary: 3/3 asset\(s\) ok in \d+\.\ds \(run \w{8}\)$", out, re.M), out
    assert "== summary ==" in out
    log = log_file(out)
    assert log.parent == shared_drive / "logs" / "demo"
    events = log.read_text()
    for needle in ("RUN_START", "STEP_START", "ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION", "RUN_SUCCESS"):
        assert needle in events, needle
    assert "raw_dataset" in events and " - DEBUG - " in events


def test_demo_on_a_terminal_draws_a_bar(tmp_path, shared_drive, config_dir):
    shrink_experiment(config_dir, "salary", 2000)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        demo_cmd("salary", "--select", SELECT),
        cwd=PROJECT_ROOT,
        env=demo_env(tmp_path, shared_drive, config_dir),
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    chunks = []
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
    text = b"".join(chunks).decode("utf-8", "replace")
    assert_quiet(text)
    # The bar, redrawn in place: stage, partition, bar, done/total, elapsed.
    assert re.search(r"\r\x1b\[2K\[experiment\] salary \[[#-]{24}\] \d/3 assets \d+\.\ds", text), text
    assert "\r\x1b[2K[experiment] salary: 3/3 asset(s) ok" in text
    assert len(text.split("\n")) <= MAX_LINES, text
    assert log_file(text).is_file()


def test_demo_failure_shows_the_step_error_and_the_log(tmp_path, shared_drive, config_dir):
    data = tmp_path / "homes.csv"
    data.write_text('rooms,price\n3,100\n"unterminated\n')
    (config_dir / "experiments" / "homes.yaml").write_text(
        f"name: homes\ntask: regression\ndataset:\n  path: {data}\ntarget: price\n"
    )
    result = subprocess.run(
        demo_cmd("homes", "--select", "raw_dataset,dataset_fingerprint"),
        cwd=PROJECT_ROOT,
        env=demo_env(tmp_path, shared_drive, config_dir),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert_quiet(result.stdout + result.stderr)
    assert "[experiment] homes: 0/2 asset(s) FAILED" in result.stdout
    err = result.stderr
    assert "homes: raw_dataset failed:" in err and "homes.csv" in err and "cannot parse as CSV" in err, err
    log = log_file(result.stdout)
    assert f"full log: {log}" in err
    assert "STEP_FAILURE" in log.read_text()


def test_demo_verbose_prints_the_events(tmp_path, shared_drive, config_dir, monkeypatch, capfd):
    import argparse

    from mlgraph.cli.commands.project import cmd_demo

    shrink_experiment(config_dir, "salary", 2000)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    args = argparse.Namespace(experiments=["salary"], select="raw_dataset", verbose=True)
    assert cmd_demo(args) == 0
    captured = capfd.readouterr()
    text = captured.out + captured.err
    assert "STEP_START" in text and " - DEBUG - " in text
    assert "[experiment] salary: 1 asset(s) ok" in text
    assert not (shared_drive / "logs" / "demo").exists()
