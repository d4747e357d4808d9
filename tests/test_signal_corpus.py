"""A corpus of malformed and hostile signal files, each beside one good signal, one real sensor tick each.

Every case asserts the same contract: the tick finishes within TICK_LIMIT_SECONDS (run in a thread, so
a regression that blocks, as a FIFO opened for reading does, fails instead of hanging CI), the good
signal's run is requested, the hostile file is rejected with a reason that names the problem, and
everything the tick hands to storage and logs (skip reason, cursor, log lines) is UTF-8 text without
control characters.
"""

import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from mlgraph.core.drive import PROJECT_ROOT
from mlgraph.core.untrusted import printable
from mlgraph.external import signal_scan
from mlgraph.external.signal_scan import SignalCursor
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive
from sensors import signal_sensors
from sensors.signal_sensors import build_signal_sensors
from tests.support import dagster_instance
from tests.support.instance import DEMO
from tests.test_signal_sensors import Records, write_eval, write_training

TRAINING_SENSOR, EVAL_SENSOR = build_signal_sensors(settle_seconds=0, listen_seconds=0)
TICK_LIMIT_SECONDS = 30.0
HOSTILE = "student_engagement"  # a registered experiment: its rejection is the file's fault alone
TRAINING_FILE = f"models/{HOSTILE}/.training_complete"
GOOD = {"timestamp": "2025-09-30T14:32:15Z", "experiment": HOSTILE, "hostname": "h", "user": "u"}


@pytest.fixture(scope="module")
def instance():
    with dagster_instance() as inst:
        inst.add_dynamic_partitions("experiment", DEMO)
        yield inst


@pytest.fixture(scope="module")
def config_dir() -> Path:
    # Read-only here: the demo configs, as they are.
    return PROJECT_ROOT / "config"


def run_tick(sensor, instance, drive: Path, config_dir: Path, unblock: Path | None = None, cursor: str | None = None):
    """One real sensor evaluation in a thread, bounded by TICK_LIMIT_SECONDS: (result, log lines)."""
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"storage": SharedDrive(root=str(drive)), "catalog": ExperimentCatalog(config_dir=str(config_dir))},
    )
    records = Records()
    context.log.addHandler(records)
    outcome: dict[str, object] = {}

    def evaluate() -> None:
        try:
            outcome["result"] = sensor(context)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=evaluate, daemon=True)
    worker.start()
    worker.join(TICK_LIMIT_SECONDS)
    if worker.is_alive() and unblock is not None:
        # Release a reader stuck on a FIFO, so the failed test leaves no blocked thread behind.
        os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
    assert not worker.is_alive(), f"the tick did not finish within {TICK_LIMIT_SECONDS} s"
    assert "error" not in outcome, f"the tick raised {outcome.get('error')!r}"
    result = outcome["result"]
    assert isinstance(result, dg.SensorResult)
    return result, records.lines


def assert_clean_text(text: str) -> None:
    """What goes to Postgres and logs: encodable as UTF-8, no control characters (line breaks aside)."""
    text.encode("utf-8")
    assert printable(text, multiline=True) == text, text


def check_tick(
    sensor,
    instance,
    drive: Path,
    config_dir: Path,
    good: Path,
    hostile_rel: str,
    expected: str,
    unblock: Path | None = None,
) -> list[tuple[int, str]]:
    result, lines = run_tick(sensor, instance, drive, config_dir, unblock)
    # The good signal runs...
    assert [(r.partition_key, r.run_key.split(":")[0]) for r in result.run_requests] == [
        ("salary", good.relative_to(drive).as_posix())
    ]
    # ...and the hostile one is rejected, with its reason.
    rejections = [line for level, line in lines if level >= logging.WARNING and "rejected signal" in line]
    assert any(hostile_rel in line and expected in line for line in rejections), (expected, rejections)
    assert "Fix:" in " ".join(rejections)
    for _, line in lines:
        assert_clean_text(line)
    assert_clean_text(result.cursor or "")
    # Reported once: the next tick neither runs nor rejects anything.
    again, again_lines = run_tick(sensor, instance, drive, config_dir, unblock, cursor=result.cursor)
    assert again.run_requests == [] and not [line for _, line in again_lines if "rejected signal" in line]
    return lines


