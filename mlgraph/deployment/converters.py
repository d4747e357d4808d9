"""Which skl2onnx converter an estimator gets, or why it has none.

skl2onnx converts the classes it has a converter registered for, looked up by exact type:
- its own scikit-learn converters (every built-in family, HistGradientBoostingClassifier included);
- LightGBM's LGBMClassifier / LGBMRegressor and XGBoost's XGBClassifier / XGBRegressor through onnxmltools'
  operator converters, registered here with `skl2onnx.update_registered_converter` (the pattern of skl2onnx's
  "Convert a pipeline with a LightGBM classifier" / "... XGBoost model" tutorials; LightGBM's keeps its
  thresholds in float64, tree_precision.py). Registration is lazy and idempotent: it runs the first time an
  estimator from that library is exported — never at import, since importing lightgbm or xgboost costs the
  code location time — and once per process. Classifiers are registered with the `zipmap` / `nocl` options,
  so skl2onnx's classifier parser applies `zipmap: False` as it does for random forests: outputs `label`
  (N,) int64 and `probabilities` (N, K) float32;
- whatever the user registered for their own class in their plugin module (`update_registered_converter` at
  import: joblib imports that module to load the model, so the registration precedes the export).

The platform's tabular torch estimator (TorchTabularModel, `family: torch`) is no skl2onnx class:
torch_graph.py exports it. Any other estimator without a converter is not exported: `missing_reason` says
why in the export report, and the service serves the native model. A subclass of a supported class has no
converter of its own (skl2onnx matches the exact type), so it is reported rather than converted as its parent.
"""

from __future__ import annotations

import copy
import functools
import sys
from typing import Any

from mlgraph.deployment import torch_graph, tree_precision

# Options onnxmltools' tree converters accept for classifiers, as skl2onnx's tutorials register them.
CLASSIFIER_OPTIONS = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
EXTERNAL_CONVERTERS = {"lightgbm": "onnxmltools LightGBM converter", "xgboost": "onnxmltools XGBoost converter"}


def _library(estimator: Any) -> str:
    return type(estimator).__module__.split(".")[0]


def convert_lightgbm(scope, operator, container):
    """onnxmltools' LightGBM converter, its split thresholds kept in float64 (tree_precision.py says why)."""
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm as convert

    convert(scope, operator, tree_precision.exact_thresholds(container))


@functools.cache
def _register_lightgbm() -> None:
    from lightgbm import LGBMClassifier, LGBMRegressor
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    update_registered_converter(
        LGBMClassifier,
        "LightGbmLGBMClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options=CLASSIFIER_OPTIONS,
    )
    update_registered_converter(
        LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes, convert_lightgbm
    )


@functools.cache
def _register_xgboost() -> None:
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from xgboost import XGBClassifier, XGBRegressor

    update_registered_converter(
        XGBClassifier,
        "XGBoostXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options=CLASSIFIER_OPTIONS,
    )
    update_registered_converter(
        XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost
    )


_REGISTER = {"lightgbm": _register_lightgbm, "xgboost": _register_xgboost}


def register_external(model: Any) -> None:
    """Register onnxmltools' converters for the libraries `model`'s estimators come from (no-op for others)."""
    for leaf in leaves(model):
        register = _REGISTER.get(_library(leaf))
        if register is not None:
            register()


