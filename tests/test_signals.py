"""Signal schemas, strict parsing, and the training completion hook (atomic, retrying, never raising)."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlgraph_cli.main import main as cli
from core.drive import PROJECT_ROOT
from trainer_hook import signal_training_complete
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


def test_hook_import_is_cheap():
    code = ("import sys, json, trainer_hook.hook; "
            "print(json.dumps([m for m in ('dagster', 'torch', 'mlflow', 'pandas') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.fixture
def checkpoint(shared_drive: Path) -> Path:
    path = shared_drive / "models" / "salary" / "checkpoints" / "ck1" / "final"
    path.mkdir(parents=True)
    (path / "model.pt").write_bytes(b"weights")
    return path


def test_hook_writes_a_valid_signal(shared_drive: Path, checkpoint: Path):
    result = signal_training_complete("salary", checkpoint, num_epochs=3, final_loss=0.5, total_steps=30,
                                      metrics={"val_rmse": 1.25}, mlflow=False)
    assert result and result.attempts == 1 and result.error is None
    assert result.signal_path == shared_drive / "models" / "salary" / ".training_complete"
    signal, _ = read_signal(result.signal_path)
    assert signal == result.signal
    assert signal.checkpoint_path == str(checkpoint) and signal.metrics == {"val_rmse": 1.25}
    assert signal.hostname and signal.user and signal.mlflow_run_id is None
    assert oct(result.signal_path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in result.signal_path.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"experiment": "../etc"}, "not an experiment name"),
        ({"checkpoint_path": "/nonexistent/ckpt"}, "does not exist"),
        ({"checkpoint_path": "/tmp"}, "outside the shared drive"),
        ({"final_loss": float("nan")}, "finite"),
        ({"metrics": {"r2": "high"}}, "could not convert"),
        ({"metrics": 5}, "AttributeError"),
        ({"shared_drive": "/nonexistent/drive"}, "does not exist"),
    ],
)
def test_hook_never_raises(shared_drive: Path, checkpoint: Path, kwargs, message):
    args = {"experiment": "salary", "checkpoint_path": checkpoint, **kwargs}
    result = signal_training_complete(args.pop("experiment"), args.pop("checkpoint_path"), mlflow=False, **args)
    assert not result and message in result.error
    assert not (shared_drive / "models" / "salary" / ".training_complete").exists()
    assert not Path("/nonexistent/drive").exists()


def test_hook_retries_a_transient_failure(shared_drive: Path, checkpoint: Path):
    # models/other is briefly a file, so creating models/other/ fails until it is gone: a real OSError.
    (shared_drive / "models" / "other").write_text("in the way")
    (shared_drive / "models" / "other_ckpt").mkdir()
    timer = threading.Timer(0.3, (shared_drive / "models" / "other").unlink)
    timer.start()
    try:
        result = signal_training_complete("other", shared_drive / "models" / "other_ckpt", mlflow=False,
                                          retries=5, backoff_seconds=0.1)
    finally:
        timer.cancel()
    assert result and result.attempts > 1
    assert read_signal(shared_drive / "models" / "other" / ".training_complete")[0].experiment == "other"

    (shared_drive / "models" / "stuck").write_text("in the way for good")
    start = time.perf_counter()
    result = signal_training_complete("stuck", checkpoint, mlflow=False, retries=2, backoff_seconds=0.05)
    assert not result and result.attempts == 3 and "after 3 attempts" in result.error
    assert time.perf_counter() - start >= 0.05 + 0.1


def test_hook_write_is_atomic_for_a_concurrent_reader(shared_drive: Path, checkpoint: Path):
    target = shared_drive / "models" / "salary" / ".training_complete"
    # ~300 KB per signal so that a non-atomic write would be observed half-done.
    big = {f"m{i:05d}": float(i) for i in range(12_000)}
    stop = threading.Event()
    seen, bad = [], []

    def reader():
        while not stop.is_set():
            try:
                data = target.read_bytes()
            except FileNotFoundError:
                continue
            try:
                seen.append(parse_signal(data, TrainingComplete).final_loss)
            except SignalError as exc:
                bad.append(str(exc)[:200])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(25):
            assert signal_training_complete("salary", checkpoint, final_loss=float(i), metrics=big, mlflow=False,
                                            detect_git=False)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert bad == []
    assert len(seen) > 25 and set(seen) <= {float(i) for i in range(25)}


def test_hook_logs_final_metrics_to_mlflow(shared_drive: Path, checkpoint: Path, tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = signal_training_complete("salary", checkpoint, final_loss=0.25, num_epochs=4, total_steps=40,
                                      metrics={"val_r2": 0.9}, params={"lr": 0.01}, mlflow_tracking_uri=uri)
    assert result and result.mlflow_run_id and result.warnings == []
    assert read_signal(result.signal_path)[0].mlflow_run_id == result.mlflow_run_id
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=uri).get_run(result.mlflow_run_id)
    assert run.data.metrics == {"final_loss": 0.25, "num_epochs": 4.0, "total_steps": 40.0, "val_r2": 0.9}
    assert run.data.params == {"lr": "0.01"}
    assert run.data.tags["mlgraph.signal_path"] == str(result.signal_path)

    # An unusable tracking store costs the MLflow record, never the signal.
    broken = signal_training_complete("salary", checkpoint, mlflow_tracking_uri="sqlite:////proc/no/such/dir/x.db")
    assert broken and broken.mlflow_run_id is None and "MLflow logging failed" in broken.warnings[0]


def test_cli_training_complete_and_check(shared_drive: Path, checkpoint: Path, capsys):
    assert cli(["signal", "training-complete", "--experiment", "salary", "--checkpoint", str(checkpoint),
                "--num-epochs", "2", "--metric", "val_mae=3.5", "--no-mlflow"]) == 0
    written = shared_drive / "models" / "salary" / ".training_complete"
    assert capsys.readouterr().out.strip() == str(written)
    signal, _ = read_signal(written)
    assert signal.num_epochs == 2 and signal.metrics == {"val_mae": 3.5}
    assert cli(["signal", "check", str(written)]) == 0
    broken = shared_drive / "evaluation" / "salary" / ".eval_complete"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"timestamp": "2025-09-30T15:00:00Z"')
    assert cli(["signal", "check", str(broken)]) == 1
    assert "not valid JSON" in capsys.readouterr().err
    assert cli(["signal", "training-complete", "--experiment", "salary", "--checkpoint", "/nope", "--no-mlflow"]) == 1
    assert os.environ["SHARED_DRIVE"] == str(shared_drive)
