"""Signal schemas (core.signals): strict parsing with file, field and fix; checkpoint ids and resolution."""

import json
from pathlib import Path

import pytest

from core.signals import (
    MAX_SIGNAL_BYTES,
    EvalComplete,
    EvalFailed,
    SignalError,
    TrainingComplete,
    checkpoint_id,
    parse_signal,
    read_signal,
    resolve_checkpoint,
)

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
    full = {**TRAINING, "config_path": "/c.yaml", "num_epochs": 10, "final_loss": 2.34, "total_steps": 50000,
            "git_commit": "a94429c"}
    signal = parse_signal(encode(full), TrainingComplete)
    assert signal.num_epochs == 10 and signal.timestamp.utcoffset().total_seconds() == 0
    assert parse_signal(signal.to_json().encode(), TrainingComplete) == signal
    done = parse_signal(encode({**EVAL, "job_id": 4242, "datasets_evaluated": ["test"],
                                "metrics_summary": {"r2": 0.8}, "eval_duration_seconds": 3.5}), EvalComplete)
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
