"""Command lines as users run them: `mlgraph init/register/generate` and `dagster asset materialize`."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from mlgraph.core.drive import PROJECT_ROOT
from tests.support import dagster_instance
from tests.support.fixtures import shrink_experiment

BIN = Path(sys.executable).parent


def run(args, env, timeout=180):
    return subprocess.run(args, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def cli_env(tmp_path, shared_drive, config_dir):
    return {
        **os.environ,
        "SHARED_DRIVE": str(shared_drive),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "MLGRAPH_CONFIG_DIR": str(config_dir),
    }


def test_dagster_asset_materialize_from_repo_root(tmp_path, shared_drive, config_dir, monkeypatch):
    shrink_experiment(config_dir, "salary", 2000)
    env = cli_env(tmp_path, shared_drive, config_dir)
    init = run([str(BIN / "mlgraph"), "init"], env)
    assert init.returncode == 0, init.stderr
    assert "experiments registered: demand_forecast, salary, student_engagement" in init.stdout
    assert (tmp_path / "dagster_home" / "dagster.yaml").resolve() == PROJECT_ROOT / "dagster.yaml"

    cmd = [
        str(BIN / "dagster"),
        "asset",
        "materialize",
        "-m",
        "pipeline_assets.definitions",
        "--select",
        "raw_dataset",
        "--partition",
        "salary",
    ]
    result = run(cmd, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert pq.read_metadata(shared_drive / "datasets" / "salary" / "raw.parquet").num_rows == 2000

    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    with dagster_instance(tmp_path / "dagster_home") as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("raw_dataset"))
        assert event is not None and event.dagster_event.partition == "salary"


def test_register_rejects_a_bad_config(tmp_path, shared_drive, config_dir):
    (config_dir / "experiments" / "broken.yaml").write_text("name: broken\ntask: regression\ntarget: y\n")
    result = run([str(BIN / "mlgraph"), "register"], cli_env(tmp_path, shared_drive, config_dir))
    assert result.returncode == 2
    assert "broken.yaml" in result.stderr and "field 'dataset'" in result.stderr


def test_generate_writes_requested_rows(tmp_path, shared_drive, config_dir):
    out = tmp_path / "big.csv"
    result = run(
        [str(BIN / "mlgraph"), "generate", "student_engagement", "--rows", "25000", "--out", str(out)],
        cli_env(tmp_path, shared_drive, config_dir),
    )
    assert result.returncode == 0, result.stderr
    assert sum(1 for _ in out.open()) == 25001


def test_demo_stage_plan_follows_the_graph():
    from mlgraph.cli.staging import plan_stages
    from pipeline_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    stages = plan_stages(defs)
    assert [s.name for s in stages] == [
        "experiment",
        "experiment x constraint",
        "experiment (after experiment x constraint)",
    ]
    position = {key: i for i, stage in enumerate(stages) for key in stage.keys}
    # Every automated asset, each after its parents; nothing a trainer's signal starts.
    assert {k.to_user_string() for k in position} >= {
        "raw_dataset",
        "champion_model",
        "constraint_probe_result",
        "run_summary",
    }
    assert not {"checkpoint_evaluation", "checkpoint_comparison_report"} & {k.to_user_string() for k in position}
    for key, stage in position.items():
        assert all(position[p] <= stage for p in graph.get(key).parent_keys if p in position), key
    assert all(graph.get(k).partitions_def == graph.get(s.keys[0]).partitions_def for s in stages for k in s.keys)


def test_demo_names_a_missing_dataset_file(tmp_path, shared_drive, config_dir):
    (config_dir / "experiments" / "homes.yaml").write_text(
        "name: homes\ntask: regression\ndataset:\n  path: data/homes.csv\ntarget: price\n"
    )
    result = run([str(BIN / "mlgraph"), "demo", "homes"], cli_env(tmp_path, shared_drive, config_dir))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "homes.yaml" in result.stderr and "field 'dataset.path'" in result.stderr and "Fix:" in result.stderr
