"""The ONNX graph of a fitted tabular Pipeline (families.build_model): raw columns in, scores out.

One typed input per raw column, shape (N, 1): `tensor(double)` for a numeric column (NaN = missing),
`tensor(string)` for a categorical one ("" = missing). The graph reproduces the Pipeline:

- numeric: median imputation, then standardisation, computed in float64 and only then cast to float32,
  which is what sklearn does. Why not skl2onnx's Imputer/Scaler: they compute in float32, and a tree
  threshold that sits exactly on a data value (random forests and histogram gradient boosting place them
  there whenever a feature is discrete, e.g. years with one decimal) then sends a test row down the
  other branch: on the salary demo that moved predictions by up to 3,500 (0.17 σ). Computing in double
  first gives the estimator the very float32 values sklearn's trees compare. LightGBM and
  HistGradientBoosting compare in float64: their graphs skip the cast and keep float64 thresholds
  (tree_precision.py).
- categorical: one-hot with unknown categories ignored (all zeros), like
  OneHotEncoder(handle_unknown="ignore"). A missing value ("") is encoded as sklearn encodes it, and
  sklearn does not impute it: families.prepare_frame turns a gap into None, which
  SimpleImputer(missing_values=nan) does not count as missing, so the encoder sees None — an unknown
  category (all zeros), or its own column when training data had gaps too.
- estimator: linear families (logistic regression, ridge) are written as MatMul + Add (+ Sigmoid or
  Softmax), not as ONNX-ML LinearClassifier/LinearRegressor, so that dynamic INT8 quantization has
  something to quantize (it only touches MatMul-style nodes); every other estimator goes through skl2onnx
  (`zipmap` off: probabilities are a plain tensor) — its own converters, onnxmltools' LightGBM and XGBoost
  converters, or the user's (converters.py says which, and why an estimator has none) — except the
  platform's tabular torch estimator, exported by torch_graph.py.

The user's whole pipeline (`preprocessing: none`: the fitted model is the user's estimator, which gets the
raw columns) takes the same inputs. When every feature is numeric and the model is a plain estimator, the
graph concatenates the columns and casts them to float32, as sklearn's trees do, before the estimator's
converter; otherwise skl2onnx gets one (N, 1) input per column — float32 (cast from the double input), or
string with "" for a gap — and the model's converter (a sklearn Pipeline's ColumnTransformer selects them
by name) handles them.

Outputs: classifiers `label` (N,) int64 and `probabilities` (N, K) float; regressors `variable` (N, 1).
skl2onnx, onnx and sklearn are imported inside the functions (the code location loads this module).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlgraph.deployment import converters, torch_graph, tree_precision
from mlgraph.training.families import FeatureSpec

OPSET = 21  # skl2onnx converters are tested up to 22
ML_OPSET = 3
IR_VERSION = 10  # what onnxruntime ≥ 1.20 reads
FEATURES = "features"  # the float32 matrix between preprocessing and estimator
MISSING_CATEGORY = ""
LINEAR_FAMILIES = ("logistic_regression", "ridge")


class UnsupportedModel(ValueError):
    """The Pipeline is not one families.build_model makes, or has something ONNX cannot express faithfully."""


@dataclass(frozen=True)
class PipelineParts:
    spec: FeatureSpec
    medians: np.ndarray
    means: np.ndarray
    scales: np.ndarray
    categories: tuple[tuple[str, ...], ...]
    estimator: Any

    @property
    def width(self) -> int:
        return len(self.spec.numeric) + sum(len(c) for c in self.categories)


def pipeline_parts(model: Any, family: str) -> PipelineParts:
    """The fitted pieces of Pipeline([preprocess: ColumnTransformer, model: estimator])."""
    steps = dict(getattr(model, "named_steps", {}))
    if set(steps) != {"preprocess", "model"}:
        raise UnsupportedModel(
            f"{family}: expected a Pipeline with steps 'preprocess' and 'model', found {sorted(steps)}"
        )
    numeric: list[str] = []
    categorical: list[str] = []
    medians = means = scales = np.zeros(0)
    categories: tuple[tuple[str, ...], ...] = ()
    for name, transformer, columns in steps["preprocess"].transformers_:
        if name == "numeric":
            numeric = list(columns)
            impute, scale = transformer.named_steps["impute"], transformer.named_steps["scale"]
            medians = np.asarray(impute.statistics_, dtype=np.float64)
            if np.isnan(medians).any():
                raise UnsupportedModel(f"{family}: a numeric column was empty in training (no median to impute)")
            means = np.asarray(scale.mean_, dtype=np.float64) if scale.with_mean else np.zeros(len(numeric))
            scales = np.asarray(scale.scale_, dtype=np.float64) if scale.with_std else np.ones(len(numeric))
        elif name == "categorical":
            categorical = list(columns)
            onehot = transformer.named_steps["onehot"]
            categories = tuple(
                tuple(_category(column, v, family) for v in c)
                for column, c in zip(categorical, onehot.categories_, strict=True)
            )
            if onehot.handle_unknown != "ignore":
                raise UnsupportedModel(
                    f"{family}: OneHotEncoder(handle_unknown={onehot.handle_unknown!r}); expected 'ignore'"
                )
        elif name != "remainder":
            raise UnsupportedModel(f"{family}: unexpected ColumnTransformer part {name!r}")
    return PipelineParts(
        FeatureSpec(tuple(numeric), tuple(categorical)), medians, means, scales, categories, steps["model"]
    )


def _category(column: str, value: Any, family: str) -> str:
    """A fitted category as the string input spells it: a gap (None / NaN) is the empty string."""
    if value is None or (isinstance(value, float) and value != value):
        return MISSING_CATEGORY
    if not isinstance(value, str):
        raise UnsupportedModel(
            f"{family}: categorical column {column!r} has the non-string category {value!r}; a string input could "
            "not match it. Fix: store the column as strings (or declare it numeric)."
        )
    if value == MISSING_CATEGORY:
        raise UnsupportedModel(
            f"{family}: categorical column {column!r} has the empty string as a category, which the ONNX graph "
            "reserves for a missing value. Fix: read the data with empty strings as nulls."
        )
    return value


def _preprocess_nodes(parts: PipelineParts, double: bool = False) -> tuple[list, list, list]:
    """(inputs, nodes, initializers) from the raw columns to FEATURES (N, width) float32 (float64 if `double`)."""
    from onnx import TensorProto, helper, numpy_helper

    to = TensorProto.DOUBLE if double else TensorProto.FLOAT
    inputs, nodes, inits, blocks = [], [], [], []
    spec = parts.spec
    for column in spec.numeric:
        inputs.append(helper.make_tensor_value_info(column, TensorProto.DOUBLE, [None, 1]))
    for column in spec.categorical:
        inputs.append(helper.make_tensor_value_info(column, TensorProto.STRING, [None, 1]))
    if spec.numeric:
        inits += [
            numpy_helper.from_array(parts.medians.reshape(1, -1), "pre_median"),
            numpy_helper.from_array(parts.means.reshape(1, -1), "pre_mean"),
            numpy_helper.from_array(parts.scales.reshape(1, -1), "pre_scale"),
        ]
        nodes += [
            helper.make_node("Concat", list(spec.numeric), ["pre_num"], axis=1, name="pre_num_concat"),
            helper.make_node("IsNaN", ["pre_num"], ["pre_num_nan"], name="pre_num_isnan"),
            helper.make_node("Where", ["pre_num_nan", "pre_median", "pre_num"], ["pre_num_imputed"], name="pre_impute"),
            helper.make_node("Sub", ["pre_num_imputed", "pre_mean"], ["pre_num_centred"], name="pre_center"),
            helper.make_node("Div", ["pre_num_centred", "pre_scale"], ["pre_num_scaled"], name="pre_scale"),
            helper.make_node("Cast", ["pre_num_scaled"], ["pre_num_float"], to=to, name="pre_num_cast"),
        ]
        blocks.append("pre_num_float")
    for i, (column, cats) in enumerate(zip(spec.categorical, parts.categories, strict=True)):
        inits.append(numpy_helper.from_array(np.array([-1, len(cats)], dtype=np.int64), f"pre_shape_{i}"))
        nodes += [
            helper.make_node(
                "OneHotEncoder",
                [column],
                [f"pre_cat_onehot3d_{i}"],
                domain="ai.onnx.ml",
                cats_strings=list(cats),
                zeros=1,
                name=f"pre_cat_onehot_{i}",
            ),
            helper.make_node(
                "Reshape",
                [f"pre_cat_onehot3d_{i}", f"pre_shape_{i}"],
                [f"pre_cat_onehot_{i}"],
                name=f"pre_cat_flat_{i}",
            ),
            helper.make_node("Cast", [f"pre_cat_onehot_{i}"], [f"pre_cat_float_{i}"], to=to, name=f"pre_cat_cast_{i}"),
        ]
        blocks.append(f"pre_cat_float_{i}")
    nodes.append(helper.make_node("Concat", blocks, [FEATURES], axis=1, name="pre_features"))
    return inputs, nodes, inits


def _linear_nodes(parts: PipelineParts, family: str, classifier: bool) -> tuple[list, list, list]:
    """(outputs, nodes, initializers) of a linear estimator as MatMul + Add (+ Sigmoid / Softmax)."""
    from onnx import TensorProto, helper, numpy_helper

    est = parts.estimator
    coef = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))  # (classes or 1, width)
    intercept = np.atleast_1d(np.asarray(est.intercept_, dtype=np.float64))
    if coef.shape[1] != parts.width:
        raise UnsupportedModel(f"{family}: {coef.shape[1]} coefficients for {parts.width} features")
    inits = [
        numpy_helper.from_array(coef.T.astype(np.float32), "est_weight"),
        numpy_helper.from_array(intercept.astype(np.float32), "est_bias"),
    ]
    nodes = [
        helper.make_node("MatMul", [FEATURES, "est_weight"], ["est_product"], name="est_matmul"),
        helper.make_node("Add", ["est_product", "est_bias"], ["est_logit"], name="est_bias_add"),
    ]
    if not classifier:
        nodes.append(helper.make_node("Identity", ["est_logit"], ["variable"], name="est_output"))
        return [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])], nodes, inits
    if list(est.classes_) != list(range(len(est.classes_))):
        raise UnsupportedModel(f"{family}: classes {list(est.classes_)}; expected 0..K-1 (training encodes labels so)")
    if coef.shape[0] == 1:  # binary: sklearn's predict_proba is [1 - expit(d), expit(d)]
        inits.append(numpy_helper.from_array(np.array([1.0], dtype=np.float32), "est_one"))
        inits.append(numpy_helper.from_array(np.array([0.0], dtype=np.float32), "est_zero"))
        inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "est_flat"))
        nodes += [
            helper.make_node("Sigmoid", ["est_logit"], ["est_p1"], name="est_sigmoid"),
            helper.make_node("Sub", ["est_one", "est_p1"], ["est_p0"], name="est_complement"),
            helper.make_node("Concat", ["est_p0", "est_p1"], ["probabilities"], axis=1, name="est_proba"),
            helper.make_node("Greater", ["est_logit", "est_zero"], ["est_positive"], name="est_decide"),
            helper.make_node("Cast", ["est_positive"], ["est_label2d"], to=TensorProto.INT64, name="est_label_cast"),
            helper.make_node("Reshape", ["est_label2d", "est_flat"], ["label"], name="est_label"),
        ]
    else:
        nodes += [
            helper.make_node("Softmax", ["est_logit"], ["probabilities"], axis=1, name="est_softmax"),
            helper.make_node("ArgMax", ["est_logit"], ["label"], axis=1, keepdims=0, name="est_label"),
        ]
    outputs = [
        helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, coef.shape[0] + (coef.shape[0] == 1)]),
    ]
    return outputs, nodes, inits


def is_tabular_pipeline(model: Any) -> bool:
    """Whether `model` is families.build_model's Pipeline(preprocess, model), not the user's whole pipeline."""
    return set(dict(getattr(model, "named_steps", {}))) == {"preprocess", "model"}


def estimator_of(model: Any) -> Any:
    """What skl2onnx converts: the Pipeline's `model` step, or the user's whole pipeline itself."""
    return model.named_steps["model"] if is_tabular_pipeline(model) else model


def convert(model: Any, initial_types: list, classifier: bool):
    """skl2onnx's ModelProto of `model` (onnxmltools' converters registered first when it needs them)."""
    from skl2onnx import convert_sklearn

    converters.register_external(model)
    model = converters.convertible(model)
    final = converters.final_estimator(model)
    options = {id(final): {"zipmap": False}} if classifier and converters.accepts_zipmap(final) else None
    with warnings.catch_warnings():
        # skl2onnx reads attributes sklearn 1.9 deprecates (SVC probA_) and passes numpy bools as ints:
        # its internals, not ours; the parity gate checks the result.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        onnx_model = convert_sklearn(
            model, initial_types=initial_types, options=options, target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET}
        )
    hist = [leaf for leaf in converters.leaves(model) if _is_hist_gradient_boosting(leaf)]
    if len(hist) == 1:
        tree_precision.restore_hist_gradient_boosting(onnx_model, hist[0])
    return onnx_model


def _is_hist_gradient_boosting(estimator: Any) -> bool:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    return type(estimator) in (HistGradientBoostingClassifier, HistGradientBoostingRegressor)


def estimator_to_onnx(parts: PipelineParts, classifier: bool):
    """The estimator's graph from FEATURES (N, width) float32 to the outputs."""
    from skl2onnx.common.data_types import FloatTensorType

    if torch_graph.is_torch_tabular(parts.estimator):
        return torch_graph.torch_tabular_to_onnx(parts.estimator, FEATURES, parts.width, classifier)
    return convert(parts.estimator, [(FEATURES, FloatTensorType([None, parts.width]))], classifier)


