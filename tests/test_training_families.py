"""Model families, CV splits, threshold calibration, metrics and determinism, on tiny data (no Dagster)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mlgraph.core import metrics as core_metrics
from mlgraph.core.experiment import ExperimentConfig
from mlgraph.training import families as fam
from mlgraph.training import forecasting as fc
from mlgraph.training import metrics as mt
from mlgraph.training.candidates import train_candidates
from mlgraph.training.cv import cv_splits
from mlgraph.training.promotion import select_champion
from mlgraph.training.threshold import calibrate_threshold
from tests.support import wait_for


def _config(task: str, **extra) -> ExperimentConfig:
    generator = {"classification": "student_engagement", "regression": "salary", "forecasting": "demand_forecast"}[task]
    data = {"name": "tiny", "task": task, "dataset": {"generator": generator}, "target": "y", **extra}
    if task == "forecasting":
        data.setdefault("time_column", "ts")
    return ExperimentConfig.model_validate(data)


def _tabular(n: int, task: str, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], n)
    flag = rng.random(n) < 0.5
    signal = 2.0 * x1 - x2 + np.where(colour == "red", 1.0, 0.0)
    x2_gappy = x2.copy()
    x2_gappy[rng.random(n) < 0.05] = np.nan  # the pipelines must impute
    frame = pd.DataFrame({"x1": x1, "x2": x2_gappy, "colour": colour, "flag": flag})
    if task == "classification":
        frame["y"] = (signal + rng.normal(scale=0.5, size=n) > 0).astype(np.int64)
    else:
        frame["y"] = 10.0 * signal + rng.normal(scale=1.0, size=n)
    return frame


@pytest.mark.parametrize("family", fam.DEFAULT_PARAMS["classification"])
def test_classifier_fits_and_scores(family: str) -> None:
    config = _config("classification")
    train, test = _tabular(240, "classification", 1), _tabular(120, "classification", 2)
    spec = fam.feature_spec(train, config)
    assert spec == fam.FeatureSpec(numeric=("x1", "x2", "flag"), categorical=("colour",))
    model = fam.build_model("classification", family, fam.resolved_params("classification", family, {}), spec, seed=0)
    model.fit(fam.prepare_frame(train, spec), train["y"])
    scores = fam.positive_scores(model, fam.prepare_frame(test, spec))
    assert scores.shape == (120,) and np.all((scores >= 0) & (scores <= 1))
    result = core_metrics.classification_metrics(test["y"].to_numpy(), scores, threshold=0.5)
    assert set(result) == set(core_metrics.CLASSIFICATION_METRICS)
    assert all(0.0 <= v <= 1.0 for v in result.values())
    assert result["roc_auc"] > 0.8, f"{family} should separate a linear signal: {result}"
    # A served model takes raw rows, unseen categories included.
    raw = test.drop(columns="y").head(2).assign(colour=["purple", None])
    assert np.all(np.isfinite(fam.positive_scores(model, fam.prepare_frame(raw, spec))))


@pytest.mark.parametrize("family", fam.DEFAULT_PARAMS["regression"])
def test_regressor_fits_and_predicts(family: str) -> None:
    config = _config("regression")
    train, test = _tabular(240, "regression", 1), _tabular(120, "regression", 2)
    spec = fam.feature_spec(train, config)
    model = fam.build_model("regression", family, fam.resolved_params("regression", family, {}), spec, seed=0)
    model.fit(fam.prepare_frame(train, spec), train["y"])
    result = core_metrics.regression_metrics(
        test["y"].to_numpy(), fam.predict("regression", model, fam.prepare_frame(test, spec))
    )
    assert result["rmse"] >= result["mae"] > 0
    assert 0.5 < result["r2"] <= 1.0, f"{family}: {result}"


def test_family_params_are_the_design_defaults_and_overridable() -> None:
    assert fam.resolved_params("classification", "random_forest", {}) == {"n_estimators": 400, "min_samples_leaf": 2}
    assert fam.resolved_params("classification", "knn", {"n_neighbors": 3}) == {"n_neighbors": 3}
    spec = fam.FeatureSpec(("x1",), ())
    with pytest.raises(ValueError, match="invalid params"):
        fam.build_model("classification", "decision_tree", {"max_depht": 3}, spec, 0)


def _series(n: int = 360, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 50 + 10 * np.sin(2 * np.pi * t / 24) + 0.02 * t + rng.normal(scale=1.0, size=n)
    ts = np.datetime64("2024-01-01T00", "h") + t.astype("timedelta64[h]")
    return y, ts


TINY_FORECAST = {
    "window": 12,
    "seasonal_period": 24,
    "epochs": 8,
    "patience": 8,
    "hidden_size": 8,
    "batch_size": 32,
    "learning_rate": 0.01,
}


@pytest.mark.parametrize("family", ["gru", "lstm", "prophet", "seasonal_naive"])
def test_forecaster_fits_predicts_and_round_trips(family: str, tmp_path) -> None:
    cfg = _config("forecasting", forecast=TINY_FORECAST).forecast
    y, ts = _series()
    fit = fc.fit_forecaster(family, y[:300], ts[:300], cfg, {}, seed=0)
    positions = np.arange(300, 360)
    preds = fc.predict_forecaster(fit, y, ts, positions)
    assert preds.shape == (60,) and np.all(np.isfinite(preds))
    scores = mt.forecast_metrics(
        y[positions], preds, {"rmse": 0.5, "mae": 0.3, "mse": 0.2}, scale=float(np.std(y[:300]))
    )
    assert 0 < scores["composite"] < 1.0, f"{family} should beat predicting the mean: {scores}"
    path = fc.save_forecaster(fit, tmp_path / f"{family}{fc.ARTIFACT_SUFFIX[family]}")
    again = fc.predict_forecaster(fc.load_forecaster(family, path), y, ts, positions)
    np.testing.assert_allclose(again, preds, rtol=0, atol=1e-9)


@pytest.mark.parametrize("family", ["gru", "lstm"])
def test_recurrent_training_loss_decreases_and_early_stopping_restores_best(family: str) -> None:
    cfg = _config("forecasting", forecast=TINY_FORECAST).forecast
    y, ts = _series()
    fit = fc.fit_forecaster(family, y, ts, cfg, {}, seed=0)
    losses = [h["train_loss"] for h in fit.history]
    assert len(losses) == 8 and all(set(h) == {"epoch", "train_loss", "val_loss"} for h in fit.history)
    assert losses[-1] < 0.7 * losses[0], losses
    best = min(h["val_loss"] for h in fit.history)
    assert fit.metadata["best_val_loss"] == best
    assert fit.history[fit.metadata["best_epoch"] - 1]["val_loss"] == best
    stopped = fc.fit_forecaster(family, y, ts, cfg.model_copy(update={"epochs": 50, "patience": 1}), {}, seed=0)
    assert len(stopped.history) < 50  # patience 1 stops at the first epoch without improvement


def test_cuda_device_trains_there_or_fails_clearly() -> None:
    import torch

    cfg = _config("forecasting", forecast={**TINY_FORECAST, "device": "cuda"}).forecast
    y, ts = _series()
    if not torch.cuda.is_available():
        # CI and these machines: asking for CUDA must fail loudly, never fall back to the CPU.
        with pytest.raises(RuntimeError, match="forecast.device is 'cuda' but torch sees no CUDA device.*Fix:"):
            fc.fit_forecaster("gru", y, ts, cfg, {}, seed=0)
        return
    fit = fc.fit_forecaster("gru", y, ts, cfg, {}, seed=0)
    assert fit.metadata["device"] == "cuda"
    assert all(p.device.type == "cpu" for p in fit.model.parameters())  # saved and served from the CPU


def test_cuda_determinism_setting_is_scoped_to_training(monkeypatch) -> None:
    import os

    import torch

    monkeypatch.delenv(fc.CUBLAS_WORKSPACE_ENV, raising=False)
    before = dict(os.environ)
    # Deterministic cuBLAS reads the workspace setting while the CUDA block runs, and only then needs it.
    with fc.torch_deterministic(0, device_type="cuda"):
        assert os.environ[fc.CUBLAS_WORKSPACE_ENV] == fc.CUBLAS_DETERMINISTIC_WORKSPACE
    assert dict(os.environ) == before
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert fc.torch_device("cuda").type == "cuda"
    assert dict(os.environ) == before
    # A value the user set is theirs: used in the block and kept after it.
    monkeypatch.setenv(fc.CUBLAS_WORKSPACE_ENV, ":16:8")
    with fc.torch_deterministic(0, device_type="cuda"):
        assert os.environ[fc.CUBLAS_WORKSPACE_ENV] == ":16:8"
    assert os.environ[fc.CUBLAS_WORKSPACE_ENV] == ":16:8"


def test_recurrent_model_file_bytes_depend_only_on_the_model(tmp_path) -> None:
    cfg = _config("forecasting", forecast={**TINY_FORECAST, "epochs": 2}).forecast
    y, ts = _series()
    fit = fc.fit_forecaster("gru", y, ts, cfg, {}, seed=0)
    first = fc.save_forecaster(fit, tmp_path / "a" / "gru.pt")
    second = fc.save_forecaster(fit, tmp_path / "b" / "gru.pt")
    assert first.read_bytes() == second.read_bytes()


def test_seasonal_naive_repeats_last_season() -> None:
    cfg = _config("forecasting", forecast={"seasonal_period": 4, "horizon": 1}).forecast
    fit = fc.fit_forecaster("seasonal_naive", np.arange(8.0), None, cfg, {}, 0)
    series = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=float)
    np.testing.assert_array_equal(fc.predict_forecaster(fit, series, None, np.array([8, 9])), [5.0, 6.0])
    cfg6 = cfg.model_copy(update={"horizon": 6})
    assert fc.seasonal_lag(cfg6) == 8  # two seasons back: one season is not yet observed 6 steps ahead


def test_cv_splits_per_task() -> None:
    y = np.array([0] * 30 + [1] * 10)
    folds = cv_splits("classification", y, 5, seed=1)
    assert len(folds) == 5
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(40))
    assert all(y[va].sum() == 2 for _, va in folds)  # stratified: 10 positives over 5 folds
    assert [va.tolist() for _, va in folds] == [va.tolist() for _, va in cv_splits("classification", y, 5, seed=1)]
    series = cv_splits("forecasting", np.zeros(100), 3, seed=0, min_train=10)
    for (tr, va), (_, next_va) in zip(series, series[1:], strict=False):
        assert tr.max() < va.min() and va.max() < next_va.min()  # expanding window, in time order
    assert [len(tr) for tr, _ in series] == [25, 50, 75]
    with pytest.raises(ValueError, match="too few"):
        cv_splits("forecasting", np.zeros(30), 5, seed=0, min_train=24)


def test_threshold_known_answer() -> None:
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    labels = np.array([1, 1, 0, 1, 1, 0, 1, 0, 0, 0])
    # Cut-offs (precision, recall): 0.95 (1, .2), 0.9 (1, .4), 0.8 (.67, .4), 0.7 (.75, .6),
    # 0.6 (.8, .8), 0.5 (.67, .8), 0.4 (.71, 1.0), lower ones below .7 precision.
    r = calibrate_threshold(labels, scores, 0.8)
    assert (r.threshold, r.precision, r.recall, r.reached_target) == (0.6, 0.8, 0.8, True)
    assert calibrate_threshold(labels, scores, 0.7).threshold == 0.4
    assert calibrate_threshold(labels, scores, 0.99).threshold == 0.9  # recall .4 beats 0.95's .2
    tied = calibrate_threshold(np.array([1, 0, 1]), np.array([0.5, 0.5, 0.2]), 0.6)
    assert (tied.threshold, tied.candidates) == (0.2, 2)


def test_threshold_unreachable_target_uses_highest_precision() -> None:
    r = calibrate_threshold(np.array([0, 1, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6]), 0.9)
    assert not r.reached_target
    # Precision 0.5 at both 0.8 and 0.6: the tie goes to the higher recall.
    assert (r.threshold, r.precision, r.recall) == (0.6, 0.5, 1.0)
    with pytest.raises(ValueError, match="no positive"):
        calibrate_threshold(np.array([0, 0]), np.array([0.1, 0.2]), 0.8)


def test_composite_score_known_numbers() -> None:
    weights = {"rmse": 0.5, "mae": 0.3, "mse": 0.2}
    # Design document 002's GRU row, on an already standardised target: 0.0296.
    assert mt.composite_score(0.0411, 0.0290, 0.0017, weights, scale=1.0) == pytest.approx(0.02959, abs=1e-6)
    # σ = 2: RMSE and MAE halve, MSE quarters.
    assert mt.composite_score(0.0411, 0.0290, 0.0017, weights, scale=2.0) == pytest.approx(0.01471, abs=1e-6)
    assert mt.composite_score(3.0, 1.0, 9.0, {"rmse": 1.0, "mae": 1.0}, scale=1.0) == pytest.approx(2.0)
    got = mt.forecast_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]), weights, scale=1.0)
    assert got["mse"] == pytest.approx(4 / 3) and got["mae"] == pytest.approx(2 / 3)
    assert got["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert got["composite"] == pytest.approx(0.5 * math.sqrt(4 / 3) + 0.3 * 2 / 3 + 0.2 * 4 / 3)


def test_selection_rule_direction_and_ties() -> None:
    order = ["a", "b", "c"]
    assert select_champion({"a": 0.7, "b": 0.9, "c": 0.9}, "roc_auc", order) == "b"
    assert select_champion({"a": 0.3, "b": 0.2, "c": float("nan")}, "composite", order) == "b"
    assert select_champion({"a": 5.0, "b": 5.0}, "rmse", order) == "a"


def test_training_is_deterministic_and_independent_of_workers(tmp_path) -> None:
    config = _config(
        "classification",
        models=[{"family": "logistic_regression"}, {"family": "random_forest", "params": {"n_estimators": 20}}],
        cv_folds=3,
    )
    train = _tabular(150, "classification", 3)
    one = train_candidates(config, train, tmp_path / "a", n_jobs=1)
    two = train_candidates(config, train, tmp_path / "b", n_jobs=2)
    import joblib

    probe = _tabular(50, "classification", 4)
    spec = fam.feature_spec(train, config)
    for family in ("logistic_regression", "random_forest"):
        assert one.models[family].fold_metrics == two.models[family].fold_metrics
        # Pickle bytes may differ (memo sharing across processes); the fitted models may not.
        a, b = (joblib.load(r.models[family].artifact) for r in (one, two))
        np.testing.assert_array_equal(
            fam.positive_scores(a, fam.prepare_frame(probe, spec)),
            fam.positive_scores(b, fam.prepare_frame(probe, spec)),
        )
    pd.testing.assert_frame_equal(one.oof, two.oof)
    assert set(one.oof["model"]) == {"logistic_regression", "random_forest"} and len(one.oof) == 300

    forecast = _config(
        "forecasting",
        models=[{"family": "gru"}, {"family": "seasonal_naive"}],
        cv_folds=2,
        forecast={**TINY_FORECAST, "epochs": 3},
    )
    y, ts = _series(200)
    frame = pd.DataFrame({"ts": ts, "y": y})
    first = train_candidates(forecast, frame, tmp_path / "f1", n_jobs=1)
    second = train_candidates(forecast, frame, tmp_path / "f2", n_jobs=1)
    assert first.models["gru"].fold_metrics == second.models["gru"].fold_metrics
    assert first.models["gru"].history == second.models["gru"].history
    assert len(first.models["gru"].history) == 3


def test_bad_training_input_names_the_column_and_the_fix(tmp_path) -> None:
    one_class = _tabular(60, "classification").assign(y=1)
    with pytest.raises(ValueError, match=r"train.parquet: column 'y'.*at least two target classes, found 1.*Fix"):
        train_candidates(_config("classification"), one_class, tmp_path, n_jobs=1)
    rare = _tabular(60, "classification").assign(y=lambda f: np.where(np.arange(len(f)) < 3, 2, f.y))
    with pytest.raises(
        ValueError, match=r"class 2 \(3 rows\) has fewer training rows than cv_folds=5.*Fix: lower 'cv_folds'"
    ):
        train_candidates(_config("classification"), rare, tmp_path, n_jobs=1)
    text_target = _tabular(60, "regression").assign(y="high")
    with pytest.raises(ValueError, match=r"column 'y' has type object.*must be numeric.*Fix"):
        train_candidates(_config("regression"), text_target, tmp_path, n_jobs=1)
    y, ts = _series(200)
    typo = _config("forecasting", models=[{"family": "gru", "params": {"hiden_size": 4}}])
    with pytest.raises(ValueError, match=r"\['hiden_size'\] are not gru settings.*Fix"):
        train_candidates(typo, pd.DataFrame({"ts": ts, "y": y}), tmp_path, n_jobs=1)


KILLED_PARENT = """
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mlgraph.core.experiment import ExperimentConfig
from mlgraph.training.candidates import train_candidates

