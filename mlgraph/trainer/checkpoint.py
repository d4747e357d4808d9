"""The external checkpoint format: an MLP's weights plus the metadata that rebuilds and feeds it.

    models/{experiment}/checkpoints/<id>/final/
        model.pt        torch state_dict (loaded with weights_only=True: no pickled code runs)
        metadata.json   format, task, target, architecture, feature columns, preprocessing
                        statistics and the weights' SHA-256; written last, so its presence
                        marks the checkpoint complete

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
    """Write weights, then metadata.json (with the weights' hash), both atomically; return the directory."""
    import torch

    directory = Path(directory)
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
            "checkpoints. Fix: use a regression or binary classification experiment."
        )
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
    """(y_pred, y_score): regression values; or class labels and the positive class's probability."""
    import torch

    x = torch.from_numpy(checkpoint.features.transform(frame, where))
    with torch.no_grad():
        out = checkpoint.model(x).numpy().astype("float64")[:, 0]
    meta = checkpoint.metadata
    if checkpoint.task == "regression":
        scale = meta.get("target_scaling", {"mean": 0.0, "std": 1.0})
        return out * float(scale["std"]) + float(scale["mean"]), None
    classes = meta.get("classes", [0, 1])
    score = 1.0 / (1.0 + np.exp(-out))
    threshold = float(meta.get("threshold", 0.5))
    labels = np.where(score >= threshold, classes[1], classes[0])
    return labels.astype("float64"), score