def training_json(**fields) -> bytes:
    return json.dumps({**GOOD, "checkpoint_path": f"models/{HOSTILE}/ck", **fields}).encode()


def raw(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(text.encode("utf-8", "surrogatepass"))


def data(payload: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(payload)


def field_value(name: str, value: object) -> Callable[[Path], None]:
    return data(training_json(**{name: value}))


def nested(depth: int, left: str = "[", right: str = "]") -> Callable[[Path], None]:
    return data(b'{"metrics": ' + left.encode() * depth + b"1" + right.encode() * depth + b"}")


def fifo(path: Path) -> None:
    os.mkfifo(path)


def make_socket(path: Path) -> None:
    # Bound by its short relative name: AF_UNIX paths are limited to about 100 bytes.
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path.name)
        sock.close()
    finally:
        os.chdir(cwd)


def link_to(make_target: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        target = path.parent / "target"
        make_target(target)
        path.symlink_to(target)

    return make


def loop(path: Path) -> None:
    (path.parent / "a").symlink_to(path.parent / "b")
    (path.parent / "b").symlink_to(path.parent / "a")
    path.symlink_to(path.parent / "a")


CORPUS: dict[str, tuple[Callable[[Path], None], str]] = {
    # (a) JSON the decoder cannot bound
    "deep-arrays": (nested(100_000), "nested 100001 levels deep"),
    "deep-objects": (data(b'{"metrics": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001), "nested 5001 levels deep"),
    "just-past-the-depth-limit": (nested(16), "nested 17 levels deep"),
    "huge-integer": (data(training_json()[:-1] + b', "num_epochs": ' + b"9" * 5000 + b"}"), "integer with 5000 digits"),
    "huge-negative-integer": (data(b'{"total_steps": -' + b"1" * 4400 + b"}"), "integer with 4400 digits"),
    "float-overflow": (data(training_json()[:-1] + b', "final_loss": 1e999}'), "out of range"),
    "long-float": (data(training_json()[:-1] + b', "final_loss": 0.' + b"1" * 5000 + b"}"), "out of range"),
    "nan-literal": (data(training_json()[:-1] + b', "final_loss": NaN}'), "NaN is not a JSON value"),
    "infinity-in-metrics": (data(training_json()[:-1] + b', "metrics": {"acc": -Infinity}}'), "-Infinity is not"),
    # (b) non-regular files at the signal path (a FIFO blocks an ordinary open forever)
    "fifo": (fifo, "is a named pipe (FIFO), not a regular file"),
    "directory": (lambda path: path.mkdir(), "is a directory"),
    "socket": (make_socket, "is a socket"),
    "symlink-to-fifo": (link_to(fifo), "is a named pipe (FIFO)"),
    "symlink-to-directory": (link_to(lambda p: p.mkdir()), "is a directory"),
    "symlink-out-of-the-drive": (lambda path: path.symlink_to("/dev/zero"), "symlink leads outside the shared drive"),
    "dangling-symlink": (lambda path: path.symlink_to(path.parent / "missing"), "cannot read it"),
    "symlink-loop": (loop, "is a symlink, not a regular file"),
    # (c) control characters in identifiers and free text
    "nul-in-user": (field_value("user", "tm\x00rton"), "field 'user': holds control character U+0000 (NUL)"),
    "escape-in-hostname": (field_value("hostname", "gpu\x1b[31m"), "U+001B (ESC)"),
    "del-in-run-id": (field_value("mlflow_run_id", "abc\x7f"), "U+007F (DEL)"),
    "c1-in-config-path": (field_value("config_path", "/c\x85.yaml"), "'config_path': holds control character U+0085"),
    "newline-in-checkpoint-path": (field_value("checkpoint_path", "models/x\nck"), "U+000A (LF)"),
    "newline-after-experiment": (field_value("experiment", HOSTILE + "\n"), "field 'experiment'"),
    "control-in-metric-name": (field_value("metrics", {"acc\x00": 1.0}), "key 'acc\\x00' holds control character"),
    "lone-surrogate": (raw('{"user": "\\udc80", "hostname": "h"}'), "lone UTF-16 surrogate"),
    # (d) every other decode failure
    "not-utf8": (data(b'{"user": "\xff\xfe"}'), "not UTF-8"),
    "utf16": (data(json.dumps(GOOD).encode("utf-16")), "not UTF-8"),
    "byte-order-mark": (data(b"\xef\xbb\xbf" + training_json()), "byte-order mark"),
    "duplicate-key": (data(training_json()[:-1] + b', "user": "someone-else"}'), "key 'user' appears more than once"),
    "top-level-list": (data(b"[1, 2]"), "must hold a JSON object, got list"),
    "top-level-null": (data(b"null"), "must hold a JSON object, got NoneType"),
    "top-level-number": (data(b"42"), "must hold a JSON object, got int"),
    "truncated": (data(training_json()[:30]), "not valid JSON"),
    "empty": (data(b""), "empty file"),
    "wrong-type": (field_value("num_epochs", "10"), "field 'num_epochs'"),
    "path-too-long": (field_value("checkpoint_path", "x" * 5000), "field 'checkpoint_path'"),
    "name-too-long-for-the-file-system": (field_value("checkpoint_path", "models/" + "a" * 300), "not a usable path"),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_hostile_training_signal_is_rejected_and_the_good_one_runs(case, instance, config_dir, tmp_path):
    drive = tmp_path / "shared"
    good = write_training(drive, "salary")
    hostile = drive / TRAINING_FILE
    hostile.parent.mkdir(parents=True)
    (hostile.parent / "ck").mkdir()
    make, expected = CORPUS[case]
    make(hostile)
    check_tick(
        TRAINING_SENSOR,
        instance,
        drive,
        config_dir,
        good,
        TRAINING_FILE,
        expected,
        unblock=hostile if case == "fifo" else None,
    )


BAD_DIRECTORY_NAMES = ["Bad\x1bName", "tab\there", "newline\n", b"\xff\xfe".decode("utf-8", "surrogateescape")]


@pytest.mark.parametrize("name", BAD_DIRECTORY_NAMES)
def test_directory_names_with_control_characters_or_bad_bytes(name, instance, config_dir, tmp_path):
    drive = tmp_path / "shared"
    good = write_training(drive, "salary")
    hostile = drive / "models" / name / ".training_complete"
    hostile.parent.mkdir(parents=True)
    hostile.write_bytes(training_json(experiment="salary"))
    shown = printable(f"models/{name}/.training_complete")
    check_tick(TRAINING_SENSOR, instance, drive, config_dir, good, shown, "is not an experiment name")


EVAL_CORPUS = {
    "nul-in-job-id": ({"job_id": "4\x002"}, "field 'job_id': holds control character U+0000 (NUL)"),
    "escape-in-error-message": ({"status": "failed", "error_message": "boom \x1b[2J"}, "field 'error_message'"),
    "nested-datasets": ({"datasets_evaluated": [[["test"]]] * 2}, "field 'datasets_evaluated"),
    "huge-job-id": ({"job_id": 10**30}, "integer with 31 digits"),
}


@pytest.mark.parametrize("case", sorted(EVAL_CORPUS))
def test_hostile_eval_signal_is_rejected_and_the_good_one_runs(case, instance, config_dir, tmp_path):
    drive = tmp_path / "shared"
    good = write_eval(drive, "salary")
    fields, expected = EVAL_CORPUS[case]
    write_eval(drive, HOSTILE, **fields)
    check_tick(EVAL_SENSOR, instance, drive, config_dir, good, f"evaluation/{HOSTILE}/.eval_complete", expected)


def test_free_text_may_span_lines(instance, config_dir, tmp_path):
    drive = tmp_path / "shared"
    write_eval(drive, "salary", ".eval_failed", error_message="Traceback:\n\tline 1\r\nValueError: x")
    result, lines = run_tick(EVAL_SENSOR, instance, drive, config_dir)
    [event] = result.asset_events
    assert event.metadata["error_message"].value == "Traceback:\n\tline 1\r\nValueError: x"
    assert not [line for level, line in lines if "rejected signal" in line]


def test_an_unexpected_error_on_one_file_rejects_it_with_a_traceback(instance, config_dir, tmp_path, monkeypatch):
    """The defensive boundaries: in inspect_signal (reading, parsing) and in the sensor (building the run)."""
    drive = tmp_path / "shared"
    good = write_training(drive, "salary")
    write_training(drive, HOSTILE)
    real_parse = signal_scan.parse_signal

    def parse(data: bytes, model, source):
        if HOSTILE in str(source):
            raise RuntimeError("surprise in the parser")
        return real_parse(data, model, source=source)

    monkeypatch.setattr(signal_scan, "parse_signal", parse)
    lines = check_tick(
        TRAINING_SENSOR,
        instance,
        drive,
        config_dir,
        good,
        TRAINING_FILE,
        "unexpected error while checking it (RuntimeError: surprise in the parser)",
    )
    assert any(level == logging.ERROR and "Traceback (most recent call last)" in line for level, line in lines)

    monkeypatch.setattr(signal_scan, "parse_signal", real_parse)
    real_request = signal_sensors._evaluation_request

    def request(item, config_hash):
        if item.signal.experiment == HOSTILE:
            raise KeyError("surprise in the request")
        return real_request(item, config_hash)

    monkeypatch.setattr(signal_sensors, "_evaluation_request", request)
    result, lines = run_tick(TRAINING_SENSOR, instance, drive, config_dir)
    assert [r.partition_key for r in result.run_requests] == ["salary"]
    assert any(
        level == logging.ERROR
        and "unexpected error while requesting its run (KeyError" in line
        and "Traceback (most recent call last)" in line
        for level, line in lines
    )


def test_a_tick_stops_taking_files_when_its_time_is_spent(tmp_path):
    drive = tmp_path / "shared"
    # Written in order: their (ctime, path) order is exp0 .. exp3 whether or not the coarse ctimes differ.
    files = [write_training(drive, f"exp{i}") for i in range(4)]
    clock = iter(range(100))  # each reading one "second" after the last
    plan = signal_scan.plan_tick(
        drive,
        drive / "models",
        (".training_complete",),
        SignalCursor(),
        0,
        now_ns=time.time_ns() + 60 * 10**9,
        max_seconds=2.5,
        monotonic=lambda: float(next(clock)),
    )
    # Deadline 2.5 (read at 0): the readings 1 and 2 take a file each, the reading 3 stops the tick.
    assert len(plan.accepted) == 2 and plan.rejected == [] and plan.backlog == 2
    # The cursor stands right after the second file: the next tick resumes at the third.
    assert (plan.cursor.ctime_ns, plan.cursor.path) == (
        os.stat(files[1]).st_ctime_ns,
        "models/exp1/.training_complete",
    )


def test_the_fifo_case_is_a_real_fifo(tmp_path):
    """Guards the corpus itself: the FIFO case must create what blocks a plain open()."""
    path = tmp_path / "pipe"
    fifo(path)
    assert stat.S_ISFIFO(os.lstat(path).st_mode)


def test_an_evaluation_failure_with_control_characters_still_writes_a_readable_signal(tmp_path):
    """The readers refuse control characters; the writer of .eval_failed escapes them instead of failing."""
    from mlgraph.core.signals import EvalFailed, parse_signal
    from mlgraph.external.evaluation import failure_signal

    exc = RuntimeError("CUDA \x1b[31merror\x1b[0m at \x00")
    failed = failure_signal("salary", "7", exc, "Traceback:\n\tboom\x07\n", None, None, "run-1")
    signal = parse_signal(failed.to_json().encode(), EvalFailed)
    assert signal.error_message == "CUDA \\x1b[31merror\\x1b[0m at \\x00"
    assert signal.traceback == "Traceback:\n\tboom\\x07\n"
