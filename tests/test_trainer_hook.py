"""The training completion hook (mlgraph.trainer): atomic, retrying, never raising; and `mlgraph signal`."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import mlgraph.trainer.hook
from mlgraph.cli.main import main as cli
from mlgraph.core.drive import PROJECT_ROOT
from mlgraph.core.signals import SignalError, TrainingComplete, parse_signal, read_signal
from mlgraph.trainer import signal_training_complete
from tests.support import wait_for


def test_hook_import_is_cheap():
    code = (
        "import sys, json, mlgraph.trainer.hook; "
        "print(json.dumps([m for m in ('dagster', 'torch', 'mlflow', 'pandas') if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.fixture
def checkpoint(shared_drive: Path) -> Path:
    path = shared_drive / "models" / "salary" / "checkpoints" / "ck1" / "final"
    path.mkdir(parents=True)
    (path / "model.pt").write_bytes(b"weights")
    return path


def test_hook_writes_a_valid_signal(shared_drive: Path, checkpoint: Path):
    result = signal_training_complete(
        "salary", checkpoint, num_epochs=3, final_loss=0.5, total_steps=30, metrics={"val_rmse": 1.25}, mlflow=False
    )
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


def test_hook_retries_a_transient_failure(shared_drive: Path, checkpoint: Path, monkeypatch):
    # models/other is a file, so creating models/other/ fails until it is gone: a real OSError. The hook's
    # first back-off removes it (the failure ends while the hook waits), and records every wait it asks for.
    blocker = shared_drive / "models" / "other"
    blocker.write_text("in the way")
    (shared_drive / "models" / "other_ckpt").mkdir()
    waits = []

    def back_off(seconds: float) -> None:
        waits.append(seconds)
        blocker.unlink(missing_ok=True)

    # `time` is the module object: subprocess's own waits (the git lookup) would land here too, so no git.
    monkeypatch.setattr(mlgraph.trainer.hook.time, "sleep", back_off)
    result = signal_training_complete(
        "other", shared_drive / "models" / "other_ckpt", mlflow=False, retries=5, backoff_seconds=0.1, detect_git=False
    )
    assert result and result.attempts > 1 and waits == [0.1]
    assert read_signal(shared_drive / "models" / "other" / ".training_complete")[0].experiment == "other"

    (shared_drive / "models" / "stuck").write_text("in the way for good")
    waits.clear()
    monkeypatch.setattr(mlgraph.trainer.hook.time, "sleep", waits.append)
    result = signal_training_complete(
        "stuck", checkpoint, mlflow=False, retries=2, backoff_seconds=0.05, detect_git=False
    )
    assert not result and result.attempts == 3 and "after 3 attempts" in result.error
    # Exponential back-off between the three attempts: 0.05 s, then 0.1 s.
    assert waits == [0.05, 0.1]


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
            assert signal_training_complete(
                "salary", checkpoint, final_loss=float(i), metrics=big, mlflow=False, detect_git=False
            )
            # The reader keeps reading through the next write; waiting here only guarantees it keeps up.
            wait_for(lambda i=i: float(i) in seen or bad, 30, f"the reader to see write {i}", interval=0.001)
        wait_for(lambda: len(seen) > 25 or bad, 30, "one more read of the last signal", interval=0.001)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert bad == []
    assert len(seen) > 25 and set(seen) <= {float(i) for i in range(25)}


def test_hook_logs_final_metrics_to_mlflow(shared_drive: Path, checkpoint: Path, tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = signal_training_complete(
        "salary",
        checkpoint,
        final_loss=0.25,
        num_epochs=4,
        total_steps=40,
        metrics={"val_r2": 0.9},
        params={"lr": 0.01},
        mlflow_tracking_uri=uri,
    )
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
    assert (
        cli(
            [
                "signal",
                "training-complete",
                "--experiment",
                "salary",
                "--checkpoint",
                str(checkpoint),
                "--num-epochs",
                "2",
                "--metric",
                "val_mae=3.5",
                "--no-mlflow",
            ]
        )
        == 0
    )
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
