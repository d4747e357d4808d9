"""The served model: the champion loaded once, its release gates evaluated, its rows predicted.

`input_spec` fixes what requests look like from the experiment config and the train split's columns
(so the schema exists before any champion does). `load_model` reads the promotion pointer
(`read_champion`), loads the native model, and serves ONNX FP32 when its release gates pass
(`gates.fp32_parity` + `gates.schema`, the same checks that block the deployment assets), the native
model when there is no faithful export, and refuses a model whose gates fail, whose export has not been
checked for it yet, or whose inputs differ from the service's. A `LoadedModel` is immutable: hot reload
swaps the whole object, so one request is answered by one model from start to end.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlgraph.core.drive import DrivePaths
from mlgraph.core.experiment import ExperimentConfig
from mlgraph.deployment import gates, runtime
from mlgraph.deployment.champion import Champion, Rows, model_features, read_champion
from mlgraph.training import families as fam
from mlgraph.training.forecasting import TORCH_FORECASTERS
from mlgraph.training.labels import target_classes

FLOAT, INT, BOOL, STR = "float", "int", "bool", "str"
# The narrowest dtypes a served runtime reads a request's numbers as; the request schema bounds values to
# them. ONNX graphs cast numeric features to float32 (after standardising, or at once for a user's whole
# pipeline) and forecasters read float32 windows; integer features are int64 in the training frame and in
# what reads the prediction log.
FEATURE_FLOAT, FEATURE_INT = np.float32, np.int64
INLINE_BUDGET_S = 0.0005  # the longest one prediction may hold the event loop
_DECLARED = {"numeric": FLOAT, "integer": INT, "boolean": BOOL, "categorical": STR}


class ModelRefused(RuntimeError):
    """The champion cannot be served (gates failed, not yet gated, inputs differ, unloadable)."""


class NonFiniteOutput(ValueError):
    """The model answered NaN or ±Infinity for some rows: no JSON answer can carry it."""

    def __init__(self, version: str, rows: Sequence[int]) -> None:
        shown = ", ".join(map(str, rows[:10])) + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
        super().__init__(
            f"model v{version} gave a non-finite output (NaN or Infinity) for row(s) {shown}; JSON cannot carry "
            "it, so nothing was answered or logged"
        )
        self.rows = list(rows)


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # FLOAT / INT / BOOL / STR: the JSON type a request gives
    categorical: bool


@dataclass(frozen=True)
class InputSpec:
    """What one request row holds: the tabular features, or a forecaster's window of past values."""

    task: str
    target: str
    features: tuple[Feature, ...] = ()
    window: int | None = None
    horizon: int | None = None

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]


def _kind(declared: str | None, dtype: Any) -> str:
    if declared in _DECLARED:
        return _DECLARED[declared]
    if pd.api.types.is_bool_dtype(dtype):
        return BOOL
    if pd.api.types.is_integer_dtype(dtype):
        return INT
    return FLOAT if pd.api.types.is_numeric_dtype(dtype) else STR


