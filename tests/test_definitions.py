"""The code location loads, validates, and keeps heavy libraries out of its import."""

import json
import os
import subprocess
import sys

import dagster as dg

from mlgraph.core.drive import PROJECT_ROOT
from mlgraph.core.tags import COMPUTE_SLURM, COMPUTE_TAG
from pipeline_assets.data.source_assets import EXPERIMENT_SOURCE
from pipeline_assets.definitions import ASSET_GROUPS, defs

HEAVY = [
    "torch",
    "mlflow",
    "onnxruntime",
    "onnx",
    "skl2onnx",
    "matplotlib",
    "sklearn.ensemble",
    "prophet",
    "dagster_mlflow",
]


def test_definitions_validate_loadable():
    dg.Definitions.validate_loadable(defs)


def test_data_assets_and_partitions():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"raw_dataset", "dataset_fingerprint", "train_test_split"} <= keys
    assert graph.get(dg.AssetKey("raw_dataset")).partitions_def.name == "experiment"
    assert defs.resolve_job_def("data_job").name == "data_job"  # raises when it is missing
    assert defs.resolve_sensor_def("experiment_config_sensor").name == "experiment_config_sensor"


def test_every_asset_has_a_code_version_and_a_group():
    graph = defs.resolve_asset_graph()
    for key in graph.materializable_asset_keys:
        node = graph.get(key)
        assert node.code_version, f"{key.to_user_string()} has no code_version"
        assert node.group_name in ASSET_GROUPS, f"{key.to_user_string()} is in group {node.group_name!r}"


def test_automation_covers_the_graph_but_the_signal_driven_assets():
    graph = defs.resolve_asset_graph()
    signal_driven = {"checkpoint_evaluation", "checkpoint_comparison_report", "drift_report"}  # drift_report: on demand
    for key in graph.materializable_asset_keys:
        condition = graph.get(key).automation_condition
        if key.to_user_string() in signal_driven:
            assert condition is None, key
        else:
            assert condition is not None and condition.get_label() == "keep_fresh", key
    # A changed source file reaches the graph through raw_dataset's observed upstream.
    source = graph.get(EXPERIMENT_SOURCE)
    assert source.is_observable and EXPERIMENT_SOURCE in graph.get(dg.AssetKey("raw_dataset")).parent_keys
    assert defs.resolve_sensor_def("experiment_source_sensor").default_status == dg.DefaultSensorStatus.RUNNING


def test_automation_sensors_run_by_default_and_route_heavy_runs_to_slurm():
    graph = defs.resolve_asset_graph()
    local, slurm = (defs.resolve_sensor_def(n) for n in ("automation_sensor", "slurm_automation_sensor"))
    for sensor in (local, slurm):
        assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    local_keys, slurm_keys = local.asset_selection.resolve(graph), slurm.asset_selection.resolve(graph)
    automated = {k for k in graph.materializable_asset_keys if graph.get(k).automation_condition is not None}
    assert local_keys | slurm_keys == automated and not local_keys & slurm_keys
    heavy = {
        "candidate_models",
        "decision_threshold",
        "evaluation_metrics",
        "champion_model",
        "sweep_results",  # in the training group: it runs in the same (Slurm) run as the sweep it reports
        "streaming_features",
        "constraint_probe_result",
    }
    assert {k.to_user_string() for k in slurm_keys} == heavy
    assert slurm.run_tags[COMPUTE_TAG] == COMPUTE_SLURM and COMPUTE_TAG not in local.run_tags
    # The jobs that run the same assets by hand carry the same tags.
    assert defs.resolve_job_def("training_job").tags[COMPUTE_TAG] == COMPUTE_SLURM


def test_constraint_partitions_come_from_the_configured_config_dir(tmp_path):
    (tmp_path / "constraints.yaml").write_text("chunk_sizes: [500]\nmemory_limits_mb: [128]\ncompute_limits: [0.5]\n")
    code = "from pipeline_assets.partitions import constraint_partitions_def as d; print(d.get_partition_keys())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "MLGRAPH_CONFIG_DIR": str(tmp_path)},
    )
    assert out.stdout.strip().splitlines()[-1] == "['c500-m128-p50']"


def test_import_keeps_heavy_libraries_out():
    code = (
        f"import sys, json, pipeline_assets.definitions; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
