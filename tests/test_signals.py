"""Signal schemas (mlgraph.core.signals): strict parsing with file, field and fix; checkpoint ids and resolution."""

import json
import os
import random
import socket
from pathlib import Path

import pytest

from mlgraph.core import untrusted
from mlgraph.core.drive import DriveLayout
from mlgraph.core.signals import (
    MAX_SIGNAL_BYTES,
    EvalComplete,
    EvalFailed,
    SignalError,
    TrainingComplete,
    checkpoint_id,
    is_checkpoint_id,
    parse_signal,
    read_signal,
    resolve_checkpoint,
    utc_now,
)
from mlgraph.core.untrusted import control_character, printable
from mlgraph.trainer import signal_training_complete

TRAINING = {
    "timestamp": "2025-09-30T14:32:15Z",
    "experiment": "salary",
    "checkpoint_path": "/mnt/shared/models/salary/checkpoints/ck1/final",
    "hostname": "wild_west",
    "user": "tmorton",
}
EVAL = {"timestamp": "2025-09-30T15:00:00+02:00", "experiment": "salary", "job_id": "4242", "status": "complete"}
FAILED = {"timestamp": "2025-09-30T15:00:00Z", "experiment": "salary", "job_id": "4243", "error_message": "OOM"}


def encode(obj) -> bytes:
    return json.dumps(obj).encode()


def reason(data: bytes, model) -> str:
    with pytest.raises(SignalError) as info:
        parse_signal(data, model, source="models/salary/.training_complete")
    assert str(info.value).startswith("models/salary/.training_complete: ")
    assert "Fix: " in str(info.value)
    return str(info.value)


def test_valid_signals_parse_and_round_trip():
    full = {
        **TRAINING,
        "config_path": "/c.yaml",
        "num_epochs": 10,
        "final_loss": 2.34,
        "total_steps": 50000,
        "git_commit": "a94429c",
    }
    signal = parse_signal(encode(full), TrainingComplete)
    assert signal.num_epochs == 10 and signal.timestamp.utcoffset().total_seconds() == 0
    assert parse_signal(signal.to_json().encode(), TrainingComplete) == signal
    done = parse_signal(
        encode(
            {
                **EVAL,
                "job_id": 4242,
                "datasets_evaluated": ["test"],
                "metrics_summary": {"r2": 0.8},
                "eval_duration_seconds": 3.5,
            }
        ),
        EvalComplete,
    )
    assert done.job_id == "4242"  # a numeric Slurm id is the same id
    assert parse_signal(encode(FAILED), EvalFailed).status == "failed"


@pytest.mark.parametrize(
    ("model", "base", "field"),
    [(TrainingComplete, TRAINING, f) for f in TRAINING]
    + [(EvalComplete, EVAL, f) for f in EVAL]
    + [(EvalFailed, FAILED, f) for f in FAILED],
)
def test_each_required_field_missing(model, base, field):
    message = reason(encode({k: v for k, v in base.items() if k != field}), model)
    assert f"field '{field}'" in message and "add this required field" in message


@pytest.mark.parametrize(
    ("model", "base", "patch", "field"),
    [
        (TrainingComplete, TRAINING, {"num_epochs": "10"}, "num_epochs"),
        (TrainingComplete, TRAINING, {"num_epochs": True}, "num_epochs"),
        (TrainingComplete, TRAINING, {"num_epochs": -1}, "num_epochs"),
        (TrainingComplete, TRAINING, {"final_loss": "low"}, "final_loss"),
        (TrainingComplete, TRAINING, {"hostname": 5}, "hostname"),
        (TrainingComplete, TRAINING, {"git_commit": "not-a-hash"}, "git_commit"),
        (TrainingComplete, TRAINING, {"checkpoint_path": ""}, "checkpoint_path"),
        (TrainingComplete, TRAINING, {"extra_field": 1}, "extra_field"),
        (EvalComplete, EVAL, {"status": "done"}, "status"),
        (EvalComplete, EVAL, {"job_id": True}, "job_id"),
        (EvalComplete, EVAL, {"datasets_evaluated": "test"}, "datasets_evaluated"),
        (EvalComplete, EVAL, {"metrics_summary": {"r2": "high"}}, "metrics_summary.r2"),
        (EvalComplete, EVAL, {"eval_duration_seconds": -3}, "eval_duration_seconds"),
        (EvalFailed, FAILED, {"status": "complete"}, "status"),
    ],
)
def test_wrong_types_and_values(model, base, patch, field):
    assert f"field '{field}'" in reason(encode({**base, **patch}), model)


