"""The model-file contract: what each training asset reads and writes on the drive, and its data version.

    datasets/{experiment}/meta.json       read: the split's digests name the data a model was trained on
    models/{experiment}/candidates.json   candidate_models: per model spec (by name; "families" for history)
                                          family, artifact, hash, MLflow run, CV
    models/{experiment}/oof_predictions.parquet   candidate_models: out-of-fold predictions
    models/{experiment}/thresholds.json, threshold.txt   decision_threshold (binary classification;
                                          a multiclass target gets thresholds.json saying "argmax, no threshold")

Plain Python: every path comes from a `mlgraph.core.drive.DrivePaths` (the SharedDrive resource is one), and
each reader names the asset to materialize when its file is missing or stale.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from mlgraph.core.atomic import atomic_path, atomic_write_json, atomic_write_text
from mlgraph.core.drive import DrivePaths
from mlgraph.core.experiment import ExperimentConfig, LoadedExperiment
from mlgraph.core.hashing import sha256_text
from mlgraph.training.labels import plain


def read_json(path: Path, producer: str) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing. Fix: materialize {producer} for this experiment first.")
    return json.loads(path.read_text(encoding="utf-8"))


def split_meta(drive: DrivePaths, experiment: str) -> dict[str, Any]:
    """train_test_split's meta.json plus `dataset_sha256`, the digest of the train and test splits."""
    path = drive.dataset_meta(experiment)
    meta = read_json(path, "train_test_split")
    for key in ("train_sha256", "test_sha256"):
        if key not in meta:
            raise ValueError(f"{path}: field {key!r} missing. Fix: materialize train_test_split again.")
    # The digest train_test_split uses as its data version: it names the data a model was trained on.
    meta["dataset_sha256"] = sha256_text(meta["train_sha256"] + meta["test_sha256"])
    return meta


def read_split(drive: DrivePaths, experiment: str, split: str) -> pd.DataFrame:
    path = drive.dataset_path(experiment, split)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing. Fix: materialize train_test_split for {experiment!r} first.")
    return pd.read_parquet(path)


def current_manifest(drive: DrivePaths, loaded: LoadedExperiment, meta: Mapping[str, Any]) -> dict[str, Any]:
    """candidates.json, provided it was trained for this config and this split."""
    path = drive.candidates_manifest(loaded.config.name)
    manifest = read_json(path, "candidate_models")
    trained_for = (manifest.get("config_hash"), manifest.get("dataset_sha256"))
    if trained_for != (loaded.config.config_hash, meta["dataset_sha256"]):
        raise ValueError(
            f"{path} was trained for another config or dataset than {loaded.path} and the current split. "
            "Fix: materialize candidate_models again."
        )
    return manifest


def classes(manifest: Mapping[str, Any]) -> list[Any] | None:
    """The class labels a classifier was trained on (None for other tasks)."""
    return manifest.get("classes")


def is_multiclass(manifest: Mapping[str, Any]) -> bool:
    """Whether candidates.json was trained on a target with three or more classes."""
    return len(manifest.get("classes") or ()) > 2


def selection_metric(manifest: Mapping[str, Any], config: ExperimentConfig) -> str:
    """The metric candidate_models resolved for this target (multiclass default: f1_macro)."""
    return manifest.get("selection_metric") or config.selection_metric


def cv_scores(manifest: Mapping[str, Any], metric: str) -> dict[str, float]:
    """model name → mean cross-validated `metric`."""
    return {name: entry["cv"][metric]["mean"] for name, entry in manifest["families"].items()}


def artifacts(drive: DrivePaths, experiment: str, manifest: Mapping[str, Any]) -> dict[str, Path]:
    """model name → its saved model file."""
    return {name: drive.models_dir(experiment) / entry["artifact"] for name, entry in manifest["families"].items()}


def model_family(manifest: Mapping[str, Any], name: str) -> str:
    """The family of model `name` (manifests written before spec names: the name is the family)."""
    return manifest["families"][name].get("family", name)


def write_oof(drive: DrivePaths, config: ExperimentConfig, outcome: Any) -> Path:
    """oof_predictions.parquet, written before anything talks to MLflow: a tracking server that dies
    mid-run must not cost the cross-validation results (the fitted models are already on the drive)."""
    path = drive.oof_predictions(config.name)
    with atomic_path(path) as tmp:
        outcome.oof.to_parquet(tmp, index=False)
    return path


