"""Trying every spec with the user's code before any training (candidate_models calls `check_specs`).

Tabular specs are built and fitted on a small sample (some rows of every class) and their outputs'
shapes checked; a forecasting torch spec is built and run on a dummy batch. Every problem found is
reported at once, as one `ModelSpecError` naming each spec, its import path, what is wrong and the fix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlgraph.core.experiment import ExperimentConfig, ModelSpec
from mlgraph.training.user_code import ModelSpecError, build_torch_module, describe, split_torch_params

TRIAL_ROWS = 200


def check_specs(config: ExperimentConfig, data: Any) -> None:
    """Try every spec with user code before any training (`data`: candidates.TrainingData).

    Tabular specs are built and fitted on a small sample and their outputs' shapes checked; a forecasting
    torch spec is built and run on a dummy batch. All problems are reported at once.
    """
    problems = []
    for spec in config.model_specs:
        if spec.import_path is None:
            continue
        try:
            if data.task == "forecasting":
                _trial_forecaster(spec, config)
            else:
                _trial_tabular(spec, config, data)
        except ModelSpecError as exc:
            problems.append(str(exc))
    if problems:
        raise ModelSpecError(
            f"experiment {config.name!r}: {len(problems)} model spec(s) cannot be trained:\n" + "\n".join(problems)
        )


def _trial_rows(data: Any) -> np.ndarray:
    """Up to TRIAL_ROWS rows; for classification some of every class, so fit sees the whole label set."""
    if data.task != "classification":
        return np.arange(min(TRIAL_ROWS, len(data.y)))
    k = int(data.n_classes or 2)
    return np.sort(np.concatenate([np.flatnonzero(data.y == c)[: max(2, TRIAL_ROWS // k)] for c in range(k)]))


def _trial_tabular(spec: ModelSpec, config: ExperimentConfig, data: Any) -> None:
    from mlgraph.training import families as fam

    params = fam.resolved_params(config.task, spec.family, spec.params)
    model = fam.build_model(config.task, spec.family, params, data.features, config.seed, spec)
    rows = _trial_rows(data)
    X, y = data.X.iloc[rows], data.y[rows]
    what = f"a {len(rows)}-row trial"
    try:
        model.fit(X, y)
        predicted = np.asarray(model.predict(X))
        proba = np.asarray(model.predict_proba(X)) if config.task == "classification" else None
    except ModelSpecError:
        raise
    except Exception as exc:
        from sklearn.exceptions import NotFittedError

        if isinstance(exc, NotFittedError) and spec.preprocessing == "standard":
            # fit ran, but the Pipeline's check_is_fitted finds none of the attributes fit is expected to set.
            raise ModelSpecError(
                f"{describe(spec)}: after fit on {what}, scikit-learn's Pipeline sees the "
                f"{type(fam.final_estimator(model)).__name__} as not fitted ({exc}). Fix: set the fitted state in "
                "fit as attributes ending in '_' (e.g. self.coef_, self.classes_), scikit-learn's convention, or "
                "define __sklearn_is_fitted__."
            ) from None
        raise ModelSpecError(
            f"{describe(spec)}: failed on {what} fit/predict: {type(exc).__name__}: {exc}. "
            f"Fix: correct models[].params for {spec.key!r} or the code."
        ) from None
    if predicted.shape != (len(rows),):
        raise ModelSpecError(
            f"{describe(spec)}: predict returned shape {predicted.shape} for {len(rows)} rows; expected "
            f"({len(rows)},). Fix: return one value per row."
        )
    k = int(data.n_classes or 0)
    if proba is not None and proba.shape != (len(rows), k):
        raise ModelSpecError(
            f"{describe(spec)}: predict_proba returned shape {proba.shape} for {len(rows)} rows and {k} classes; "
            f"expected ({len(rows)}, {k}), one column per class in label order. Fix: return class probabilities."
        )
    # The platform tells binary from multiclass by the fitted model's classes_ (families.is_multiclass_model),
    # and the exporters check them: without it a 3-class model would be scored as a binary one, silently.
    classes = getattr(fam.final_estimator(model), "classes_", None)
    if config.task == "classification" and (classes is None or not np.array_equal(np.asarray(classes), np.arange(k))):
        found = "no classes_ attribute" if classes is None else f"classes_ {list(np.asarray(classes))}"
        raise ModelSpecError(
            f"{describe(spec)}: after fit on {what} with labels 0..{k - 1} it has {found}; expected "
            f"{list(range(k))} (training encodes the classes so). Fix: set self.classes_ = np.unique(y) in fit, "
            "as scikit-learn classifiers do."
        )


def _trial_forecaster(spec: ModelSpec, config: ExperimentConfig) -> None:
    if spec.family != "torch":
        raise ModelSpecError(f"{describe(spec)}: forecasting takes user code as family 'torch' only")
    import torch

    loop, build_params = split_torch_params(spec.params)
    window = int(build_params.pop("window", config.forecast.window))
    # What the forecasting loop reads besides TORCH_LOOP_KEYS; build() gets the rest, as in training
    # (forecasting._fit_recurrent keeps the same keys out of metadata["build_params"]).
    build_params.pop("horizon", None)
    build_params.pop("device", None)
    net = build_torch_module(spec, window, build_params)
    try:
        with torch.no_grad():
            out = net(torch.zeros(3, window))
    except Exception as exc:
        raise ModelSpecError(
            f"{describe(spec)}: the network failed on a (3, {window}) batch of windows: {type(exc).__name__}: "
            f"{exc}. Fix: its forward must take (batch, window) float32 inputs."
        ) from None
    if tuple(out.shape) not in ((3,), (3, 1)):
        raise ModelSpecError(
            f"{describe(spec)}: the network returned shape {tuple(out.shape)} for a (3, {window}) batch; expected "
            "(3,) or (3, 1): one forecast per window. Fix: end with a single output."
        )
