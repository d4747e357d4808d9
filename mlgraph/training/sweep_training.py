"""candidate_models with sweeps: swept specs run their trials, the others train as usual, and each
swept spec's best trial (by cross-validated selection metric, direction-aware) becomes its candidate.

The best trial's model file and out-of-fold predictions are copied into the experiment's models
directory under the spec's name, so everything downstream (threshold, evaluation, promotion, ONNX)
treats it like any other spec; its params are the trial's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mlgraph.core.drive import DrivePaths
from mlgraph.core.experiment import ExperimentConfig, ModelSpec
from mlgraph.training import metrics as mt
from mlgraph.training.candidates import (
    ModelOutcome,
    TrainingOutcome,
    artifact_name,
    prepare_training_data,
    train_candidates,
)
from mlgraph.training.labels import selection_metric
from mlgraph.training.sweep_runners import Runner
from mlgraph.training.sweep_trial import FAILED, OOF_FILE
from mlgraph.training.sweeps import Progress, Sweep, SweepError, SweepOutcome

RunnerFor = Callable[[ModelSpec], Runner]
ProgressFor = Callable[[ModelSpec, str, str], Progress]  # spec, sweep key, metric


@dataclass
class SweptTraining:
    outcome: TrainingOutcome
    sweeps: dict[str, SweepOutcome]


def swept_specs(config: ExperimentConfig) -> list[ModelSpec]:
    return [spec for spec in config.model_specs if spec.sweep is not None]


def train_with_sweeps(
    config: ExperimentConfig,
    train: pd.DataFrame,
    drive: DrivePaths,
    dataset_sha256: str,
    runner_for: RunnerFor,
    progress_for: ProgressFor,
    where: str = "train.parquet",
    before_training: Callable[[dict[str, SweepOutcome]], None] | None = None,
) -> SweptTraining:
    """Run every spec's sweep, then train the unswept specs; one TrainingOutcome in config order."""
    start = time.perf_counter()
    data = prepare_training_data(train, config, where)
    metric = selection_metric(config, data.n_classes)
    sweeps: dict[str, SweepOutcome] = {}
    for spec in swept_specs(config):
        sweep = Sweep(
            config,
            spec,
            metric,
            dataset_sha256,
            drive.sweeps_dir(config.name) / spec.key / "trials",
            drive.dataset_path(config.name, "train"),
            drive.dataset_path(config.name, "test"),
            runner_for(spec),
        )
        sweep.progress = progress_for(spec, sweep.base, metric)
        sweeps[spec.key] = sweep.run()
        if sweeps[spec.key].best is None:
            raise SweepError(_no_best(spec, sweeps[spec.key]))
    if before_training is not None:
        before_training(sweeps)

    models_dir = drive.models_dir(config.name)
    plain = [spec for spec in config.model_specs if spec.sweep is None]
    trained = (
        train_candidates(config.model_copy(update={"models": plain}), train, models_dir, where=where) if plain else None
    )
    models: dict[str, ModelOutcome] = {}
    oof_parts = []
    for spec in config.model_specs:
        if spec.sweep is None:
            assert trained is not None
            models[spec.key] = trained.models[spec.key]
            oof_parts.append(trained.oof[trained.oof["model"] == spec.key])
        else:
            best = sweeps[spec.key].best
            assert best is not None
            trial_dir = drive.sweeps_dir(config.name) / spec.key / "trials" / best["key"]
            models[spec.key] = _best_outcome(spec, best, trial_dir, models_dir, data.task)
            oof_parts.append(pd.read_parquet(trial_dir / OOF_FILE))
    oof = pd.concat(oof_parts, ignore_index=True)
    n_jobs = trained.n_jobs if trained else 1
    outcome = TrainingOutcome(models, oof, data, n_jobs, time.perf_counter() - start, metric)
    return SweptTraining(outcome, sweeps)


def _best_outcome(spec: ModelSpec, best: dict[str, Any], trial_dir: Path, models_dir: Path, task: str) -> ModelOutcome:
    from mlgraph.training.model_files import copy_file

    target = models_dir / artifact_name(task, spec.key, spec.family)
    copy_file(trial_dir / best["artifact"], target)
    return ModelOutcome(
        name=spec.key,
        family=spec.family,
        spec=spec.model_copy(update={"params": {**spec.params, **best["params"]}, "sweep": None}),
        params=best["resolved_params"],
        artifact=target,
        artifact_sha256=best["artifact_sha256"],
        fit_seconds=best["fit_seconds"],
        cv_seconds=best["cv_seconds"],
        fold_metrics=best["fold_metrics"],
        cv=mt.summarize_folds(best["fold_metrics"]) if best["fold_metrics"] else best["cv"],
        history=best.get("history") or [],
        metadata={**(best.get("metadata") or {}), "sweep_trial": best["key"], "sweep_trial_number": best["number"]},
    )


def _no_best(spec: ModelSpec, outcome: SweepOutcome) -> str:
    failed = [r for r in outcome.records if r["status"] == FAILED]
    first = (
        f" First error (trial {failed[0]['number']}, {failed[0]['params']}): {failed[0].get('error')}" if failed else ""
    )
    return (
        f"models[{spec.key}].sweep: no trial finished ({len(failed)} failed, "
        f"{outcome.counts().get('pruned', 0)} pruned of {len(outcome.records)}), so the spec has no candidate.{first} "
        "Fix: correct the params or the spec's code and materialize candidate_models again (finished trials are kept)."
    )
