"""Tree ensembles that compare in float64 keep float64 thresholds, and read float64 features, in the graph.

LightGBM and sklearn's HistGradientBoosting compare a float64 feature with a float64 threshold; XGBoost and
sklearn's forests and trees compare in float32, and their graphs stay float32. The converters write every
threshold as float32 (TreeEnsemble `nodes_values`). Those two ensembles put a threshold midway between two
neighbouring training values, and with discrete data — ages with one decimal — the midpoint is itself a
value seen later: (31.0 + 31.2) / 2 lies one double ulp from 31.1, in float32 the two round together, and
the row takes the other branch (measured: a 25-tree LightGBM's class probability off by 0.24). The fix is
exact in onnxruntime: the TreeEnsemble node carries the native float64 thresholds (`nodes_values_as_tensor`,
ai.onnx.ml opset 3) and reads float64 features, which onnxruntime then compares in double.

- LightGBM: onnxmltools' converter is registered (converters.py) wrapped in `exact_thresholds`, a container
  proxy that writes the thresholds it read from the booster's dump (float64) as the tensor attribute;
- HistGradientBoosting: skl2onnx has already rounded them, so `restore_hist_gradient_boosting` puts back the
  predictors' own `num_threshold` of each (tree, node) — only when every one rounds to the value written;
- `use_double_features` switches the estimator graph's input to float64 when every node reading it is such
  a TreeEnsemble; any other float64-threshold node (one reading a float32 value computed in the graph, e.g.
  by skl2onnx's scaler) goes back to float32 thresholds, the converters' own form.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
EXACT = "nodes_values_as_tensor"
ML_OPSET_EXACT = 3  # the ai.onnx.ml opset that has it


class _ExactThresholds:
    """A skl2onnx container whose TreeEnsemble nodes keep their float64 thresholds (see the docstring)."""

    def __init__(self, container: Any) -> None:
        self._container = container

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def add_node(self, op_type, inputs, outputs, op_domain="", op_version=None, name=None, **attrs):
        from onnx import numpy_helper

        if op_type in TREE_OPS and "nodes_values" in attrs:
            values = np.asarray(attrs.pop("nodes_values"), dtype=np.float64)
            attrs[EXACT] = numpy_helper.from_array(values)
        return self._container.add_node(
            op_type, inputs, outputs, op_domain=op_domain, op_version=op_version, name=name, **attrs
        )


def exact_thresholds(container: Any) -> _ExactThresholds:
    return _ExactThresholds(container)


def _attribute(node: Any, name: str) -> Any:
    return next((a for a in node.attribute if a.name == name), None)


def _trees(model: Any) -> list:
    return [n for n in model.graph.node if n.op_type in TREE_OPS and n.domain == "ai.onnx.ml"]


def _set_exact(node: Any, values: np.ndarray) -> None:
    from onnx import helper, numpy_helper

    kept = [a for a in node.attribute if a.name not in ("nodes_values", EXACT)]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(EXACT, numpy_helper.from_array(values))])


def restore_hist_gradient_boosting(model: Any, estimator: Any) -> bool:
    """Give the one TreeEnsemble node of a converted HistGradientBoosting its float64 thresholds; whether it did."""
    from onnx import helper

    trees = _trees(model)
    predictors = getattr(estimator, "_predictors", None)
    if len(trees) != 1 or not predictors or _attribute(trees[0], "nodes_values") is None:
        return False
    node = trees[0]
    written = np.asarray(helper.get_attribute_value(_attribute(node, "nodes_values")), dtype=np.float32)
    modes = helper.get_attribute_value(_attribute(node, "nodes_modes"))
    tree_ids = helper.get_attribute_value(_attribute(node, "nodes_treeids"))
    node_ids = helper.get_attribute_value(_attribute(node, "nodes_nodeids"))
    per_iteration = len(predictors[0])  # skl2onnx numbers tree (iteration i, class k) i * K + k
    exact = written.astype(np.float64)
    for i, (mode, tree, index) in enumerate(zip(modes, tree_ids, node_ids, strict=True)):
        if mode == b"LEAF":
            continue
        iteration, k = divmod(tree, per_iteration)
        if iteration >= len(predictors) or index >= len(predictors[iteration][k].nodes):
            return False
        found = predictors[iteration][k].nodes[index]
        if found["is_leaf"] or found["is_categorical"] or np.float32(found["num_threshold"]) != written[i]:
            return False  # not the node we think it is: leave the converter's graph as it is
        exact[i] = found["num_threshold"]
    _set_exact(node, exact)
    return True


def _float_thresholds(node: Any) -> None:
    from onnx import helper, numpy_helper

    values = numpy_helper.to_array(helper.get_attribute_value(_attribute(node, EXACT)))
    kept = [a for a in node.attribute if a.name != EXACT]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute("nodes_values", values.astype(np.float32).tolist())])


def _exact(node: Any) -> bool:
    return node.op_type in TREE_OPS and node.domain == "ai.onnx.ml" and _attribute(node, EXACT) is not None


def use_double_features(model: Any, features: str | None) -> bool:
    """Read `features` (a float32 graph input) as float64 if only float64-threshold trees read it; returns
    whether it did. Float64-threshold trees reading anything else get float32 thresholds back."""
    from onnx import TensorProto

    readers = [n for n in model.graph.node if features is not None and features in n.input]
    double = bool(readers) and all(_exact(n) for n in readers)
    if double:
        value = next(v for v in model.graph.input if v.name == features)
        value.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in model.graph.node:
        if _exact(node) and not (double and features in node.input):
            _float_thresholds(node)
    if double:  # the tensor attribute is ai.onnx.ml opset 3's; a converter may declare an older one
        for opset in model.opset_import:
            if opset.domain == "ai.onnx.ml":
                opset.version = max(opset.version, ML_OPSET_EXACT)
    return double