def check_outputs(model: Any, family: str, classifier: bool) -> None:
    """The outputs serving reads: a classifier's `probabilities` (N, K) float tensor, a regressor's first output."""
    from onnx import TensorProto

    outputs = {o.name: o.type.tensor_type for o in model.graph.output}
    floats = (TensorProto.FLOAT, TensorProto.DOUBLE)
    if classifier:
        proba = outputs.get("probabilities")
        if proba is None or proba.elem_type not in floats or len(proba.shape.dim) != 2:
            raise UnsupportedModel(
                f"{family}: the classifier graph has outputs {sorted(outputs)}, without a float (N, K) tensor named "
                "'probabilities' (class probabilities, column c = class c). Fix: have the converter's shape "
                "calculator declare outputs label and probabilities (e.g. skl2onnx's "
                "calculate_linear_classifier_output_shapes) and register it with options={'nocl': [True, False], "
                "'zipmap': [True, False, 'columns']}, as skl2onnx registers its classifiers"
            )
    elif not outputs or model.graph.output[0].type.tensor_type.elem_type not in floats:
        raise UnsupportedModel(
            f"{family}: the regressor graph's first output is not a float tensor ({sorted(outputs)})"
        )


def _prepend(inputs: list, nodes: list, inits: list, width: int, estimator: Any, family: str, double: bool):
    """The preprocessing graph (raw columns → FEATURES) merged in front of the estimator's graph."""
    from onnx import TensorProto, compose, helper

    estimator.ir_version = IR_VERSION
    dtype = TensorProto.DOUBLE if double else TensorProto.FLOAT
    features = helper.make_tensor_value_info(FEATURES, dtype, [None, width])
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)]
    preprocess = helper.make_model(
        helper.make_graph(nodes, "preprocess", inputs, [features], inits),
        opset_imports=[helper.make_opsetid(o.domain, o.version) for o in estimator.opset_import] or opsets,
        ir_version=IR_VERSION,
    )
    if not any(o.domain == "ai.onnx.ml" for o in preprocess.opset_import):
        preprocess.opset_import.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    onnx_model = compose.merge_models(preprocess, estimator, io_map=[(FEATURES, FEATURES)])
    onnx_model.graph.name = f"mlgraph_{family}"
    return onnx_model


