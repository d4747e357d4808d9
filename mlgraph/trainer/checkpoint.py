"""The external checkpoint format: an MLP's weights plus the metadata that rebuilds and feeds it.

    models/{experiment}/checkpoints/<id>/final/
        model.pt        torch state_dict (loaded with weights_only=True: no pickled code runs)
        metadata.json   format, task, target, architecture, feature columns, preprocessing
                        statistics and the weights' SHA-256; written last, so its presence
                        marks the checkpoint complete

The head follows the task: regression has one output (a value, rescaled by `target_scaling`); binary
classification one output too (the logit of `classes[1]`, cut at `threshold`); a target with k > 2
classes has k outputs (one logit per class, in the order of `classes`; the label is the most probable).

Plain Python (numpy, pandas; torch inside the functions that need it): a trainer on another
machine uses it to save, the checkpoint_evaluation asset to load.
"""

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlgraph.core.atomic import atomic_path, atomic_write_json
from mlgraph.core.hashing import sha256_file

FORMAT = "mlgraph-mlp/1"
WEIGHTS_FILE = "model.pt"
METADATA_FILE = "metadata.json"
NUMERIC_TYPES = {"numeric", "integer", "boolean"}


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded or fed; the message names the file, the field and the fix."""


BINARY_CLASSES = [0, 1]  # a single-output classifier that lists no classes scores class 1 against 0


def plain(value: Any) -> Any:
    """numpy scalars → plain Python: metadata.json is written with default=str, which would turn 2 into "2"."""
    return value.item() if isinstance(value, np.generic) else value


def head_classes(metadata: Mapping[str, Any], where: str) -> list[Any] | None:
    """The classes a checkpoint's output layer scores (None for regression), or a CheckpointError that
    names `where`, the field and the fix: the class count must fit field 'architecture' output_dim."""
    task = metadata.get("task")
    architecture = metadata.get("architecture")
    width = architecture.get("output_dim") if isinstance(architecture, Mapping) else None
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise CheckpointError(
            f"{where}: field 'architecture' needs a positive integer 'output_dim' (found {width!r}). "
            "Fix: record the width of the model's last layer."
        )
    if task == "regression":
        if width != 1:
            raise CheckpointError(
                f"{where}: field 'architecture' output_dim is {width}, but a regression checkpoint has one "
                "output. Fix: save a model whose last layer has one output."
            )
        return None
    if task != "classification":
        return None  # load_checkpoint names the unsupported task
    if width == 2:
        # Two logits could mean softmax or two independent sigmoids; one format, so no guessing.
        raise CheckpointError(
            f"{where}: field 'architecture' output_dim is 2. Fix: a binary classifier has one output (the "
            "logit of classes[1], trained with BCEWithLogitsLoss); a target with k > 2 classes has k outputs."
        )
    classes = metadata.get("classes", BINARY_CLASSES if width == 1 else None)
    if not isinstance(classes, list) or any(isinstance(c, (list, dict)) or c is None for c in classes):
        raise CheckpointError(
            f"{where}: field 'classes' is {classes!r}; a {width}-output classifier needs a list of its "
            f"{max(width, 2)} class labels in output order. Fix: pass classes=[...] in the metadata to save_checkpoint()."
        )
    if len({str(c) for c in classes}) != len(classes):
        raise CheckpointError(f"{where}: field 'classes' {classes!r} repeats a class. Fix: list each class once.")
    expected = 2 if width == 1 else width
    if len(classes) != expected:
        fix = (
            f"save a model with {len(classes)} outputs (one logit per class)"
            if len(classes) > 2
            else "a binary classifier has one output: set output_dim to 1"
        )
        raise CheckpointError(
            f"{where}: field 'classes' lists {len(classes)} classes but field 'architecture' output_dim "
            f"{width} scores {expected}. Fix: {fix}, or list the classes the model was trained on."
        )
    return classes


@dataclass(frozen=True)
class FeatureSpec:
    """Numeric columns standardized with training statistics; categorical ones one-hot encoded."""

    numeric: list[str]
    categorical: dict[str, list[str]]
    mean: dict[str, float]
    std: dict[str, float]

    @classmethod
    def fit(cls, frame: pd.DataFrame, numeric: Iterable[str], categorical: Iterable[str]) -> "FeatureSpec":
        numeric, categorical = list(numeric), list(categorical)
        mean, std = {}, {}
        for col in numeric:
            values = pd.to_numeric(frame[col], errors="coerce").astype("float64")
            mu, sigma = float(values.mean()), float(values.std(ddof=0))
            mean[col] = 0.0 if math.isnan(mu) else mu
            # A constant column carries no signal; dividing by 1 keeps it finite.
            std[col] = sigma if sigma > 0 and not math.isnan(sigma) else 1.0
        levels = {col: sorted(str(v) for v in frame[col].dropna().unique()) for col in categorical}
        return cls(numeric=numeric, categorical=levels, mean=mean, std=std)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def names(self) -> list[str]:
        return [*self.numeric, *(f"{col}={level}" for col, levels in self.categorical.items() for level in levels)]

    def transform(self, frame: pd.DataFrame, where: str = "input") -> np.ndarray:
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise CheckpointError(
                f"{where}: column(s) {missing} that the checkpoint was trained on are missing. "
                "Fix: evaluate on data with the training schema."
            )
        parts = []
        for col in self.numeric:
            values = pd.to_numeric(frame[col], errors="coerce").astype("float64").to_numpy()
            # Missing values become the training mean, i.e. 0 after standardization.
            parts.append(np.nan_to_num((values - self.mean[col]) / self.std[col], nan=0.0)[:, None])
        for col, levels in self.categorical.items():
            values = frame[col].astype("string").to_numpy()
            # Levels unseen in training get an all-zero row rather than a made-up column.
            parts.append(
                np.stack([values == level for level in levels], axis=1).astype("float64")
                if levels
                else np.zeros((len(frame), 0))
            )
        if not parts:
            return np.zeros((len(frame), 0), dtype=np.float32)
        return np.concatenate(parts, axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        # Lists, not mappings, carry the column order: metadata.json is written with sorted keys.
        return {
            "numeric": self.numeric,
            "categorical": [{"column": col, "levels": levels} for col, levels in self.categorical.items()],
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureSpec":
        return cls(
            numeric=list(data["numeric"]),
            categorical={item["column"]: list(item["levels"]) for item in data["categorical"]},
            mean={k: float(v) for k, v in data["mean"].items()},
            std={k: float(v) for k, v in data["std"].items()},
        )


def feature_columns(
    columns: Mapping[str, str], frame: pd.DataFrame, target: str, exclude: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """(numeric, categorical) feature columns: the declared types when given, else inferred from dtypes."""
    skip = {target, *exclude}
    numeric, categorical = [], []
    for col in frame.columns:
        if col in skip:
            continue
        declared = columns.get(col)
        if declared == "datetime" or (declared is None and pd.api.types.is_datetime64_any_dtype(frame[col])):
            continue
        if declared in NUMERIC_TYPES or (declared is None and pd.api.types.is_numeric_dtype(frame[col])):
            numeric.append(col)
        else:
            categorical.append(col)
    return numeric, categorical


def build_model(architecture: Mapping[str, Any]):
    """The torch module an architecture block describes (a ReLU MLP)."""
    import torch

    if architecture.get("type") != "mlp":
        raise CheckpointError(f"architecture type {architecture.get('type')!r} is not supported; expected 'mlp'")
    layers: list = []
    width = int(architecture["input_dim"])
    for hidden in architecture["hidden"]:
        layers += [torch.nn.Linear(width, int(hidden)), torch.nn.ReLU()]
        width = int(hidden)
    layers.append(torch.nn.Linear(width, int(architecture["output_dim"])))
    return torch.nn.Sequential(*layers)


def save_checkpoint(directory: str | Path, model, metadata: Mapping[str, Any]) -> Path:
    """Write weights, then metadata.json (with the weights' hash), both atomically; return the directory.

    Classification: `classes` lists the labels in output order (k > 2 classes: one output each).
    """
    import torch

    directory = Path(directory)
    metadata = dict(metadata)
    if "classes" in metadata and isinstance(metadata["classes"], (list, tuple, np.ndarray)):
        metadata["classes"] = [plain(c) for c in metadata["classes"]]
    if metadata.get("task") in ("regression", "classification") and "architecture" in metadata:
        # Refused before anything is written: load_checkpoint would refuse the same checkpoint later.
        head_classes(metadata, str(directory / METADATA_FILE))
        linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if linear and linear[-1].out_features != metadata["architecture"]["output_dim"]:
            raise CheckpointError(
                f"{directory / METADATA_FILE}: field 'architecture' output_dim is "
                f"{metadata['architecture']['output_dim']} but the model's last layer has "
                f"{linear[-1].out_features} outputs. Fix: record the model's own output width."
            )
    weights = directory / WEIGHTS_FILE
    with atomic_path(weights) as tmp, open(tmp, "wb") as fh:
        # A file object, not a path: torch would name the archive after the random temporary file.
        torch.save(model.state_dict(), fh)
    atomic_write_json(
        directory / METADATA_FILE,
        {**metadata, "format": FORMAT, "weights": WEIGHTS_FILE, "weights_sha256": sha256_file(weights)},
    )
    return directory


@dataclass
class LoadedCheckpoint:
    directory: Path
    metadata: dict[str, Any]
    features: FeatureSpec
    model: Any = field(repr=False)

    @property
    def task(self) -> str:
        return self.metadata["task"]

    @property
    def target(self) -> str:
        return self.metadata["target"]

    @property
    def classes(self) -> list[Any] | None:
        """Classification: the labels in output order (binary: [negative, positive]); regression: None."""
        if self.task != "classification":
            return None
        return list(self.metadata.get("classes", BINARY_CLASSES))

    @property
    def multiclass(self) -> bool:
        return self.task == "classification" and len(self.classes) > 2


_REQUIRED = ("task", "target", "architecture", "features", "weights_sha256")


def load_checkpoint(directory: str | Path) -> LoadedCheckpoint:
    """Rebuild the model from metadata.json and load its verified weights."""
    import torch

    directory = Path(directory)
    meta_path = directory / METADATA_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{meta_path}: missing. Fix: save the checkpoint with save_checkpoint(), "
            "which writes metadata.json after the weights."
        )
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc}). Fix: rewrite it with save_checkpoint().") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{meta_path}: field 'format' is {metadata.get('format')!r}, expected {FORMAT!r}. "
            "Fix: save the checkpoint with mlgraph.trainer.checkpoint.save_checkpoint()."
        )
    missing = [k for k in _REQUIRED if k not in metadata]
    if missing:
        raise CheckpointError(f"{meta_path}: field(s) {missing} missing. Fix: save it with save_checkpoint().")
    if metadata["task"] not in ("regression", "classification"):
        raise CheckpointError(
            f"{meta_path}: field 'task' {metadata['task']!r} is not supported for MLP "
            "checkpoints. Fix: use a regression or classification experiment."
        )
    head_classes(metadata, str(meta_path))
    weights = directory / metadata.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing. Fix: copy the weights file next to metadata.json.")
    actual = sha256_file(weights)
    if actual != metadata["weights_sha256"]:
        raise CheckpointError(
            f"{weights}: SHA-256 {actual[:12]}… does not match field 'weights_sha256' "
            f"{metadata['weights_sha256'][:12]}… of {meta_path}. Fix: the copy is incomplete or "
            "stale; save the checkpoint again."
        )
    features = FeatureSpec.from_dict(metadata["features"])
    model = build_model(metadata["architecture"])
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{weights}: weights do not fit field 'architecture' of {meta_path} ({exc}). "
            "Fix: save metadata and weights from the same model."
        ) from None
    model.eval()
    return LoadedCheckpoint(directory=directory, metadata=metadata, features=features, model=model)


def predict(
    checkpoint: LoadedCheckpoint, frame: pd.DataFrame, where: str = "input"
) -> tuple[np.ndarray, np.ndarray | None]:
    """(y_pred, y_score): regression values, None; binary: class labels and the positive class's
    probability (n,); k > 2 classes: the most probable class's label and the probabilities (n, k), in
    the order of the checkpoint's `classes`."""
    import torch

    x = torch.from_numpy(checkpoint.features.transform(frame, where))
    with torch.no_grad():
        logits = checkpoint.model(x).numpy().astype("float64")
    meta = checkpoint.metadata
    if checkpoint.task == "regression":
        scale = meta.get("target_scaling", {"mean": 0.0, "std": 1.0})
        return logits[:, 0] * float(scale["std"]) + float(scale["mean"]), None
    classes = checkpoint.classes
    if checkpoint.multiclass:
        # Softmax, shifted by each row's largest logit so exp cannot overflow.
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        proba = z / z.sum(axis=1, keepdims=True)
        return pd.Index(classes).to_numpy()[proba.argmax(axis=1)], proba
    out = logits[:, 0]
    score = 1.0 / (1.0 + np.exp(-out))
    threshold = float(meta.get("threshold", 0.5))
    labels = np.where(score >= threshold, classes[1], classes[0])
    return labels.astype("float64"), score
