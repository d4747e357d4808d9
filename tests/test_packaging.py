"""What the distribution installs: four top-level packages, the dashboard's static files, a Dagster-free trainer kit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from mlgraph.core.drive import PROJECT_ROOT, DriveLayout

TOP_LEVEL = {"mlgraph", "pipeline_assets", "resources", "sensors"}


def _tracked_copy(target: Path) -> Path:
    """The files git tracks (what a clean clone holds), copied without build leftovers or the venv."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True, timeout=60
    ).stdout.split(b"\0")
    for rel in filter(None, (name.decode() for name in listed)):
        source = PROJECT_ROOT / rel
        if source.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / rel)
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = _tracked_copy(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the venv's setuptools builds it, so the test needs no download.
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    [built] = out.glob("mlgraph-*.whl")
    return built


def test_wheel_installs_exactly_four_top_level_packages(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [top_level_txt] = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        declared = set(archive.read(top_level_txt).decode().split())
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == TOP_LEVEL, f"top-level entries in the wheel: {sorted(tops)}"
    assert declared == TOP_LEVEL


def test_wheel_carries_the_dashboard_assets_and_the_console_script(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert {"mlgraph/dashboard/static/dashboard.js", "mlgraph/dashboard/static/dashboard.css"} <= names
    assert "mlgraph = mlgraph.cli.main:main" in scripts
    assert "pipeline_assets/definitions.py" in names and "mlgraph/launcher/slurm_launcher.py" in names


def test_trainer_example_runs_without_dagster_or_a_path_edit(tmp_path: Path):
    """examples/train_external.py on a 'GPU box': the installed library, a drive, no Dagster loaded."""
    from mlgraph.data.generators import generate

    drive = tmp_path / "drive"
    train = DriveLayout(drive).dataset_path("salary", "train")
    train.parent.mkdir(parents=True)
    generate("salary", rows=300, seed=0).to_pandas().to_parquet(train)
    runner = textwrap.dedent(
        f"""
        import json, runpy, sys
        sys.argv = ["train_external.py", "--experiment", "salary", "--epochs", "1", "--no-signal", "--no-mlflow",
                    "--shared-drive", {str(drive)!r}]
        try:
            runpy.run_path({str(PROJECT_ROOT / "examples" / "train_external.py")!r}, run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code
        loaded = sorted(m for m in sys.modules if m.split(".")[0].startswith("dagster"))
        print(json.dumps({{"exit": code, "dagster_modules": loaded, "project_on_path": any(
            p.rstrip("/") == {str(PROJECT_ROOT)!r} for p in sys.path)}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env["MLGRAPH_CONFIG_DIR"] = str(PROJECT_ROOT / "config")
    # Run from outside the repository, so nothing but the installed package can provide `mlgraph`.
    out = subprocess.run(
        [sys.executable, "-c", runner], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["exit"] in (0, None), out.stderr[-3000:]
    assert result["dagster_modules"] == []
    assert result["project_on_path"] is False
    assert list((DriveLayout(drive).models_dir("salary") / "checkpoints").glob("*/final/model.pt"))


def test_dashboard_static_files_load_as_package_resources():
    from mlgraph.dashboard.render import static_text

    for name in ("dashboard.css", "dashboard.js"):
        on_disk = (PROJECT_ROOT / "mlgraph" / "dashboard" / "static" / name).read_text(encoding="utf-8")
        assert on_disk and static_text(name) == on_disk
