"""What the release-gate checks evaluate, read from the drive: the champion, its test split and edge rows,
the native reference, and the ONNX variant named by the export or quantization report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlgraph.core.drive import DrivePaths
from mlgraph.core.experiment import ExperimentConfig
from mlgraph.core.hashing import sha256_file
from mlgraph.deployment import parity, runtime
from mlgraph.deployment.champion import Champion, Evaluation, edge_rows, evaluation_split, read_champion
from mlgraph.training.model_files import read_split


@dataclass(frozen=True)
class GateOutcome:
    applicable: bool
    reason: str = ""  # why the gate does not apply
    result: parity.ParityResult | None = None


@dataclass(frozen=True)
class GateInputs:
    champion: Champion
    native: Any
    evaluation: Evaluation
    reference: parity.Reference


def read_report(path: Path, producer: str, champion: Champion) -> dict[str, Any]:
    """An export or quantization report, provided it was written for the current champion."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing. Fix: materialize {producer} for {champion.experiment!r} first.")
    report = json.loads(path.read_text(encoding="utf-8"))
    if str(report.get("model_version")) != champion.model_version or report.get("run_id") != champion.run_id:
        raise ValueError(
            f"{path}: written for model_version {report.get('model_version')} (run {report.get('run_id')}), but the "
            f"champion is {champion.label()} (run {champion.run_id}). Fix: materialize {producer} again."
        )
    return report


def verified_file(path: Path, report: dict[str, Any], producer: str) -> Path:
    """The file a report names, provided its bytes are the ones the report hashed."""
    if not path.exists() or sha256_file(path) != report.get("sha256"):
        raise ValueError(
            f"{path}: missing or not the file {producer} wrote (SHA-256 {str(report.get('sha256'))[:16]}…). "
            f"Fix: materialize {producer} again."
        )
    return path


def gate_inputs(
    drive: DrivePaths, config: ExperimentConfig, champion: Champion | None = None, native: Any = None
) -> GateInputs:
    """What the parity gates compare against; `champion`/`native` when the caller already holds them."""
    champion = champion or read_champion(drive, config)
    native = champion.load() if native is None else native
    train, test = read_split(drive, config.name, "train"), read_split(drive, config.name, "test")
    evaluation = evaluation_split(config, train, test, native)
    edges, names = edge_rows(evaluation, native)
    reference = parity.reference(runtime.native_predictor(champion, native), evaluation, edges, names)
    return GateInputs(champion, native, evaluation, reference)


def onnx_file(drive: DrivePaths, champion: Champion, variant: str) -> Path | str:
    """The verified ONNX file of `variant` (onnx_fp32 / onnx_int8) for the current champion, or why there is none."""
    exp = champion.experiment
    if variant == runtime.ONNX_FP32:
        report = read_report(drive.export_report_json(exp), "onnx_model", champion)
        if report["status"] != "exported":
            return f"not exportable: {report.get('reason')}"
        return verified_file(drive.onnx_model_path(exp), report, "onnx_model")
    report = read_report(drive.quantization_report_json(exp), "onnx_int8_model", champion)
    if report["status"] != "quantized":
        return report["summary"]
    return verified_file(drive.onnx_int8_model_path(exp), report, "onnx_int8_model")


def served_onnx(drive: DrivePaths, champion: Champion) -> dict[str, Path | str]:
    """Variant name → its verified ONNX file, or the reason it does not exist (read from the reports)."""
    return {variant: onnx_file(drive, champion, variant) for variant in (runtime.ONNX_FP32, runtime.ONNX_INT8)}


def fp32_parity(
    drive: DrivePaths, config: ExperimentConfig, champion: Champion | None = None, native: Any = None
) -> GateOutcome:
    """FP32 parity of `champion` (default: the current one). A caller that is loading a champion passes it, so
    a promotion landing meanwhile cannot make the gate judge one champion's file against another's reports."""
    champion = champion or read_champion(drive, config)
    path = onnx_file(drive, champion, runtime.ONNX_FP32)
    if isinstance(path, str):
        return GateOutcome(False, f"{path}; the native model is served")
    inputs = gate_inputs(drive, config, champion, native)
    candidate = runtime.onnx_predictor(runtime.ONNX_FP32, config.task, path)
    result, _ = parity.compare(candidate, inputs.reference, inputs.evaluation, champion.threshold)
    return GateOutcome(True, result=result)


def int8_parity(drive: DrivePaths, config: ExperimentConfig, budget: parity.Int8Budget) -> GateOutcome:
    champion = read_champion(drive, config)
    int8_path = onnx_file(drive, champion, runtime.ONNX_INT8)
    if isinstance(int8_path, str):
        return GateOutcome(False, int8_path)
    fp32_path = onnx_file(drive, champion, runtime.ONNX_FP32)
    inputs = gate_inputs(drive, config, champion)
    candidate = runtime.onnx_predictor(runtime.ONNX_INT8, config.task, int8_path)
    result, int8_test = parity.compare(candidate, inputs.reference, inputs.evaluation, champion.threshold)
    fp32_test = runtime.onnx_predictor(runtime.ONNX_FP32, config.task, fp32_path)(inputs.evaluation.rows)
    result.metric_loss = parity.int8_metric_loss(config.task, inputs.evaluation.y_true, fp32_test, int8_test, budget)
    return GateOutcome(True, result=result)


@dataclass(frozen=True)
class SchemaOutcome:
    applicable: bool
    reason: str = ""
    differences: tuple[str, ...] = ()
    actual: tuple[dict[str, Any], ...] = ()
    expected: tuple[dict[str, str], ...] = ()


def schema(drive: DrivePaths, config: ExperimentConfig, champion: Champion | None = None) -> SchemaOutcome:
    """The serving inputs of model.onnx against the features training derives from the train split."""
    import onnx

    champion = champion or read_champion(drive, config)
    path = onnx_file(drive, champion, runtime.ONNX_FP32)
    if isinstance(path, str):
        return SchemaOutcome(False, path)
    actual = [{"name": i["name"], "type": i["type"]} for i in runtime.input_schema(onnx.load(str(path)))]
    expected = parity.expected_inputs(config, read_split(drive, config.name, "train"), champion)
    return SchemaOutcome(True, "", tuple(parity.schema_differences(actual, expected)), tuple(actual), tuple(expected))
