"""Running a champion three ways — native (sklearn / torch), ONNX FP32, ONNX INT8 — behind one interface.

A `Predictor` turns `Rows` into its own input form once (`prepare`: a frame, a tensor or an ONNX feed)
and predicts from it (`predict`), so a benchmark times only the model. Every predictor returns one
float64 per row — the positive-class probability (binary classification) or the value (regression,
forecasting) — or, for a multiclass champion, the (n, k) class probabilities (column c = class index c).
Also the ONNX file helpers shared by export and quantization. onnx, onnxruntime, torch and sklearn are
imported inside the functions.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlgraph.core.atomic import atomic_write_bytes
from mlgraph.deployment.champion import Champion, Rows
from mlgraph.training import families as fam

NATIVE, ONNX_FP32, ONNX_INT8 = "native", "onnx_fp32", "onnx_int8"
DEFAULT_DOMAINS = ("", "ai.onnx")  # two spellings of the default domain
WINDOW_INPUT, FORECAST_OUTPUT = "window", "forecast"
TENSOR_TYPES = {1: "tensor(float)", 7: "tensor(int64)", 8: "tensor(string)", 9: "tensor(bool)", 11: "tensor(double)"}


def dedupe_opsets(model: Any) -> list[str]:
    """Leave one opset import per domain (the highest version); returns what was removed.

    skl2onnx graphs (and graphs merged from them) list the default domain more than once, and
    onnxruntime's quantizer then fails with "Failed to find proper ai.onnx domain" (onnxruntime #15563).
    """
    from onnx import helper

    best: dict[str, int] = {}
    for opset in model.opset_import:
        domain = "" if opset.domain in DEFAULT_DOMAINS else opset.domain
        best[domain] = max(best.get(domain, 0), opset.version)
    before = [f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import]
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(best.items()))
    after = [f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import]
    removed = list(before)
    for entry in after:
        removed.remove(entry)
    return removed


def opsets(model: Any) -> dict[str, int]:
    return {o.domain or "ai.onnx": o.version for o in model.opset_import}


def write_model(model: Any, path: Path) -> Path:
    return atomic_write_bytes(path, model.SerializeToString())


def session(model: str | Path | bytes, threads: int = 1) -> Any:
    """An onnxruntime CPU session with a fixed intra-op thread count (1 = single-threaded)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def input_schema(model: Any) -> list[dict[str, Any]]:
    """Name, ONNX type and shape (None for a dynamic axis) of each graph input, in order."""
    schema = []
    for value in model.graph.input:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        schema.append(
            {"name": value.name, "type": TENSOR_TYPES.get(tensor.elem_type, str(tensor.elem_type)), "shape": shape}
        )
    return schema


def onnx_feed(rows: Rows, schema: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The ONNX inputs for `rows`: one (N, 1) column each (NaN / "" = missing), or the (N, steps, 1) window."""
    if rows.windows is not None:
        return {WINDOW_INPUT: np.ascontiguousarray(rows.windows, dtype=np.float32)[:, :, None]}
    feed = {}
    for entry in schema:
        column = rows.frame[entry["name"]]
        if entry["type"] == "tensor(string)":
            values = np.array(["" if v is None or v != v else str(v) for v in column], dtype=object)
        else:
            values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        feed[entry["name"]] = values.reshape(-1, 1)
    return feed


@contextlib.contextmanager
def native_threads(threads: int) -> Iterator[None]:
    """BLAS/OpenMP (sklearn) and torch intra-op pools limited to `threads` for the block."""
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")  # only when a model already loaded it: importing it costs 1.6 s
    previous = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=threads):
        if torch is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(previous)


@dataclass
class Predictor:
    """One variant of the champion: how to prepare its input and predict from it."""

    variant: str
    task: str
    model: Any  # a Pipeline, a ForecastFit, or an onnxruntime session
    threads: int = 1

    def prepare(self, rows: Rows) -> Any:
        if self.variant != NATIVE:
            return onnx_feed(rows, self.schema)
        if rows.windows is None:
            return rows.frame
        import torch

        # Raw windows, as the ONNX graph takes them: the model's transform is inside the module.
        return torch.from_numpy(np.ascontiguousarray(rows.windows, dtype=np.float32)).unsqueeze(-1)

    def predict(self, prepared: Any) -> np.ndarray:
        if self.variant != NATIVE:
            outputs = self.model.run(self.output_names, prepared)
            values = outputs[-1]
            if self.task == "classification":
                return np.asarray(values[:, -1] if values.shape[1] == 2 else values, dtype=np.float64)
            return np.asarray(values.reshape(-1), dtype=np.float64)
        if self.task != "forecasting":
            return fam.predict(self.task, self.model, prepared)
        import torch

        with torch.no_grad():
            return self.model.model(prepared).numpy().astype(np.float64)

    def row(self, prepared: Any, i: int) -> Any:
        """Row `i` of prepared input, still prepared (so one-row calls time only the model)."""
        if isinstance(prepared, dict):
            return {name: values[i : i + 1] for name, values in prepared.items()}
        if hasattr(prepared, "iloc"):
            return prepared.iloc[i : i + 1]
        return prepared[i : i + 1]

    def __call__(self, rows: Rows) -> np.ndarray:
        with native_threads(self.threads):
            return self.predict(self.prepare(rows))

    @property
    def schema(self) -> list[dict[str, Any]]:
        return [{"name": i.name, "type": i.type} for i in self.model.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        names = [o.name for o in self.model.get_outputs()]
        return ["probabilities"] if self.task == "classification" else names[:1]


def native_predictor(champion: Champion, model: Any, threads: int = 1) -> Predictor:
    return Predictor(NATIVE, champion.task, model, threads)


def onnx_predictor(variant: str, task: str, path: Path, threads: int = 1) -> Predictor:
    return Predictor(variant, task, session(path, threads), threads)
