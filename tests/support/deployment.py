"""Shared by the deployment tests: a promoted champion fitted on small demo data, and a broken export.

The demo frames it fits on are the `demo_frames` fixture (tests/support/fixtures.py).
"""

from __future__ import annotations

from pathlib import Path

import joblib
from onnx import numpy_helper

from mlgraph.core.drive import PROJECT_ROOT, DriveLayout
from mlgraph.core.experiment import ExperimentConfig, load_experiment_file
from mlgraph.core.hashing import sha256_file
from mlgraph.deployment import export
from mlgraph.deployment.champion import read_champion
from mlgraph.training import families as fam
from mlgraph.training.promotion import PromotionStore

EXPERIMENT = {"classification": "student_engagement", "regression": "salary"}
# Small but real: forests and boosting shrunk so the whole file stays quick on two cores.
SMALL = {"random_forest": {"n_estimators": 25}, "hist_gradient_boosting": {"max_iter": 30}}


def demo_config(name: str) -> ExperimentConfig:
    return load_experiment_file(PROJECT_ROOT / "config" / "experiments" / f"{name}.yaml").config


def promote(
    drive: DriveLayout,
    config: ExperimentConfig,
    family: str,
    model_file: Path,
    version: str = "1",
    threshold: float | None = None,
) -> None:
    """What champion_model leaves behind: the bundle file and the promotion pointer."""
    pointer = {
        "model_path": str(model_file),
        "model_type": family,
        "model_version": version,
        "run_id": f"run-{family}-{version}",
        "artifact_sha256": sha256_file(model_file),
        "config_hash": config.config_hash,
        "experiment": config.name,
    }
    if threshold is not None:
        pointer["threshold"] = threshold
    PromotionStore(drive.promotion_dir(config.config_hash)).promote(pointer)


def tabular_champion(drive: DriveLayout, task: str, family: str, frames, edit=None) -> ExperimentConfig:
    """Fit `family` on the demo frames, write the splits and promote it; returns the experiment config."""
    config = demo_config(EXPERIMENT[task])
    train, test = frames[task]
    if edit is not None:
        train, test = edit(train.copy()), edit(test.copy())
    for split, frame in (("train", train), ("test", test)):
        path = drive.dataset_path(config.name, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
    spec = fam.feature_spec(train, config)
    params = {**fam.resolved_params(task, family, config.model_params(family)), **SMALL.get(family, {})}
    model = fam.build_model(task, family, params, spec, config.seed)
    y = train[config.target]
    model.fit(fam.prepare_frame(train, spec), (y == y.max()).astype(int) if task == "classification" else y)
    path = drive.champion_bundle(config.name, "1") / f"{family}.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    promote(drive, config, family, path, threshold=0.35 if task == "classification" else None)
    return config


def export_current(drive: DriveLayout, config: ExperimentConfig) -> export.ExportOutcome:
    champion = read_champion(drive, config)
    return export.export_champion(drive, champion, champion.load())


def perturb_first_weight(model) -> None:
    """Change one weight of the estimator (a deliberately broken export)."""
    weight = next(i for i in model.graph.initializer if i.name == "est_weight")
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += 5.0
    weight.CopyFrom(numpy_helper.from_array(values, "est_weight"))