def write_candidates(
    drive: DrivePaths,
    config: ExperimentConfig,
    meta: Mapping[str, Any],
    outcome: Any,
    run_ids: Mapping[str, str],
    dagster_run_id: str,
    parent_run_id: str,
) -> Path:
    """candidates.json (`outcome` is a candidates.TrainingOutcome), written once the MLflow runs exist."""
    return atomic_write_json(
        drive.candidates_manifest(config.name),
        {
            "experiment": config.name,
            "task": config.task,
            "config_hash": config.config_hash,
            "dataset_sha256": meta["dataset_sha256"],
            "train_sha256": meta["train_sha256"],
            "test_sha256": meta["test_sha256"],
            "selection_metric": outcome.selection_metric or config.selection_metric,
            "dagster_run_id": dagster_run_id,
            "parent_run_id": parent_run_id,
            "positive_label": plain(outcome.data.positive_label),
            **({"classes": list(outcome.data.classes)} if outcome.data.classes is not None else {}),
            "scale": outcome.data.scale,
            **({"series": outcome.data.series} if outcome.data.series is not None else {}),  # forecasting gaps
            "features": outcome.data.features.to_dict() if outcome.data.features else None,
            "workers": outcome.n_jobs,
            "wall_seconds": round(outcome.wall_seconds, 3),
            # Keyed by spec name (the family unless the spec names itself); the key predates names.
            "families": {
                name: {
                    "family": r.family,
                    **({"import_path": r.spec.import_path} if r.spec.import_path else {}),
                    "artifact": r.artifact.name,
                    "artifact_sha256": r.artifact_sha256,
                    "run_id": run_ids[name],
                    "model_uri": f"runs:/{run_ids[name]}/{name}",
                    "params": r.params,
                    "fit_seconds": round(r.fit_seconds, 3),
                    "cv_seconds": round(r.cv_seconds, 3),
                    "cv": r.cv,
                    "folds": r.fold_metrics,
                    "epochs_run": len(r.history) or None,
                    "best_epoch": r.metadata.get("best_epoch"),
                }
                for name, r in outcome.models.items()
            },
        },
    )


def candidates_version(outcome: Any) -> str:
    """The data version of candidate_models: what the models do, not their bytes.

    Pickle bytes can differ between identical fits (memo sharing across worker processes), so this
    hashes the fold metrics and the out-of-fold predictions: deterministic training, same version.
    """
    semantic = json.dumps({name: r.fold_metrics for name, r in outcome.models.items()}, sort_keys=True)
    semantic += str(pd.util.hash_pandas_object(outcome.oof, index=False).sum())
    return sha256_text(semantic)


def read_oof(drive: DrivePaths, experiment: str) -> pd.DataFrame:
    path = drive.oof_predictions(experiment)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing. Fix: materialize candidate_models for this experiment first.")
    return pd.read_parquet(path)


def write_thresholds(drive: DrivePaths, config: ExperimentConfig, results: Mapping[str, Any], chosen: str) -> Path:
    """thresholds.json (every spec's ThresholdResult) and threshold.txt (the chosen spec's cut-off)."""
    atomic_write_json(
        drive.thresholds_json(config.name),
        {
            "precision_target": config.precision_target,
            "champion_candidate": chosen,
            "config_hash": config.config_hash,
            "families": {f: r.to_dict() for f, r in results.items()},
        },
    )
    return atomic_write_text(drive.threshold_txt(config.name), f"{results[chosen].threshold!r}\n")


ARGMAX_DECISION = "argmax, no threshold"


def write_argmax_decision(
    drive: DrivePaths, config: ExperimentConfig, manifest: Mapping[str, Any], chosen: str
) -> Path:
    """thresholds.json of a multiclass target: the label is the most probable class, nothing is calibrated.

    A threshold.txt left by an earlier binary target of this experiment is removed, so nothing promotes it.
    """
    drive.threshold_txt(config.name).unlink(missing_ok=True)
    return atomic_write_json(
        drive.thresholds_json(config.name),
        {
            "decision": ARGMAX_DECISION,
            "precision_target": None,
            "champion_candidate": chosen,
            "config_hash": config.config_hash,
            "classes": classes(manifest),
            "families": {},
        },
    )


def read_thresholds(drive: DrivePaths, experiment: str) -> dict[str, float]:
    """model name → calibrated threshold, from thresholds.json."""
    recorded = read_json(drive.thresholds_json(experiment), "decision_threshold")
    return {name: r["threshold"] for name, r in recorded["families"].items()}


def thresholds_version(results: Mapping[str, Any]) -> str:
    return sha256_text(repr(sorted((f, r.threshold) for f, r in results.items())))


def copy_file(source: Path, target: Path) -> Path:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target
