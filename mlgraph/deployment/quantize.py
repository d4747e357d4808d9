"""Dynamic INT8 quantization of the exported champion, reporting exactly what changed.

onnxruntime's dynamic quantizer rewrites MatMul (→ MatMulInteger / DynamicQuantizeMatMul), LSTM
(→ DynamicQuantizeLSTM), Conv and Attention with INT8 weights; it leaves ONNX-ML operators
(TreeEnsemble*, SVM*, LinearClassifier), GRU and the KNN Scan graph as they are. When it rewrites
nothing, there is no INT8 model: the report says "INT8 not applicable: 0 quantizable nodes" and no file
is written (never a copy of the FP32 graph under an INT8 name).

Writes `models/{exp}/onnx/model_int8.onnx` (only when something was quantized) and
`quantization_report.json` (always).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mlgraph.core.atomic import atomic_write_bytes, atomic_write_json
from mlgraph.core.drive import DrivePaths
from mlgraph.core.hashing import sha256_file
from mlgraph.deployment import runtime

QUANTIZED, NOT_APPLICABLE = "quantized", "not_applicable"
# Operators the dynamic quantizer emits, and the FP32 operator each replaces.
QUANTIZED_FORMS = {
    "MatMulInteger": "MatMul",
    "DynamicQuantizeMatMul": "MatMul",
    "DynamicQuantizeLSTM": "LSTM",
    "ConvInteger": "Conv",
    "QAttention": "Attention",
}
OP_TYPES = ("MatMul", "LSTM", "Conv", "Attention")
NOT_APPLICABLE_SUMMARY = "INT8 not applicable: 0 quantizable nodes"


@dataclass(frozen=True)
class QuantizationOutcome:
    status: str
    report: dict[str, Any]
    path: Path | None

    @property
    def applicable(self) -> bool:
        return self.status == QUANTIZED


def quantized_nodes(model: Any) -> dict[str, int]:
    """FP32 operator type → how many of its nodes the quantized graph runs in INT8."""
    counts = collections.Counter(QUANTIZED_FORMS[n.op_type] for n in model.graph.node if n.op_type in QUANTIZED_FORMS)
    return dict(sorted(counts.items()))


def op_histogram(model: Any) -> dict[str, int]:
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node if n.op_type != "Constant").items()))


class _DropPreprocessAdvice(logging.Filter):
    # quantize_dynamic logs a root-logger warning to run its shape pre-processing first; these graphs
    # have static weights and the parity gate is the check that counts.
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    advice = _DropPreprocessAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def quantize_model(fp32: Any) -> tuple[bytes, dict[str, int], list[str]]:
    """(INT8 model bytes, quantized nodes per op type, opset imports removed) for an FP32 ModelProto."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    removed = runtime.dedupe_opsets(fp32)
    with tempfile.TemporaryDirectory(prefix="mlgraph-int8-") as tmp, _quiet_quantizer():
        out = Path(tmp) / "model_int8.onnx"
        # reduce_range: 7-bit weights. Dynamic quantization runs uint8 activations × int8 weights, and on x86
        # CPUs without VNNI (AVX2 only, e.g. AMD EPYC Zen 2/3) ORT's kernel adds pairs of those products in
        # int16, which saturates with full-range weights (measured: a MatMul off by 25 %). 7-bit weights
        # cannot overflow it; on VNNI machines they cost a little precision, within the INT8 budget.
        quantize_dynamic(fp32, out, op_types_to_quantize=list(OP_TYPES), weight_type=QuantType.QInt8, reduce_range=True)
        payload = out.read_bytes()
    return payload, quantized_nodes(onnx.load_from_string(payload)), removed


def _remove_int8(drive: DrivePaths, experiment: str) -> None:
    drive.onnx_int8_model_path(experiment).unlink(missing_ok=True)


def quantize_champion(drive: DrivePaths, experiment: str, export_report: dict[str, Any]) -> QuantizationOutcome:
    """Quantize model.onnx if the export produced one; write the report (and the INT8 file when applicable)."""
    import onnx

    report_path = drive.quantization_report_json(experiment)
    base = {key: export_report.get(key) for key in ("experiment", "family", "model_version", "run_id")}
    if export_report.get("status") != "exported":
        _remove_int8(drive, experiment)
        report = {
            **base,
            "status": NOT_APPLICABLE,
            "summary": f"INT8 not applicable: no ONNX export ({export_report.get('reason', 'not exported')})",
        }
        atomic_write_json(report_path, report)
        return QuantizationOutcome(NOT_APPLICABLE, report, None)
    fp32_path = drive.onnx_model_path(experiment)
    if sha256_file(fp32_path) != export_report.get("sha256"):
        raise ValueError(
            f"{fp32_path}: SHA-256 differs from {drive.export_report_json(experiment)}: the FP32 graph changed after "
            "export. Fix: materialize onnx_model again."
        )
    fp32 = onnx.load(str(fp32_path))
    histogram = op_histogram(fp32)
    start = time.perf_counter()
    payload, counts, removed = quantize_model(fp32)
    seconds = time.perf_counter() - start
    common = {
        **base,
        "fp32_path": str(fp32_path),
        "fp32_sha256": export_report.get("sha256"),
        "fp32_bytes": fp32_path.stat().st_size,
        "fp32_ops": histogram,
        "opset_duplicates_removed": removed,
        "method": {
            "kind": "onnxruntime.quantization.quantize_dynamic",
            "weight_type": "QInt8",
            "per_channel": False,
            "op_types": list(OP_TYPES),
            "onnxruntime": metadata.version("onnxruntime"),
        },
        "quantized_nodes": counts,
    }
    if not counts:
        _remove_int8(drive, experiment)
        report = {**common, "status": NOT_APPLICABLE, "summary": NOT_APPLICABLE_SUMMARY}
        atomic_write_json(report_path, report)
        return QuantizationOutcome(NOT_APPLICABLE, report, None)
    runtime.session(payload)  # it must load before it is written where serving looks for it
    int8_path = atomic_write_bytes(drive.onnx_int8_model_path(experiment), payload)
    nodes = ", ".join(f"{op} {n}" for op, n in counts.items())
    report = {
        **common,
        "status": QUANTIZED,
        "summary": f"INT8: {sum(counts.values())} node(s) quantized ({nodes}); "
        f"{common['fp32_bytes']:,} → {len(payload):,} bytes",
        "path": str(int8_path),
        "sha256": sha256_file(int8_path),
        "bytes": len(payload),
        "size_ratio": round(common["fp32_bytes"] / len(payload), 3),
        "quantization_seconds": round(seconds, 3),
    }
    atomic_write_json(report_path, report)
    return QuantizationOutcome(QUANTIZED, report, int8_path)
