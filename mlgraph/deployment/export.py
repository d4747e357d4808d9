"""Export the promoted champion to ONNX: `models/{exp}/onnx/model.onnx` and `export_report.json`.

- tabular Pipelines: sklearn_graph.py (one typed input per raw column, preprocessing inside the graph; the
  estimator through skl2onnx, onnxmltools' LightGBM / XGBoost converters or the user's registered one —
  converters.py — or torch.onnx.export for the platform's tabular torch estimator, torch_graph.py), and the
  user's whole pipeline (`preprocessing: none`) with the same inputs;
- GRU / LSTM: `torch.onnx.export(dynamo=False)` — torch 2.13's dynamo exporter needs onnxscript, which
  is not installed — with dynamic batch and sequence axes; the graph takes raw values and returns raw
  forecasts (the transform the model was trained with is part of the torch module, see
  training/forecasting.py);
- Prophet and seasonal naive have no faithful export, and neither has a tabular estimator skl2onnx has no
  converter for (the user's class with none registered; decided on the fitted object, not the family
  name: converters.py): the report says why (status `not_exportable`, `reason`), no ONNX file exists (a
  stale one from an earlier champion is removed) and serving keeps the native model.

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
from mlgraph.training.families import FeatureSpec
from mlgraph.training.model_files import read_split

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


# Distributions that install a package under another name (xgboost's CPU wheel is `xgboost-cpu`).
_DISTRIBUTIONS = {"xgboost": ("xgboost", "xgboost-cpu")}


def _version(package: str) -> str | None:
    for distribution in _DISTRIBUTIONS.get(package, (package,)):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
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


def whole_model_spec(drive: DrivePaths, champion: Champion, native: Any) -> FeatureSpec:
    """The raw columns the user's whole pipeline reads: the names it was fitted with (`feature_names_in_`),
    numeric or categorical by their dtype in the training split (declared column types are not on the drive;
    a caller holding the experiment config may pass export_champion its spec instead)."""
    import pandas as pd

    from mlgraph.deployment import sklearn_graph

    names = getattr(native, "feature_names_in_", None)
    if names is None:
        raise sklearn_graph.UnsupportedModel(
            f"{champion.family}: {type(native).__qualname__} does not record the columns it was fitted on "
            "(feature_names_in_), so the graph's inputs are unknown. Fix: fit it on the feature frame (sklearn "
            "estimators record the names), or pass the feature spec to export_champion"
        )
    train = read_split(drive, champion.experiment, "train")
    numeric = [
        str(c)
        for c in names
        if pd.api.types.is_bool_dtype(train[c].dtype) or pd.api.types.is_numeric_dtype(train[c].dtype)
    ]
    return FeatureSpec(tuple(numeric), tuple(str(c) for c in names if str(c) not in numeric))


def build_onnx(champion: Champion, native: Any, spec: FeatureSpec | None = None) -> tuple[Any, dict[str, Any]]:
    """(ModelProto, converter description) for an exportable champion; `spec`: the user's whole pipeline's
    raw columns (required for one, unused otherwise)."""
    if champion.task == "forecasting":
        return recurrent_to_onnx(native), {
            "name": "torch.onnx.export (TorchScript, dynamo=False)",
            "opset_requested": TORCH_OPSET,
        }
    from mlgraph.deployment import converters, sklearn_graph

    classifier = champion.task == "classification"
    _reset_skl2onnx_names()
    if sklearn_graph.is_tabular_pipeline(native):
        converter = (
            "mlgraph preprocessing + MatMul linear estimator"
            if champion.family in sklearn_graph.LINEAR_FAMILIES
            else f"mlgraph preprocessing + {converters.converter_name(native.named_steps['model'])} estimator"
        )
        model = sklearn_graph.pipeline_to_onnx(native, champion.family, classifier)
        # Merging the preprocessing and estimator graphs names them with random UUIDs in the doc string;
        # the same champion must export to the same bytes (lineage and data versions hash them).
        model.graph.doc_string = f"{champion.family} pipeline: preprocessing + estimator"
    else:
        if spec is None:
            raise ValueError(f"{champion.family}: the user's whole pipeline needs its feature spec to be exported")
        converter = f"{converters.converter_name(native)} whole pipeline (preprocessing: none)"
        model = sklearn_graph.whole_model_to_onnx(native, champion.family, classifier, spec)
        model.graph.doc_string = f"{champion.family} whole pipeline (preprocessing: none)"
    return model, {"name": converter, "opset_requested": sklearn_graph.OPSET, "missing_values": MISSING_VALUES}


def not_exportable_reason(champion: Champion, native: Any) -> str | None:
    """Why the champion has no faithful ONNX form (a family that has none, or an estimator skl2onnx cannot
    convert), or None when it is exported."""
    if champion.family in NO_FAITHFUL_EXPORT:
        return NO_FAITHFUL_EXPORT[champion.family]
    if champion.task == "forecasting":
        return None
    from mlgraph.deployment import converters, sklearn_graph

    return converters.missing_reason(sklearn_graph.estimator_of(native), champion.family)


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
        "if the estimator's converter failed (a user's converter registered in the plugin module, or skl2onnx's / "
        "onnxmltools' own), fix it or choose another family in the experiment YAML; if it is a version mismatch, "
        "install skl2onnx, onnxmltools, onnx and onnxruntime within pyproject.toml's ranges (`make venv`)"
    )


def export_champion(
    drive: DrivePaths, champion: Champion, native: Any, spec: FeatureSpec | None = None
) -> ExportOutcome:
    """Write model.onnx (after onnxruntime loaded it) and export_report.json; see the module docstring.

    `spec`: the raw columns of the user's whole pipeline (`preprocessing: none`), when the caller knows them
    (from the experiment config); without it they are read from the model and the training split."""
    onnx_path = drive.onnx_model_path(champion.experiment)
    report_path = drive.export_report_json(champion.experiment)
    base = {
        "experiment": champion.experiment,
        "model": champion.model_name,
        "family": champion.family,
        "model_version": champion.model_version,
        "run_id": champion.run_id,
        "config_hash": champion.config_hash,
        "source_model": {"path": str(champion.model_path), "sha256": sha256_file(champion.model_path)},
    }
    reason = not_exportable_reason(champion, native)
    if reason is not None:
        _remove(onnx_path, drive.onnx_int8_model_path(champion.experiment))
        report = {**base, "status": NOT_EXPORTABLE, "reason": reason, "served": "native"}
        atomic_write_json(report_path, report)
        return ExportOutcome(NOT_EXPORTABLE, report, None)

    start = time.perf_counter()
    try:
        from mlgraph.deployment.sklearn_graph import is_tabular_pipeline

        whole = champion.task != "forecasting" and not is_tabular_pipeline(native)
        if whole and spec is None:
            spec = whole_model_spec(drive, champion, native)
        # build_onnx(champion, native) as before for everything but the user's whole pipeline.
        model, converter = build_onnx(champion, native, **({"spec": spec} if whole else {}))
        removed = runtime.dedupe_opsets(model)
        payload = model.SerializeToString()
        runtime.session(payload)  # an unsupported operator or an opset the runtime lacks fails here
    except Exception as exc:
        # What is on the drive must be the current champion's or nothing: never an older champion's graph.
        _remove(onnx_path, drive.onnx_int8_model_path(champion.experiment), report_path)
        if champion.family == "torch" and champion.task == "forecasting":
            # The user's network need not trace (data-dependent control flow, unsupported ops): it is
            # served natively, with the exporter's own words as the reason.
            reason = (
                f"torch.onnx.export could not export the user's network {champion.import_path or ''} "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'})"
            )
            report = {**base, "status": NOT_EXPORTABLE, "reason": reason, "served": "native"}
            atomic_write_json(report_path, report)
            return ExportOutcome(NOT_EXPORTABLE, report, None)
        raise ExportError(
            f"{champion.experiment}: ONNX export of {champion.label()} failed: {type(exc).__name__}: {exc}. "
            f"Fix: {_fix(champion)}. Nothing was written; the native model stays served."
        ) from exc
    seconds = time.perf_counter() - start
    runtime.write_model(model, onnx_path)
    versions = {
        p: _version(p)
        for p in ("onnx", "onnxruntime", "skl2onnx", "onnxmltools", "scikit-learn", "lightgbm", "xgboost", "torch")
    }
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