def pipeline_to_onnx(model: Any, family: str, classifier: bool):
    """The ModelProto of a fitted tabular Pipeline (see the module docstring)."""
    from onnx import helper

    parts = pipeline_parts(model, family)
    if family in LINEAR_FAMILIES:
        inputs, pre_nodes, pre_inits = _preprocess_nodes(parts)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)]
        outputs, est_nodes, est_inits = _linear_nodes(parts, family, classifier)
        graph = helper.make_graph(pre_nodes + est_nodes, f"mlgraph_{family}", inputs, outputs, pre_inits + est_inits)
        onnx_model = helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)
    else:
        estimator = estimator_to_onnx(parts, classifier)
        double = tree_precision.use_double_features(estimator, FEATURES)  # LightGBM, HistGradientBoosting
        inputs, pre_nodes, pre_inits = _preprocess_nodes(parts, double)
        onnx_model = _prepend(inputs, pre_nodes, pre_inits, parts.width, estimator, family, double)
    check_outputs(onnx_model, family, classifier)
    onnx_model.producer_name = "mlgraph"
    return onnx_model


def _double_inputs(model: Any, numeric: tuple[str, ...]) -> None:
    """Make each numeric input a (N, 1) double that the graph casts to float32 before what read it."""
    from onnx import TensorProto, helper

    renamed = {c: f"mlgraph_f32_{c}" for c in numeric}
    for node in model.graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    casts = [helper.make_node("Cast", [c], [renamed[c]], to=TensorProto.FLOAT, name=f"pre_cast_{c}") for c in numeric]
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    for value in model.graph.input:
        if value.name in renamed:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE


