"""The ONNX graph of a fitted tabular Pipeline (families.build_model): raw columns in, scores out.

One typed input per raw column, shape (N, 1): `tensor(double)` for a numeric column (NaN = missing),
`tensor(string)` for a categorical one ("" = missing). The graph reproduces the Pipeline:

- numeric: median imputation, then standardisation, computed in float64 and only then cast to float32,
  which is what sklearn does. Why not skl2onnx's Imputer/Scaler: they compute in float32, and a tree
  threshold that sits exactly on a data value (random forests and histogram gradient boosting place them
  there whenever a feature is discrete, e.g. years with one decimal) then sends a test row down the
  other branch: on the salary demo that moved predictions by up to 3,500 (0.17 σ). Computing in double
  first gives the estimator the very float32 values sklearn's trees compare.
- categorical: one-hot with unknown categories ignored (all zeros), like
  OneHotEncoder(handle_unknown="ignore"). A missing value ("") is encoded as sklearn encodes it, and
  sklearn does not impute it: families.prepare_frame turns a gap into None, which
  SimpleImputer(missing_values=nan) does not count as missing, so the encoder sees None — an unknown
  category (all zeros), or its own column when training data had gaps too.
- estimator: linear families (logistic regression, ridge) are written as MatMul + Add (+ Sigmoid or
  Softmax), not as ONNX-ML LinearClassifier/LinearRegressor, so that dynamic INT8 quantization has
  something to quantize (it only touches MatMul-style nodes); every other family goes through skl2onnx
  (`zipmap` off: probabilities are a plain tensor).

Outputs: classifiers `label` (N,) int64 and `probabilities` (N, K) float; regressors `variable` (N, 1).
skl2onnx, onnx and sklearn are imported inside the functions (the code location loads this module).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

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


def _preprocess_nodes(parts: PipelineParts) -> tuple[list, list, list]:
    """(inputs, nodes, initializers) from the raw columns to FEATURES (N, width) float32."""
    from onnx import TensorProto, helper, numpy_helper

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
            helper.make_node("Cast", ["pre_num_scaled"], ["pre_num_float"], to=TensorProto.FLOAT, name="pre_num_cast"),
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
            helper.make_node(
                "Cast", [f"pre_cat_onehot_{i}"], [f"pre_cat_float_{i}"], to=TensorProto.FLOAT, name=f"pre_cat_cast_{i}"
            ),
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


def estimator_to_onnx(parts: PipelineParts, classifier: bool):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(parts.estimator): {"zipmap": False}} if classifier else None
    with warnings.catch_warnings():
        # skl2onnx reads attributes sklearn 1.9 deprecates (SVC probA_) and passes numpy bools as ints:
        # its internals, not ours; the parity gate checks the result.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return convert_sklearn(
            parts.estimator,
            initial_types=[(FEATURES, FloatTensorType([None, parts.width]))],
            options=options,
            target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        )


def pipeline_to_onnx(model: Any, family: str, classifier: bool):
    """The ModelProto of a fitted tabular Pipeline (see the module docstring)."""
    from onnx import compose, helper

    parts = pipeline_parts(model, family)
    inputs, pre_nodes, pre_inits = _preprocess_nodes(parts)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)]
    if family in LINEAR_FAMILIES:
        outputs, est_nodes, est_inits = _linear_nodes(parts, family, classifier)
        graph = helper.make_graph(pre_nodes + est_nodes, f"mlgraph_{family}", inputs, outputs, pre_inits + est_inits)
        onnx_model = helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)
    else:
        from onnx import TensorProto

        estimator = estimator_to_onnx(parts, classifier)
        estimator.ir_version = IR_VERSION
        features = helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, [None, parts.width])
        preprocess = helper.make_model(
            helper.make_graph(pre_nodes, "preprocess", inputs, [features], pre_inits),
            opset_imports=[helper.make_opsetid(o.domain, o.version) for o in estimator.opset_import] or opsets,
            ir_version=IR_VERSION,
        )
        if not any(o.domain == "ai.onnx.ml" for o in preprocess.opset_import):
            preprocess.opset_import.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
        onnx_model = compose.merge_models(preprocess, estimator, io_map=[(FEATURES, FEATURES)])
        onnx_model.graph.name = f"mlgraph_{family}"
    onnx_model.producer_name = "mlgraph"
    return onnx_model
