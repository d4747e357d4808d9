"""Export the promoted champion to ONNX: `models/{exp}/onnx/model.onnx` and `export_report.json`.

- tabular Pipelines: sklearn_graph.py (one typed input per raw column, preprocessing inside the graph);
- GRU / LSTM: `torch.onnx.export(dynamo=False)` — torch 2.13's dynamo exporter needs onnxscript, which
  is not installed — with dynamic batch and sequence axes; the graph takes raw values and returns raw
  forecasts (the transform the model was trained with is part of the torch module, see
  training/forecasting.py);
- Prophet and seasonal naive have no faithful export: the report says why, no ONNX file exists (a stale
  one from an earlier champion is removed) and serving keeps the native model.

A graph is written only after onnxruntime has loaded it, so an unsupported operator or a
converter/runtime mismatch fails here, with the family and the converter's own message, and leaves
no ONNX file behind.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mlgraph.core.atomic import atomic_write_json
from mlgraph.core.drive import DrivePaths
from mlgraph.core.hashing import sha256_file
from mlgraph.deployment import runtime
from mlgraph.deployment.champion import Champion
from mlgraph.training import forecasting as fc

EXPORTED, NOT_EXPORTABLE = "exported", "not_exportable"
TORCH_OPSET = 17
NO_FAITHFUL_EXPORT = {
    "prophet": "Prophet predicts through its own Python code over a fitted Stan model (trend changepoints, "
    "Fourier seasonalities, holidays); no ONNX converter reproduces it",
    "seasonal_naive": "seasonal naive repeats the value one season earlier: a lookup in the served history, "
    "with no weights to export",
}
MISSING_VALUES = {"numeric": "NaN", "categorical": "empty string"}


class ExportError(RuntimeError):
    """The champion could not be exported; the message names the family, the converter's error and the fix."""


@dataclass(frozen=True)
class ExportOutcome:
    status: str
    report: dict[str, Any]
    path: Path | None  # model.onnx when exported

    @property
    def exported(self) -> bool:
        return self.status == EXPORTED


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def recurrent_to_onnx(fit: fc.ForecastFit):
    """The ModelProto of a GRU/LSTM forecaster: input `window` (batch, steps, 1), output `forecast` (batch,)."""
    import onnx
    import torch

    module = fit.model.eval()  # raw window in, raw forecast out: its transform is part of the module
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # TorchScript-exporter deprecation and "batch_first RNN" notes: the parity gate is the real check.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(2, int(fit.metadata["window"]), 1),),
            buffer,
            input_names=[runtime.WINDOW_INPUT],
            output_names=[runtime.FORECAST_OUTPUT],
            dynamic_axes={runtime.WINDOW_INPUT: {0: "batch", 1: "steps"}, runtime.FORECAST_OUTPUT: {0: "batch"}},
            opset_version=TORCH_OPSET,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    model.producer_name = "mlgraph"
    return model


def _reset_skl2onnx_names() -> None:
    """skl2onnx names KNN distance subgraphs and some variables from process-wide counters (private, with
    no public reset), so a second export of the same model in one process would name nodes differently;
    every export starts from the same counts, and a test checks the bytes repeat."""
    from skl2onnx.common import _topology, utils

    utils._unique_index["subgraph"] = 0
    _topology.Variable._UNIQUE_NUMBER_ = 0


def build_onnx(champion: Champion, native: Any) -> tuple[Any, dict[str, Any]]:
    """(ModelProto, converter description) for an exportable champion."""
    if champion.task == "forecasting":
        return recurrent_to_onnx(native), {
            "name": "torch.onnx.export (TorchScript, dynamo=False)",
            "opset_requested": TORCH_OPSET,
        }
    from mlgraph.deployment import sklearn_graph

    converter = (
        "mlgraph preprocessing + MatMul linear estimator"
        if champion.family in sklearn_graph.LINEAR_FAMILIES
        else "mlgraph preprocessing + skl2onnx estimator"
    )
    _reset_skl2onnx_names()
    model = sklearn_graph.pipeline_to_onnx(native, champion.family, champion.task == "classification")
    # Merging the preprocessing and estimator graphs names them with random UUIDs in the doc string;
    # the same champion must export to the same bytes (lineage and data versions hash them).
    model.graph.doc_string = f"{champion.family} pipeline: preprocessing + estimator"
    return model, {"name": converter, "opset_requested": sklearn_graph.OPSET, "missing_values": MISSING_VALUES}