config = ExperimentConfig.model_validate({
    "name": "slow", "task": "regression", "dataset": {"generator": "salary"}, "target": "y", "cv_folds": 2,
    "models": [{"family": "random_forest", "params": {"n_estimators": 5000, "min_samples_leaf": 1}}],
})
rng = np.random.default_rng(0)
frame = pd.DataFrame({"x": rng.normal(size=3000), "z": rng.normal(size=3000)}).assign(y=lambda f: f.x + rng.normal(size=3000))
train_candidates(config, frame, Path(sys.argv[1]), n_jobs=2)
"""


def _running_a_forest(worker) -> bool:
    """Whether a loky worker is inside run_task: it starts the parent watchdog, then builds the forest,
    which maps sklearn's tree extension (nothing earlier in a worker loads it)."""
    import psutil

    try:
        return any("sklearn/tree/_tree" in m.path for m in worker.memory_maps())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@pytest.mark.timeout(120)
def test_workers_exit_when_the_training_process_is_killed(tmp_path) -> None:
    import subprocess
    import sys

    import psutil

    from mlgraph.core.drive import PROJECT_ROOT

    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_PARENT, str(tmp_path)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[psutil.Process] = []

    def two_workers() -> bool:
        children = psutil.Process(proc.pid).children(recursive=True)
        workers[:] = [c for c in children if "LokyProcess" in " ".join(c.cmdline())]
        return len(workers) >= 2

    try:
        wait_for(two_workers, 60, "two loky workers of the parent", interval=0.5)
        # The watchdog starts with a worker's first task: wait until every worker is running one.
        wait_for(lambda: all(_running_a_forest(w) for w in workers), 60, "every loky worker to run a task")
        proc.kill()
        proc.wait(timeout=10)
        gone, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"workers outlived their parent: {[p.pid for p in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for worker in workers:
            if worker.is_running():
                worker.kill()
