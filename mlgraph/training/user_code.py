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

from mlgraph.core.experiment import ModelSpec
from mlgraph.core.plugins import ensure_on_path, split_import_path

# The platform's training loop reads these from a torch spec's params; every other key goes to build().
TORCH_LOOP_KEYS = frozenset({"learning_rate", "epochs", "batch_size", "patience", "weight_decay"})


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
    """A `family: estimator` spec's unfitted estimator, built with `params` and checked for its methods."""
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
    if spec.preprocessing == "standard":
        _check_pipeline_step(spec, estimator, task)
    # The experiment's seed, unless the spec sets one: reruns of the same config give the same model.
    if "random_state" not in params and "random_state" in _get_params(estimator):
        estimator.set_params(random_state=seed)
    return estimator


def _check_pipeline_step(spec: ModelSpec, estimator: Any, task: str) -> None:
    """The standard preprocessing puts the estimator last in a scikit-learn Pipeline, and from scikit-learn 1.6
    on the Pipeline reads its tags (check_is_fitted, at every predict): a duck-typed class fits, then fails
    to predict with an AttributeError about `__sklearn_tags__`. Say what to do instead."""
    try:
        from sklearn.utils import get_tags
    except ImportError:  # scikit-learn < 1.6: a Pipeline reads no tags
        return
    try:
        get_tags(estimator)
    except Exception as exc:
        name = type(estimator).__name__
        mixin = "ClassifierMixin" if task == "classification" else "RegressorMixin"
        raise ModelSpecError(
            f"{describe(spec)}: the {name} it builds is not a scikit-learn estimator class (no estimator tags: "
            f"{type(exc).__name__}), and the standard preprocessing puts it in a scikit-learn Pipeline, which "
            f"needs one. Fix: derive it from sklearn.base.BaseEstimator (class {name}({mixin}, BaseEstimator)), "
            "or set 'preprocessing: none' to give it the raw columns without a Pipeline."
        ) from None


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