@pytest.mark.parametrize("stamp", ["yesterday", "2025-09-30T14:32:15", "2025-13-30T14:32:15Z", 1759242735, None])
def test_bad_timestamps(stamp):
    message = reason(encode({**TRAINING, "timestamp": stamp}), TrainingComplete)
    assert "field 'timestamp'" in message


@pytest.mark.parametrize("name", ["../etc", "..", "/etc/passwd", "a/b", "salary/../x", "", "Salary", "-x", "a" * 65])
def test_traversal_and_invalid_experiment_names(name):
    message = reason(encode({**TRAINING, "experiment": name}), TrainingComplete)
    assert "field 'experiment'" in message and "not an experiment name" in message


def test_encoding_and_framing_errors():
    assert "not UTF-8" in reason(b'{"timestamp": "\xff\xfe"}', TrainingComplete)
    truncated = json.dumps(TRAINING).encode()[:40]
    assert "not valid JSON" in reason(truncated, TrainingComplete)
    assert "half-written" in reason(truncated, TrainingComplete)
    assert "must hold a JSON object" in reason(b"[1, 2]", TrainingComplete)
    assert "empty file" in reason(b"  \n", TrainingComplete)


def test_oversize_file_is_rejected_by_size(tmp_path: Path):
    path = tmp_path / ".training_complete"
    payload = {**TRAINING, "config_path": "x" * (MAX_SIGNAL_BYTES + 10)}
    path.write_text(json.dumps(payload))
    with pytest.raises(SignalError, match="over the 1048576-byte limit"):
        read_signal(path)
    assert "over the" in reason(path.read_bytes(), TrainingComplete)


def test_read_signal_picks_the_model_from_the_file_name(tmp_path: Path):
    (tmp_path / ".eval_failed").write_text(json.dumps(FAILED))
    signal, raw = read_signal(tmp_path / ".eval_failed")
    assert isinstance(signal, EvalFailed) and raw == encode(FAILED)
    (tmp_path / "signal.json").write_text("{}")
    with pytest.raises(SignalError, match="unknown signal file name"):
        read_signal(tmp_path / "signal.json")


def test_checkpoint_ids_and_resolution(tmp_path: Path):
    assert checkpoint_id("/d/models/x/checkpoints/run 7/final") == "run-7"
    assert checkpoint_id("/d/models/x/checkpoint-1000") == "checkpoint-1000"
    drive = tmp_path / "drive"
    ckpt = drive / "models" / "salary" / "checkpoints" / "a" / "final"
    ckpt.mkdir(parents=True)
    assert resolve_checkpoint(drive, str(ckpt)) == ckpt
    assert resolve_checkpoint(drive, "models/salary/checkpoints/a/final") == ckpt
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (drive / "models" / "salary" / "link").symlink_to(outside)
    for raw in (str(outside), "../elsewhere", "models/salary/link", "models/../../elsewhere"):
        with pytest.raises(SignalError, match="outside the shared drive"):
            resolve_checkpoint(drive, raw)
    with pytest.raises(SignalError, match="does not exist"):
        resolve_checkpoint(drive, "models/salary/checkpoints/missing")


# ---- ids that become paths follow the checkpoint-id rule ----

TRAVERSALS = ["x/../../..", "..", ".", ".hidden", "-rf", "a/b", "a\\b", "/etc/passwd", "ck 1", "é", "a" * 97, ""]


@pytest.mark.parametrize(
    ("model", "base", "field"),
    [
        (EvalComplete, EVAL, "checkpoint_id"),
        (EvalComplete, EVAL, "dagster_run_id"),
        (EvalComplete, EVAL, "mlflow_run_id"),
        (EvalComplete, EVAL, "config_hash"),
        (EvalComplete, EVAL, "job_id"),
        (EvalFailed, FAILED, "checkpoint_id"),
        (EvalFailed, FAILED, "dagster_run_id"),
        (EvalFailed, FAILED, "job_id"),
        (TrainingComplete, TRAINING, "mlflow_run_id"),
    ],
)
@pytest.mark.parametrize("value", TRAVERSALS)
def test_ids_that_become_paths_follow_the_checkpoint_id_rule(model, base, field, value):
    message = reason(encode({**base, field: value}), model)
    assert f"field '{field}': " in message and "is not a valid id (1-96 characters of A-Z" in message
    assert "Fix: write an id that follows that rule" in message


def test_dataset_names_follow_the_checkpoint_id_rule():
    message = reason(encode({**EVAL, "datasets_evaluated": ["test", "../../train"]}), EvalComplete)
    assert "field 'datasets_evaluated.1': '../../train' is not a valid id" in message