def input_spec(drive: DrivePaths, config: ExperimentConfig) -> InputSpec:
    """The request rows of `config`: features as training derives them from the train split's columns."""
    if config.task == "forecasting":
        return InputSpec(config.task, config.target, window=config.forecast.window, horizon=config.forecast.horizon)
    import pyarrow.parquet as pq

    path = drive.dataset_path(config.name, "train")
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the service takes its request schema from the train split. "
            f"Fix: materialize train_test_split for {config.name!r} first."
        )
    empty = pq.read_schema(path).empty_table().to_pandas()
    spec = fam.feature_spec(empty, config)
    features = [Feature(c, _kind(config.columns.get(c), empty[c].dtype), False) for c in spec.numeric]
    features += [Feature(c, STR, True) for c in spec.categorical]
    return InputSpec(config.task, config.target, tuple(features))


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One champion, ready to predict; never mutated after loading."""

    champion: Champion
    runtime: str  # runtime.NATIVE or runtime.ONNX_FP32
    note: str  # why this runtime (e.g. why there is no ONNX variant)
    predictor: runtime.Predictor
    spec: InputSpec
    classes: tuple[Any, ...] | None  # classification: labels in index order (binary: negative, positive)
    model_spec: fam.FeatureSpec | None  # native tabular: the columns the Pipeline reads
    onnx_inputs: tuple[tuple[str, bool], ...]  # ONNX tabular: (input name, is a string input)
    loaded_at: float
    inline_rows: int = 0  # requests of at most this many rows are predicted on the event loop (measured)

    @property
    def version(self) -> str:
        return self.champion.model_version

    def describe(self) -> dict[str, Any]:
        c = self.champion
        return {
            "model_version": c.model_version,
            "runtime": self.runtime,
            "model": c.model_name,
            "family": c.family,
            "run_id": c.run_id,
            "config_hash": c.config_hash,
            "threshold": c.threshold,
            "note": self.note,
            "inline_rows": self.inline_rows,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
        }

    def prepare(self, rows: Sequence[dict[str, Any]]) -> Any:
        if self.spec.window is not None:
            windows = np.asarray([r["window"] for r in rows], dtype=FEATURE_FLOAT)
            return self.predictor.prepare(Rows(windows=windows))
        if self.onnx_inputs:  # built directly: a DataFrame per request costs more than the model
            return {
                name: (
                    np.array([["" if r[name] is None else str(r[name])] for r in rows], dtype=object)
                    if text
                    else np.array([[np.nan if r[name] is None else r[name]] for r in rows], dtype=np.float64)
                )
                for name, text in self.onnx_inputs
            }
        frame = pd.DataFrame.from_records(list(rows), columns=self.spec.names)
        for feature in self.spec.features:
            if not feature.categorical:
                frame[feature.name] = frame[feature.name].astype(np.float64)
        return fam.prepare_frame(frame, self.model_spec)

    def predict(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """One output per row: `prediction`, plus `probability` (binary) or `probabilities` (multiclass).

        NonFiniteOutput when a row's output is NaN or infinite (a request's values are bounded by the schema;
        the model's arithmetic, e.g. a float32 graph, may still overflow)."""
        values = self.predictor.predict(self.prepare(rows))
        finite = np.isfinite(values)
        if not finite.all():
            bad = ~finite if finite.ndim == 1 else ~finite.all(axis=1)
            raise NonFiniteOutput(self.version, np.flatnonzero(bad).tolist())
        if self.spec.task != "classification":
            return [{"prediction": float(v)} for v in values]
        classes = self.classes
        if values.ndim == 2:  # multiclass: the label is the argmax
            return [
                {
                    "prediction": classes[int(np.argmax(p))],
                    "probabilities": {str(c): float(q) for c, q in zip(classes, p, strict=True)},
                }
                for p in values
            ]
        threshold = self.champion.threshold
        return [{"prediction": classes[1] if p >= threshold else classes[0], "probability": float(p)} for p in values]


def _check_inputs(champion: Champion, native: Any, spec: InputSpec) -> fam.FeatureSpec | None:
    if spec.window is not None:
        if champion.family not in TORCH_FORECASTERS:
            raise ModelRefused(
                f"champion {champion.label()}: the service serves torch forecasters "
                f"({', '.join(TORCH_FORECASTERS)}), not {champion.family!r}"
            )
        window = int(native.metadata["window"])
        if window != spec.window:
            raise ModelRefused(
                f"champion {champion.label()} reads a window of {window} steps but the service's "
                f"schema has {spec.window}. Fix: restart the service for the new config."
            )
        return None
    # The user's whole pipeline reads the experiment's features: the service's schema, by construction.
    whole = fam.FeatureSpec(
        tuple(f.name for f in spec.features if not f.categorical), tuple(f.name for f in spec.features if f.categorical)
    )
    used = model_features(native, whole)
    if set(used.columns) != set(spec.names):
        raise ModelRefused(
            f"champion {champion.label()} reads features {used.columns}, the service's schema has "
            f"{spec.names}. Fix: restart the service so its schema follows the new features."
        )
    return used


