"""The code location loads, validates, and keeps heavy libraries out of its import."""

import json
import subprocess
import sys

import dagster as dg

from pipeline_assets.definitions import defs
from core.drive import PROJECT_ROOT

HEAVY = ["torch", "mlflow", "onnxruntime", "matplotlib", "sklearn.ensemble", "prophet", "dagster_mlflow"]


def test_definitions_validate_loadable():
    dg.Definitions.validate_loadable(defs)


def test_data_assets_and_partitions():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"raw_dataset", "dataset_fingerprint", "train_test_split"} <= keys
    assert graph.get(dg.AssetKey("raw_dataset")).partitions_def.name == "experiment"
    assert defs.resolve_job_def("data_job") is not None
    assert defs.resolve_sensor_def("experiment_config_sensor") is not None


def test_import_keeps_heavy_libraries_out():
    code = (
        "import sys, json, pipeline_assets; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