def test_a_traversal_in_checkpoint_id_never_leaves_the_evaluation_directory(tmp_path: Path):
    """Why the rule: the report opens checkpoint_predictions(experiment, <id from the signal>)."""
    layout = DriveLayout(tmp_path)
    with pytest.raises(ValueError, match="is not valid"):
        layout.checkpoint_predictions("salary", "x/../../../../../secret")
    for value in ("ck1", "checkpoint-1000", "run_7.best", "0123abcd" * 12):
        assert parse_signal(encode({**EVAL, "checkpoint_id": value}), EvalComplete).checkpoint_id == value
        assert layout.checkpoint_predictions("salary", value).parent == layout.evaluation_dir("salary") / "predictions"


def test_every_checkpoint_id_follows_its_own_rule():
    rng = random.Random(4)
    alphabet = "aZ09_.-/ \\é✓:~\x00"
    names = ["", ".", "..", "...", "-", "--a--", ".a.", "a" * 300, "final", "x/final", "x/../final", "/"]
    names += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120))) for _ in range(2000)]
    for name in names:
        for path in (name, f"/d/models/x/checkpoints/{name}/final", f"/d/{name}"):
            assert is_checkpoint_id(checkpoint_id(path)), (path, checkpoint_id(path))


def test_the_writers_signals_pass_the_rule():
    """What the evaluation asset writes (job, run and checkpoint ids, config hash, datasets) reads back."""
    from mlgraph.external.evaluation import failure_signal

    done = EvalComplete(
        timestamp=utc_now(),
        experiment="salary",
        job_id="4242",
        status="complete",
        datasets_evaluated=["test"],
        checkpoint_id=checkpoint_id("/d/models/salary/checkpoints/run 7/final"),
        dagster_run_id="0b7e3f4c-5d1a-4c33-9c8e-3f0f6f7a8b9c",
        mlflow_run_id="0123456789abcdef0123456789abcdef",
        config_hash="ab" * 32,
    )
    assert parse_signal(done.to_json().encode(), EvalComplete) == done
    failed = failure_signal(
        "salary", "77", RuntimeError("x"), "tb", "ck1", None, "0b7e3f4c-5d1a-4c33-9c8e-3f0f6f7a8b9c"
    )
    assert parse_signal(failed.to_json().encode(), EvalFailed) == failed


# ---- hostile input: bounded decoding, control characters, non-regular files (mlgraph.core.untrusted) ----


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"metrics": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested 50001 levels deep"),
        (b'{"num_epochs": ' + b"7" * 4301 + b"}", "integer with 4301 digits"),
        (b'{"final_loss": 1e400}', "the number 1e400 is out of range"),
        (b'{"final_loss": NaN}', "NaN is not a JSON value"),
        (b'{"user": "a", "user": "b"}', "key 'user' appears more than once"),
        (b"\xef\xbb\xbf{}", "byte-order mark"),
        (b'{"user": "\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"hostname": "[[[[[[[[[[[[[[[[[[[[[[[[[["}', "field 'timestamp'"),  # brackets in strings do not nest
    ],
)
def test_json_the_decoder_cannot_bound_is_a_rejection(data, expected):
    assert expected in reason(data, TrainingComplete)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("user", "a\x00b", "field 'user': holds control character U+0000 (NUL) at position 1"),
        ("hostname", "gpu\x1b[0m", "U+001B (ESC)"),
        ("checkpoint_path", "/x\x7f", "U+007F (DEL)"),
        ("config_path", "/c\x9b.yaml", "U+009B"),
        ("hostname", "two\nlines", "U+000A (LF)"),
        ("metrics", {"ok": 1.0, "lo\tss": 2.0}, "key 'lo\\x09ss' holds control character U+0009 (TAB)"),
    ],
)
def test_identifiers_refuse_control_characters(field, value, expected):
    message = reason(encode({**TRAINING, field: value}), TrainingComplete)
    assert expected in message and "Fix: write plain text" in message
    assert printable(message) == message  # the message itself is safe to log and store


def test_free_text_keeps_line_breaks_but_refuses_other_controls():
    multiline = {**FAILED, "error_message": "line 1\n\tline 2\r\n", "traceback": "Traceback\n  File x"}
    assert parse_signal(encode(multiline), EvalFailed).error_message == "line 1\n\tline 2\r\n"
    for bad in ("\x00", "\x1b[2J", "\x85"):
        assert "field 'error_message'" in reason(encode({**FAILED, "error_message": f"oops{bad}"}), EvalFailed)
    with pytest.raises(ValueError, match="control character U\\+0000"):
        EvalFailed(timestamp="2025-09-30T15:00:00Z", experiment="salary", job_id="1", error_message="a\x00")