def _gated_onnx(drive: DrivePaths, config: ExperimentConfig, champion: Champion, native: Any) -> tuple[Any, str]:
    """The ONNX FP32 file when its release gates pass, or (None, why the native model is served).

    The champion itself passed promotion; the gates judge only its ONNX copy. So a champion whose export
    is not there yet (just promoted, retrained or rolled back) or whose export failed a gate is served
    natively at once, and the watcher switches to ONNX when a passing export report appears. The gates judge
    `champion` (the one being loaded), never a re-read pointer: a promotion or an export landing mid-load
    must not mix one champion's model with another's reports.
    """
    try:
        path = gates.onnx_file(drive, champion, runtime.ONNX_FP32)
        if isinstance(path, str):
            return None, f"{path}; the native model is served"
        parity = gates.fp32_parity(drive, config, champion, native)
        schema = gates.schema(drive, config, champion)
    except (FileNotFoundError, ValueError) as exc:
        return None, f"release gates not evaluated for {champion.label()} yet ({exc}); the native model is served"
    if parity.applicable and not parity.result.passed:
        return None, (
            f"gate onnx_model_parity failed for {champion.label()} ("
            + "; ".join(parity.result.failures)
            + "); the native model is served"
        )
    if schema.differences:
        return None, (
            f"gate onnx_model_schema failed for {champion.label()} ("
            + "; ".join(schema.differences)
            + "); the native model is served"
        )
    return path, "release gates passed"


def _classes(drive: DrivePaths, config: ExperimentConfig, champion: Champion) -> tuple[Any, ...] | None:
    if config.task != "classification":
        return None
    if champion.classes:
        return tuple(champion.classes)
    train = pd.read_parquet(drive.dataset_path(config.name, "train"), columns=[config.target])
    return target_classes(train[config.target], "train.parquet")


def load_model(drive: DrivePaths, config: ExperimentConfig, spec: InputSpec) -> LoadedModel:
    """The current champion, fully loaded and tried on one row, or ModelRefused saying why not."""
    champion = read_champion(drive, config)
    try:
        native = champion.load()
    except Exception as exc:
        raise ModelRefused(f"champion {champion.label()} at {champion.model_path} cannot be loaded: {exc}") from exc
    model_spec = _check_inputs(champion, native, spec)
    onnx_path, note = _gated_onnx(drive, config, champion, native)
    if onnx_path is None:
        predictor, onnx_inputs = runtime.native_predictor(champion, native), ()
    else:
        predictor = runtime.onnx_predictor(runtime.ONNX_FP32, config.task, onnx_path)
        onnx_inputs = tuple((i["name"], i["type"] == "tensor(string)") for i in predictor.schema)
        if spec.window is not None:
            onnx_inputs = ()
    model = LoadedModel(
        champion,
        predictor.variant,
        note,
        predictor,
        spec,
        _classes(drive, config, champion),
        model_spec,
        onnx_inputs,
        time.time(),
    )
    probe = {"window": [0.0] * spec.window} if spec.window is not None else dict.fromkeys(spec.names)
    try:
        model.predict([probe])
    except Exception as exc:
        raise ModelRefused(f"champion {champion.label()} fails on a probe row: {exc}") from exc
    if read_champion(drive, config).model_version != champion.model_version:
        raise ModelRefused(f"the champion changed while {champion.label()} was loading; the next poll loads it")
    return dataclasses.replace(model, inline_rows=inline_rows(model, probe))


def inline_rows(model: LoadedModel, probe: dict[str, Any]) -> int:
    """The most rows (of 1, 16, 128, 1024) the model predicts within INLINE_BUDGET_S, best of three tries.

    Below that a thread hand-off costs more than it saves (ONNX Runtime answers one row in tens of
    microseconds); above it, or for a slow native model, prediction runs in the thread pool so the event
    loop keeps accepting requests.
    """
    fits = 0
    for n in (1, 16, 128, 1024):
        rows = [probe] * n
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            model.predict(rows)
            best = min(best, time.perf_counter() - start)
        if best > INLINE_BUDGET_S:
            break
        fits = n
    return fits
