"""Promotion pointer, history, idempotency, rollback (store, MLflow registry alias, CLI) and lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlgraph.cli.main import main
from mlgraph.training import promotion
from mlgraph.training.lineage import verify_lineage, write_lineage
from resources.tracking import MlflowTracking


def _pointer(run_id: str, version: str = "1", **extra) -> dict:
    return {
        "run_id": run_id,
        "model_type": "ridge",
        "config_hash": "h" * 64,
        "model_uri": f"runs:/{run_id}/ridge",
        "score": 0.9,
        "timestamp": promotion.utc_now(),
        "dataset_sha256": "d1",
        "model_version": version,
        **extra,
    }


def test_decide_is_idempotent_unless_forced_or_data_changed() -> None:
    assert promotion.decide(None, "h", "d1", force=False).promote
    current = _pointer("r1") | {"config_hash": "h"}
    held = promotion.decide(current, "h", "d1", force=False)
    assert not held.promote and "already promoted" in held.reason
    assert promotion.decide(current, "h", "d1", force=True).promote
    assert promotion.decide(current, "h", "d2", force=False).promote


def test_store_promote_rollback_replays_history(tmp_path: Path) -> None:
    store = promotion.PromotionStore(tmp_path / "model-promotion" / "global" / ("h" * 64))
    assert store.current() is None and store.stack() == []
    store.promote(_pointer("r1", "1"))
    store.promote(_pointer("r2", "2"))
    store.promote(_pointer("r3", "3"))
    assert store.current()["run_id"] == "r3"
    rolled_back, restored = store.rollback()
    assert (rolled_back["run_id"], restored["run_id"]) == ("r3", "r2")
    assert json.loads(store.current_path.read_text())["run_id"] == "r2"
    _, restored = store.rollback()
    assert restored["run_id"] == "r1"
    with pytest.raises(ValueError, match="no previous champion"):
        store.rollback()
    events = [json.loads(line) for line in store.history_path.read_text().splitlines()]
    assert [e["event"] for e in events] == ["promote", "promote", "promote", "rollback", "rollback"]
    assert events[3]["rolled_back_run_id"] == "r3" and events[3]["run_id"] == "r2"
    store.promote(_pointer("r4", "4"))
    assert [p["run_id"] for p in store.stack()] == ["r1", "r4"]


def _registered_runs(tracking: MlflowTracking, n: int) -> tuple[object, list[str]]:
    client = tracking.client()
    experiment_id = tracking.ensure_experiment("salary")
    runs = [client.create_run(experiment_id).info.run_id for _ in range(n)]
    return client, runs


def test_registry_alias_moves_on_promotion_and_rollback(shared_drive: Path) -> None:
    tracking = MlflowTracking()
    assert tracking.resolved_tracking_uri == f"sqlite:///{shared_drive / 'state' / 'mlflow.db'}"
    client, runs = _registered_runs(tracking, 2)
    name = tracking.registered_model_name("salary")
    store = promotion.PromotionStore(shared_drive / "model-promotion" / "global" / ("h" * 64))
    models_dir = shared_drive / "models" / "salary"
    for i, run_id in enumerate(runs, 1):
        version = promotion.register_version(client, name, f"runs:/{run_id}/ridge", run_id, {"i": str(i)})
        assert version == str(i)
        promotion.move_alias(client, name, version)
        lineage = models_dir / "champions" / f"v{version}" / "lineage.json"
        lineage.parent.mkdir(parents=True, exist_ok=True)
        lineage.write_text(json.dumps({"version": version}))
        store.promote(_pointer(run_id, version, registered_model=name, lineage_path=str(lineage)))
    assert promotion.alias_version(client, name) == "2"

    rolled_back, restored = promotion.rollback(store, client, models_dir)
    assert (rolled_back["model_version"], restored["model_version"]) == ("2", "1")
    assert promotion.alias_version(client, name) == "1"
    assert json.loads((models_dir / "lineage.json").read_text()) == {"version": "1"}
    assert store.current()["run_id"] == runs[0]


def test_promote_cli_shows_and_rolls_back(shared_drive: Path, config_dir: Path, capsys) -> None:
    from resources.experiments import ExperimentCatalog

    config_hash = ExperimentCatalog().load("salary").config.config_hash
    assert main(["promote", "--experiment", "salary"]) == 1  # nothing promoted yet
    tracking = MlflowTracking()
    client, runs = _registered_runs(tracking, 2)
    name = tracking.registered_model_name("salary")
    store = promotion.PromotionStore(shared_drive / "model-promotion" / "global" / config_hash)
    for run_id in runs:
        version = promotion.register_version(client, name, f"runs:/{run_id}/ridge", run_id, {})
        promotion.move_alias(client, name, version)
        store.promote(_pointer(run_id, version, registered_model=name, config_hash=config_hash))
    capsys.readouterr()
    assert main(["promote", "--experiment", "salary"]) == 0
    shown = capsys.readouterr().out
    assert f'"run_id": "{runs[1]}"' in shown and f"restores ridge (run {runs[0]})" in shown
    assert main(["promote", "--experiment", "salary", "--rollback"]) == 0
    assert "rolled back ridge" in capsys.readouterr().out
    assert store.current()["run_id"] == runs[0]
    assert promotion.alias_version(client, name) == "1"
    assert main(["promote", "--experiment", "salary", "--rollback"]) == 1
    assert "no previous champion" in capsys.readouterr().err


def test_lineage_verifies_and_names_the_changed_file(tmp_path: Path, capsys) -> None:
    drive = tmp_path / "drive"
    files = {}
    for name, rel in {
        "dataset_train": "datasets/x/train.parquet",
        "model": "models/x/champions/v1/m.joblib",
        "threshold": "models/x/champions/v1/threshold.txt",
    }.items():
        path = drive / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{name}-bytes".encode())
        files[name] = path
    config = tmp_path / "config.yaml"
    config.write_text("name: x\n")
    files["config"] = config
    lineage = drive / "models" / "x" / "lineage.json"
    record = write_lineage(lineage, {"run_id": "abc", "config_hash": "h"}, {**files, "absent": None})
    assert set(record["files"]) == {"dataset_train", "model", "threshold", "config"}
    assert record["files"]["model"]["drive_relative"] == "models/x/champions/v1/m.joblib"
    assert "drive_relative" not in record["files"]["config"]  # not on the drive: absolute path only
    assert verify_lineage(lineage) == []
    assert main(["verify", str(lineage)]) == 0

    files["model"].write_bytes(b"model-bytez")
    differences = verify_lineage(lineage)
    assert len(differences) == 1 and differences[0].startswith("model: ") and "SHA-256 differs" in differences[0]
    files["threshold"].unlink()
    assert any(d.startswith("threshold: ") and "missing" in d for d in verify_lineage(lineage))
    assert main(["verify", str(lineage)]) == 1
    assert "2 difference(s)" in capsys.readouterr().out

    # A drive mounted elsewhere still verifies through the drive-relative paths.
    files["model"].write_bytes(b"model-bytes")
    files["threshold"].write_bytes(b"threshold-bytes")
    moved = tmp_path / "moved"
    drive.rename(moved)
    assert verify_lineage(moved / "models" / "x" / "lineage.json") == []
    (moved / "datasets" / "x" / "train.parquet").write_bytes(b"other")
    assert [d.split(":")[0] for d in verify_lineage(moved / "models" / "x" / "lineage.json")] == ["dataset_train"]