def _remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _fix(champion: Champion) -> str:
    if champion.task == "forecasting":
        return (
            "check that torch and onnxruntime are the versions pyproject.toml allows (reinstall with `make venv`); "
            "if the model class changed, check that training/forecasting.py's RecurrentForecaster still "
            "traces (TorchScript) with raw windows in and forecasts out"
        )
    return (
        "if skl2onnx has no converter for this estimator, choose another family in the experiment YAML; if it is "
        "a version mismatch, install skl2onnx, onnx and onnxruntime within pyproject.toml's ranges (`make venv`)"
    )


def export_champion(drive: DrivePaths, champion: Champion, native: Any) -> ExportOutcome:
    """Write model.onnx (after onnxruntime loaded it) and export_report.json; see the module docstring."""
    onnx_path = drive.onnx_model_path(champion.experiment)
    report_path = drive.export_report_json(champion.experiment)
    base = {
        "experiment": champion.experiment,
        "family": champion.family,
        "model_version": champion.model_version,
        "run_id": champion.run_id,
        "config_hash": champion.config_hash,
        "source_model": {"path": str(champion.model_path), "sha256": sha256_file(champion.model_path)},
    }
    if champion.family in NO_FAITHFUL_EXPORT:
        _remove(onnx_path, drive.onnx_int8_model_path(champion.experiment))
        report = {**base, "status": NOT_EXPORTABLE, "reason": NO_FAITHFUL_EXPORT[champion.family], "served": "native"}
        atomic_write_json(report_path, report)
        return ExportOutcome(NOT_EXPORTABLE, report, None)

    start = time.perf_counter()
    try:
        model, converter = build_onnx(champion, native)
        removed = runtime.dedupe_opsets(model)
        payload = model.SerializeToString()
        runtime.session(payload)  # an unsupported operator or an opset the runtime lacks fails here
    except Exception as exc:
        # What is on the drive must be the current champion's or nothing: never an older champion's graph.
        _remove(onnx_path, drive.onnx_int8_model_path(champion.experiment), report_path)
        raise ExportError(
            f"{champion.experiment}: ONNX export of {champion.label()} failed: {type(exc).__name__}: {exc}. "
            f"Fix: {_fix(champion)}. Nothing was written; the native model stays served."
        ) from exc
    seconds = time.perf_counter() - start
    runtime.write_model(model, onnx_path)
    versions = {p: _version(p) for p in ("onnx", "onnxruntime", "skl2onnx", "scikit-learn", "torch")}
    report = {
        **base,
        "status": EXPORTED,
        "path": str(onnx_path),
        "sha256": sha256_file(onnx_path),
        "bytes": onnx_path.stat().st_size,
        "conversion_seconds": round(seconds, 3),
        "opset": runtime.opsets(model),
        "opset_duplicates_removed": removed,
        "ir_version": model.ir_version,
        "converter": {**converter, "versions": versions},
        "inputs": runtime.input_schema(model),
        "outputs": [o.name for o in model.graph.output],
    }
    atomic_write_json(report_path, report)
    return ExportOutcome(EXPORTED, report, onnx_path)


def onnx_lineage_files(drive: DrivePaths, experiment: str) -> dict[str, Path]:
    """The champion's ONNX files for lineage.json (`onnx_model`, `onnx_int8_model`), those that exist."""
    files = {"onnx_model": drive.onnx_model_path(experiment), "onnx_int8_model": drive.onnx_int8_model_path(experiment)}
    return {name: path for name, path in files.items() if path.exists()}


def onnx_hashes(drive: DrivePaths, experiment: str) -> dict[str, str]:
    """SHA-256 of each ONNX file of the champion, by lineage name."""
    return {name: sha256_file(path) for name, path in onnx_lineage_files(drive, experiment).items()}
