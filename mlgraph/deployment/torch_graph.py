"""The ONNX graph of the platform's tabular torch estimator (training/torch_tabular.py, `family: torch`).

TorchTabularModel runs the user's network on the preprocessed features cast to float32 — the very FEATURES
tensor sklearn_graph builds in front of every tabular estimator — and turns its outputs into sklearn's:
class probabilities are the softmax of the logits and the label their argmax; a regression value is the
output times the training target's standard deviation plus its mean (targets are standardised inside).
The network is exported with torch.onnx.export (TorchScript, dynamo=False, as for the recurrent
forecasters) and those few nodes follow it, so the graph is the estimator, not an approximation of it. A
network TorchScript cannot trace fails the export with torch's own message. torch is imported inside the
functions, and only for such a model.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np

TORCH_OPSET = 17  # what export.py's recurrent forecasters use; TorchScript export stops at 20
LOGITS = "torch_logits"


def is_torch_tabular(estimator: Any) -> bool:
    from mlgraph.training.torch_tabular import TorchTabularModel

    return type(estimator) is TorchTabularModel


def torch_tabular_to_onnx(estimator: Any, features: str, width: int, classifier: bool):
    """The ModelProto of a fitted TorchTabularModel: input `features` (N, width) float32; outputs `label` and
    `probabilities` (classifier) or `variable` (N, 1) (regressor), as skl2onnx's estimators name them."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation notes: the parity gate is the check
        torch.onnx.export(
            estimator.net_.eval(),
            (torch.zeros(2, width),),
            buffer,
            input_names=[features],
            output_names=[LOGITS],
            dynamic_axes={features: {0: "batch"}, LOGITS: {0: "batch"}},
            opset_version=TORCH_OPSET,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    graph = model.graph
    if classifier:
        k = len(estimator.classes_)
        if list(estimator.classes_) != list(range(k)):
            raise ValueError(f"torch: classes {list(estimator.classes_)}; expected 0..K-1 (training encodes labels so)")
        graph.initializer.append(numpy_helper.from_array(np.array([-1, k], dtype=np.int64), "torch_shape"))
        graph.node.extend(
            [
                helper.make_node("Reshape", [LOGITS, "torch_shape"], ["torch_scores"], name="torch_scores"),
                helper.make_node("Softmax", ["torch_scores"], ["probabilities"], axis=1, name="torch_softmax"),
                helper.make_node("ArgMax", ["torch_scores"], ["label"], axis=1, keepdims=0, name="torch_label"),
            ]
        )
        outputs = [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, k]),
        ]
    else:
        mean, std = estimator.target_scale_
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "torch_shape"),
                numpy_helper.from_array(np.array([std], dtype=np.float32), "torch_std"),
                numpy_helper.from_array(np.array([mean], dtype=np.float32), "torch_mean"),
            ]
        )
        graph.node.extend(
            [
                helper.make_node("Reshape", [LOGITS, "torch_shape"], ["torch_value"], name="torch_value"),
                helper.make_node("Mul", ["torch_value", "torch_std"], ["torch_scaled"], name="torch_unscale"),
                helper.make_node("Add", ["torch_scaled", "torch_mean"], ["variable"], name="torch_uncenter"),
            ]
        )
        outputs = [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])]
    del graph.output[:]
    graph.output.extend(outputs)
    return model
