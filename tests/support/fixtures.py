"""Fixtures every test may use (tests/conftest.py imports them), and the config helper that goes with them.

A temporary shared drive, a copy of config/ and an ephemeral Dagster instance per test; the demo
generators' frames per module. The PostgreSQL fixture, `pg_url`, lives with its server in postgres.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import pytest

from mlgraph.core.drive import PROJECT_ROOT
from tests.support.instance import DEMO, dagster_instance

if TYPE_CHECKING:
    import pandas as pd


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
def instance(shared_drive: Path) -> Iterator[dg.DagsterInstance]:
    """An ephemeral instance with the demo experiments registered as partitions."""
    with dagster_instance(experiments=DEMO) as inst:
        yield inst


@pytest.fixture(scope="module")
def demo_frames() -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Train/test frames of the demo generators, 900 rows each (the last 180 are the test split)."""
    # Imported here: the deployment helpers load sklearn and onnx, which only the tests using them pay for.
    from mlgraph.data.generators import generate
    from tests.support.deployment import EXPERIMENT, demo_config

    frames = {}
    for task, name in EXPERIMENT.items():
        config = demo_config(name)
        data = generate(name, rows=900, seed=config.dataset.seed).to_pandas()
        frames[task] = (data.iloc[:720].reset_index(drop=True), data.iloc[720:].reset_index(drop=True))
    return frames


def shrink_experiment(config_dir: Path, name: str, rows: int) -> None:
    """Make a demo experiment small so tests stay fast (edits the copied YAML)."""
    import yaml

    path = config_dir / "experiments" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    data["dataset"]["rows"] = rows
    path.write_text(yaml.safe_dump(data, sort_keys=False))