def test_printable_escapes_what_storage_and_logs_refuse():
    assert printable("a\x00b\x1b\x7f\x85\ud800") == "a\\x00b\\x1b\\x7f\\x85\\ud800"
    assert printable("keep\ttabs\nand lines", multiline=True) == "keep\ttabs\nand lines"
    assert (
        control_character({"ok": ["fine", "bad\x00"]})
        == "value of 'ok' item 1 holds control character U+0000 (NUL) at position 3"
    )
    assert control_character("plain text, ünïcode ✓") is None


def test_any_corruption_of_a_signal_is_a_signal_error_or_a_signal():
    """Every decode failure of any kind is a SignalError: random corruption of a valid file never raises
    anything else, and every message is safe to log."""
    rng = random.Random(10)
    valid = encode({**TRAINING, "metrics": {"acc": 0.9}, "num_epochs": 3})
    alphabet = b'{}[]":,\\0123456789eE.-+ \x00\x1b\x7f\xff\xc3\x85ntrufalsNI'
    accepted, rejections = 0, []
    for _ in range(3000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data) + 1)
            op = rng.random()
            if op < 0.4:
                data[at : at + 1] = bytes([rng.choice(alphabet)])
            elif op < 0.7:
                data[at:at] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
            elif op < 0.85:
                data[at:at] = rng.choice([b"[" * 2000, b"9" * 5000, b'"\\u0000"', b'"\\udfff"', b"NaN", b"1e999"])
            else:
                del data[at:]
        try:
            parse_signal(bytes(data), TrainingComplete)
        except SignalError as exc:
            rejections.append(str(exc))
        else:
            accepted += 1
    assert len(rejections) > 2000 and accepted + len(rejections) == 3000
    assert [message for message in rejections if printable(message) != message] == []


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "socket"])
def test_only_regular_files_are_opened(kind, tmp_path: Path, monkeypatch):
    path = tmp_path / ".training_complete"
    if kind == "fifo":
        os.mkfifo(path)  # an ordinary open() for reading would block here forever
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path = Path("/dev/null")
    else:
        monkeypatch.chdir(tmp_path)  # AF_UNIX names are limited to about 100 bytes
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path.name)
    opened = []
    monkeypatch.setattr(untrusted.os, "open", lambda *a, **k: opened.append(a) or os.open(*a, **k))
    with pytest.raises(SignalError, match="not a regular file; it was not opened"):
        read_signal(path, TrainingComplete)
    assert opened == []  # refused from its stat: a device is never touched


def test_symlinks_are_followed_only_to_regular_files_inside_the_drive(tmp_path: Path):
    drive, outside = tmp_path / "drive", tmp_path / "outside"
    (drive / "models" / "salary").mkdir(parents=True)
    outside.mkdir()
    real = drive / "models" / "salary" / "signal.json"
    real.write_text(json.dumps(TRAINING))
    link = drive / "models" / "salary" / ".training_complete"
    link.symlink_to(real)
    assert read_signal(link, within=drive)[0].user == "tmorton"
    link.unlink()
    (outside / ".training_complete").write_text(json.dumps(TRAINING))
    link.symlink_to(outside / ".training_complete")
    with pytest.raises(SignalError, match="symlink leads outside the shared drive"):
        read_signal(link, within=drive)


def test_hook_refuses_a_signal_with_control_characters(shared_drive: Path):
    checkpoint = shared_drive / "models" / "salary" / "checkpoints" / "ck1"
    checkpoint.mkdir(parents=True)
    for kwargs, expected in (
        ({"user": "t\x00m"}, "field 'user': holds control character U+0000 (NUL)"),
        ({"hostname": "gpu\x1b[31m"}, "field 'hostname': holds control character U+001B (ESC)"),
        ({"metrics": {"acc\n": 1.0}}, "field 'metrics': key 'acc\\x0a' holds control character"),
        ({"metrics": {"acc": float("nan")}}, "field 'metrics.acc'"),
    ):
        result = signal_training_complete("salary", checkpoint, mlflow=False, detect_git=False, **kwargs)
        assert not result and expected in result.error and "Fix:" in result.error, result.error
        assert not (shared_drive / "models" / "salary" / ".training_complete").exists()


@pytest.mark.parametrize("bad", ["x/../../..", "..", "-rf", "a\\b", "", "a" * 97])
def test_no_path_is_built_from_an_id_that_breaks_the_rule_whoever_chose_it(tmp_path, bad: str) -> None:
    # A run config typed in the UI or a hand-set run tag reaches the drive's paths without a signal's schema.
    from mlgraph.core.drive import DriveLayout

    with pytest.raises(ValueError, match="is not valid .*Fix: give the id"):
        DriveLayout.at(tmp_path).checkpoint_predictions("exp", bad)
    assert (
        DriveLayout.at(tmp_path).checkpoint_predictions("exp", "ckpt-1.v2").name == "test-checkpoint-ckpt-1.v2.parquet"
    )
