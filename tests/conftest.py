"""Shared fixtures: a temporary shared drive, config dir and Dagster instance per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from mlgraph.core.drive import PROJECT_ROOT

DEMO = ["salary", "student_engagement", "demand_forecast"]


@pytest.fixture
def shared_drive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh shared drive; SHARED_DRIVE points at it so default-configured resources use it."""
    root = tmp_path / "shared"
    root.mkdir()
    monkeypatch.setenv("SHARED_DRIVE", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of config/ that a test may edit; MLGRAPH_CONFIG_DIR points at it."""
    target = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", target)
    monkeypatch.setenv("MLGRAPH_CONFIG_DIR", str(target))
    return target


@pytest.fixture
def instance(shared_drive: Path):
    """An ephemeral instance with the demo experiments registered as partitions."""
    with dg.DagsterInstance.ephemeral() as inst:
        inst.add_dynamic_partitions("experiment", DEMO)
        yield inst


def shrink_experiment(config_dir: Path, name: str, rows: int) -> None:
    """Make a demo experiment small so tests stay fast (edits the copied YAML)."""
    import yaml

    path = config_dir / "experiments" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    data["dataset"]["rows"] = rows
    path.write_text(yaml.safe_dump(data, sort_keys=False))
