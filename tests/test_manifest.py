"""run_manifest.json and `mlgraph verify`: every hash recomputed, one changed byte is caught."""

import json
import subprocess
import sys

import pytest

from mlgraph.analysis.manifest import build_manifest, verify_manifest
from mlgraph.core.drive import PROJECT_ROOT
from mlgraph.core.experiment import load_experiment_file
from tests.test_analysis_assets import materialize_salary, small_salary


def flip_one_byte(path, offset=100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def drive(tmp_path, config_dir):
    """A hand-made drive with a few files and a manifest over them (no Dagster)."""
    root = tmp_path / "drive"
    files = {
        "datasets/salary/raw.parquet": b"raw bytes " * 50,
        "datasets/salary/train.parquet": b"train bytes " * 50,
        "artifacts/salary/benchmarks/constraint_experiment.csv": b"chunk_size,peak_memory_mb\n2000,1.5\n",
    }
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    loaded = load_experiment_file(config_dir / "experiments" / "salary.yaml")
    manifest = build_manifest(
        root,
        "salary",
        loaded.config,
        loaded.path,
        [root / r for r in files],
        "run-1",
        {"source_sha256": "abc", "fingerprint": "def", "rows": 10},
    )
    path = root / "artifacts" / "salary" / "metadata" / "run_manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))
    return root, path, config_dir / "experiments" / "salary.yaml"


def test_manifest_contents(drive):
    root, path, _ = drive
    manifest = json.loads(path.read_text())
    assert set(manifest["files"]) == {
        "datasets/salary/raw.parquet",
        "datasets/salary/train.parquet",
        "artifacts/salary/benchmarks/constraint_experiment.csv",
    }
    assert manifest["dataset"]["sha256"] == manifest["files"]["datasets/salary/raw.parquet"]
    assert len(manifest["config_hash"]) == 64 and manifest["seeds"]["split"] == 42
    assert manifest["packages"]["pyarrow"] and manifest["python"].count(".") == 2
    assert manifest["dagster_run_id"] == "run-1" and "commit" in manifest["git"]
    assert verify_manifest(path) == []


def test_verify_names_changed_missing_files_and_config(drive):
    root, path, config = drive
    flip_one_byte(root / "datasets/salary/train.parquet")
    (root / "artifacts/salary/benchmarks/constraint_experiment.csv").unlink()
    config.write_text(config.read_text().replace("test_size: 0.2", "test_size: 0.25"))
    differences = verify_manifest(path)
    assert any(d.startswith("datasets/salary/train.parquet: SHA-256 changed") for d in differences)
    assert any(d.startswith("artifacts/salary/benchmarks/constraint_experiment.csv: missing") for d in differences)
    assert any("config hash changed" in d for d in differences)
    assert not any(d.startswith("datasets/salary/raw.parquet") for d in differences)


def test_verify_rejects_what_is_not_a_manifest(tmp_path):
    path = tmp_path / "run_manifest.json"
    path.write_text('{"experiment": "x"}')
    with pytest.raises(ValueError, match="not a run manifest"):
        verify_manifest(path)


def test_mlgraph_verify_after_materialization(instance, shared_drive, config_dir):
    small_salary(config_dir, rows=3000, significance_runs=2)
    materialize_salary(instance)
    path = shared_drive / "artifacts" / "salary" / "metadata" / "run_manifest.json"
    manifest = json.loads(path.read_text())
    covered = set(manifest["files"])
    assert {
        "datasets/salary/raw.parquet",
        "datasets/salary/train.parquet",
        "artifacts/salary/batch/features.parquet",
        "artifacts/salary/constraints/c2000-m256-p50/features.parquet",
        "artifacts/salary/benchmarks/significance_tests.csv",
        "artifacts/salary/plots/memory_vs_accuracy.png",
    } <= covered

    def verify():
        return subprocess.run(
            [sys.executable, "-m", "mlgraph.cli.main", "verify", str(path)],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = verify()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith(": OK")
    flip_one_byte(shared_drive / "datasets" / "salary" / "train.parquet")
    bad = verify()
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "1 difference(s)" in bad.stdout and "datasets/salary/train.parquet: SHA-256 changed" in bad.stdout


def test_verify_needs_the_manifest_in_its_drive_layout(drive, tmp_path):
    """The recorded paths are relative to the drive, so a manifest moved out of it cannot be checked."""
    _, path, _ = drive
    moved = tmp_path / "elsewhere" / "run_manifest.json"
    moved.parent.mkdir()
    moved.write_bytes(path.read_bytes())
    with pytest.raises(
        ValueError,
        match=r"not where a run manifest of experiment 'salary' lives.*"
        r"artifacts/salary/metadata/run_manifest.json",
    ):
        verify_manifest(moved)