def leaves(model: Any) -> list[Any]:
    """The estimators and transformers skl2onnx converts one by one: the steps of fitted Pipelines,
    ColumnTransformers and FeatureUnions, recursively (skipping 'drop' / 'passthrough'); else the model."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import FeatureUnion, Pipeline

    if isinstance(model, Pipeline):
        parts = [step for _, step in model.steps]
    elif isinstance(model, ColumnTransformer):
        parts = [t for _, t, _ in getattr(model, "transformers_", model.transformers)]
    elif isinstance(model, FeatureUnion):
        parts = [t for _, t in model.transformer_list]
    else:
        return [model]
    return [leaf for part in parts if part is not None and not isinstance(part, str) for leaf in leaves(part)]


def has_converter(estimator: Any) -> bool:
    """Whether skl2onnx converts this exact class (its own registry, after the lazy registrations)."""
    from skl2onnx import get_model_alias

    if torch_graph.is_torch_tabular(estimator):
        return True  # exported by torch_graph.py, not skl2onnx
    register = _REGISTER.get(_library(estimator))
    if register is not None:
        register()
    try:
        get_model_alias(type(estimator))  # the containers skl2onnx parses (Pipeline, ...) have aliases too
    except RuntimeError:
        return False
    return True


def qualified_name(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _runs_torch(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # loaded already if the model holds a module: never import it here
    if torch is None:
        return False
    values = [obj, *getattr(obj, "__dict__", {}).values()]
    return any(isinstance(v, torch.nn.Module) for v in values)


def missing_reason(model: Any, family: str) -> str | None:
    """Why `model` (a fitted estimator or the user's whole pipeline) cannot be converted; None when every
    estimator in it has a skl2onnx converter."""
    missing = [leaf for leaf in leaves(model) if not has_converter(leaf)]
    if not missing:
        return None
    names = ", ".join(dict.fromkeys(qualified_name(m) for m in missing))
    if family == "torch" or any(_runs_torch(m) for m in missing):
        return (
            f"{names} runs a torch module on tabular features but is not the platform's TorchTabularModel (which "
            "mlgraph exports with torch.onnx.export), and skl2onnx has no converter for it; register one with "
            "skl2onnx.update_registered_converter in the plugin module, or the service serves the native model"
        )
    return (
        f"no skl2onnx converter is registered for {names}; register one with "
        "skl2onnx.update_registered_converter in the plugin module, or the service serves the native model"
    )


def converter_name(model: Any) -> str:
    """How the estimators in `model` are converted, for the export report."""
    if any(torch_graph.is_torch_tabular(leaf) for leaf in leaves(model)):
        return "torch.onnx.export (TorchScript, dynamo=False) network"
    used = sorted(
        {EXTERNAL_CONVERTERS[lib] for leaf in leaves(model) if (lib := _library(leaf)) in EXTERNAL_CONVERTERS}
    )
    return " + ".join(["skl2onnx", *used])


def accepts_zipmap(estimator: Any) -> bool:
    """Whether the estimator's converter declares the `zipmap` option (skl2onnx's classifiers and the
    boosting converters registered above do; a user's converter may not, and then skl2onnx rejects it)."""
    from skl2onnx import get_model_alias
    from skl2onnx.common._registration import get_converter

    try:
        allowed = get_converter(get_model_alias(type(estimator))).get_allowed_options()
    except (RuntimeError, ValueError):
        return False
    return bool(allowed) and "zipmap" in allowed


def final_estimator(model: Any) -> Any:
    """The estimator whose outputs are the model's (the last step of a Pipeline, recursively)."""
    from sklearn.pipeline import Pipeline

    while isinstance(model, Pipeline):
        model = model.steps[-1][1]
    return model


def _xgboost_names_need_reset(estimator: Any) -> bool:
    if _library(estimator) != "xgboost" or not hasattr(estimator, "get_booster"):
        return False
    names = estimator.get_booster().feature_names
    return names is not None and list(names) != [f"f{i}" for i in range(len(names))]


def convertible(model: Any) -> Any:
    """`model` as the converters need it. onnxmltools reads an XGBoost split's feature as 'f<index>' (the
    name XGBoost gives a column fitted from a numpy array, as the Pipeline's preprocessed matrix is); a
    booster fitted on a named frame splits on its column names instead, so it is converted from a copy
    whose booster has no names (the columns keep their order: the graph feeds them by position)."""
    if not any(_xgboost_names_need_reset(leaf) for leaf in leaves(model)):
        return model
    model = copy.deepcopy(model)
    for leaf in leaves(model):
        if _xgboost_names_need_reset(leaf):
            leaf.get_booster().feature_names = None
    return model
