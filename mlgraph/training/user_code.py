"""The user's own model code in an experiment: importing it, building it, and trying it before training.

`family: estimator` names a class or factory ("module:Name") whose result is a scikit-learn-compatible
estimator (fit/predict, and predict_proba for classification); `family: torch` names a function
`build(n_inputs, params) -> torch.nn.Module` that the platform's loop trains. Everything that can be wrong
with such a spec — a missing module or name, a missing method, params the code rejects, outputs of the
wrong shape — is found by `check_specs` before any training, and reported as one `ModelSpecError` whose
message names the spec, the import path, what is wrong and the fix.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from mlgraph.core.experiment import ExperimentConfig, ModelSpec
from mlgraph.core.plugins import ensure_on_path, split_import_path

# The platform's training loop reads these from a torch spec's params; every other key goes to build().
TORCH_LOOP_KEYS = frozenset({"learning_rate", "epochs", "batch_size", "patience", "weight_decay"})
TRIAL_ROWS = 200


class ModelSpecError(ValueError):
    """A spec's user code cannot be used; the message names the spec, the import path and the fix."""


def describe(spec: ModelSpec) -> str:
    return f"model {spec.key!r} ({spec.family} {spec.import_path!r})"


def load_callable(spec: ModelSpec) -> Any:
    """The class or function the spec's import path names (the plugins folder is on the path first)."""
    assert spec.import_path is not None
    where = ensure_on_path()
    module_name, attribute = split_import_path(spec.import_path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ModelSpecError(
                f"{describe(spec)}: module {module_name!r} not found in the plugins folder ({where}) or the "
                f"installed packages. Fix: put {module_name.replace('.', '/')}.py in {where}, install the package "
                "that provides it, or correct the import path."
            ) from None
        raise ModelSpecError(
            f"{describe(spec)}: module {module_name!r} imports {exc.name!r}, which is not installed. "
            "Fix: install it in the project's environment (pyproject.toml) or remove the import."
        ) from None
    except Exception as exc:  # the user's module failed while importing: say so, without our traceback
        raise ModelSpecError(
            f"{describe(spec)}: importing module {module_name!r} failed: {type(exc).__name__}: {exc}. "
            f"Fix: correct {getattr(exc, 'filename', None) or module_name}."
        ) from None
    try:
        target = getattr(module, attribute)
    except AttributeError:
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise ModelSpecError(
            f"{describe(spec)}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no attribute "
            f"{attribute!r}. Fix: correct the name after ':'; the module defines {public}."
        ) from None
    if not callable(target):
        raise ModelSpecError(
            f"{describe(spec)}: {attribute!r} is a {type(target).__name__}, not a class or function. "
            "Fix: name the class or factory that builds the model."
        )
    return target


def split_torch_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the training loop's settings, the params for the user's build function)."""
    loop = {k: v for k, v in params.items() if k in TORCH_LOOP_KEYS}
    return loop, {k: v for k, v in params.items() if k not in TORCH_LOOP_KEYS}


def build_estimator(spec: ModelSpec, params: dict[str, Any], task: str, seed: int) -> Any:
    """The spec's unfitted estimator: the user's (built with `params`), or the platform's torch wrapper."""
    if spec.family == "torch":
        from mlgraph.training.torch_tabular import TorchTabularModel

        load_callable(spec)  # fail here, with the spec's name, rather than inside a worker's fit
        loop, build_params = split_torch_params(params)
        return TorchTabularModel(module=spec.import_path, params=build_params, task=task, seed=seed, **loop)
    factory = load_callable(spec)
    try:
        estimator = factory(**params)
    except TypeError as exc:
        raise ModelSpecError(
            f"{describe(spec)}: rejects params {params}: {exc}. Fix: correct models[].params for {spec.key!r}."
        ) from None
    missing = [m for m in ("fit", "predict") if not callable(getattr(estimator, m, None))]
    if task == "classification" and not callable(getattr(estimator, "predict_proba", None)):
        missing.append("predict_proba")
    if missing:
        raise ModelSpecError(
            f"{describe(spec)}: the {type(estimator).__name__} it builds has no {', '.join(missing)} method(s); "
            f"a {task} model needs fit, predict{', predict_proba' if task == 'classification' else ''}. "
            "Fix: implement them (scikit-learn's estimator interface), or wrap the model in a class that does."
        )
    # The experiment's seed, unless the spec sets one: reruns of the same config give the same model.
    if "random_state" not in params and "random_state" in _get_params(estimator):
        estimator.set_params(random_state=seed)
    return estimator


def _get_params(estimator: Any) -> dict[str, Any]:
    try:
        return estimator.get_params(deep=False)
    except Exception:  # not a scikit-learn estimator: no parameters to set
        return {}


def build_torch_module(spec: ModelSpec, n_inputs: int, build_params: dict[str, Any]) -> Any:
    """The user's network: build(n_inputs, params), checked to be a torch.nn.Module."""
    from torch import nn

    build = load_callable(spec)
    try:
        net = build(n_inputs, dict(build_params))
    except TypeError as exc:
        raise ModelSpecError(
            f"{describe(spec)}: build({n_inputs}, {build_params}) failed: {exc}. Fix: the function must take "
            "(n_inputs, params) and accept the spec's params."
        ) from None
    if not isinstance(net, nn.Module):
        raise ModelSpecError(
            f"{describe(spec)}: build() returned a {type(net).__name__}, not a torch.nn.Module. "
            "Fix: return the network."
        )
    return net


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


def _trial_forecaster(spec: ModelSpec, config: ExperimentConfig) -> None:
    if spec.family != "torch":
        raise ModelSpecError(f"{describe(spec)}: forecasting takes user code as family 'torch' only")
    import torch

    loop, build_params = split_torch_params(spec.params)
    window = int(build_params.pop("window", config.forecast.window))
    build_params.pop("horizon", None)
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