def whole_model_to_onnx(model: Any, family: str, classifier: bool, spec: FeatureSpec):
    """The ModelProto of the user's whole pipeline (`preprocessing: none`), from the raw columns of `spec`.

    skl2onnx gets float32 columns (its converters compute in float, and a double input would leave some
    of them declaring double outputs their ONNX-ML operators do not produce); the graph takes doubles, as
    every tabular graph does, and casts them first."""
    from onnx import TensorProto, helper
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    if converters.leaves(model) == [model] and not spec.categorical:
        width = len(spec.numeric)
        estimator = convert(model, [(FEATURES, FloatTensorType([None, width]))], classifier)
        double = tree_precision.use_double_features(estimator, FEATURES)
        inputs = [helper.make_tensor_value_info(c, TensorProto.DOUBLE, [None, 1]) for c in spec.numeric]
        to = TensorProto.DOUBLE if double else TensorProto.FLOAT
        nodes = [
            helper.make_node("Concat", list(spec.numeric), ["pre_num"], axis=1, name="pre_num_concat"),
            helper.make_node("Cast", ["pre_num"], [FEATURES], to=to, name="pre_num_cast"),
        ]
        onnx_model = _prepend(inputs, nodes, [], width, estimator, family, double)
    else:
        initial = [(c, FloatTensorType([None, 1])) for c in spec.numeric]
        initial += [(c, StringTensorType([None, 1])) for c in spec.categorical]
        onnx_model = convert(model, initial, classifier)
        tree_precision.use_double_features(onnx_model, None)  # trees read values computed in float32
        _double_inputs(onnx_model, spec.numeric)
        onnx_model.ir_version = IR_VERSION
        onnx_model.graph.name = f"mlgraph_{family}"
    check_outputs(onnx_model, family, classifier)
    onnx_model.producer_name = "mlgraph"
    return onnx_model
