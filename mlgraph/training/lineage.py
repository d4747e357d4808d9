"""Lineage of the promoted model: run ids and the SHA-256 of every file it came from.

`models/{experiment}/lineage.json` (design document 001) records the MLflow run id and the hashes of
the dataset (train and test splits), the experiment config, the model artifact and the threshold
file (classification). `verify_lineage` recomputes them; `mlgraph verify .../lineage.json` calls it.
Each file is recorded by absolute path and, when it lies on the shared drive, by its path relative
to the drive root, so a drive mounted elsewhere still verifies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlgraph.core.atomic import atomic_write_json
from mlgraph.core.hashing import sha256_file

LINEAGE_VERSION = 1


def _drive_root(lineage_path: Path) -> Path:
    """The drive holding `models/{experiment}/.../lineage.json`: the parent of its `models` folder."""
    resolved = lineage_path.resolve()
    for parent in resolved.parents:
        if parent.name == "models":
            return parent.parent
    return resolved.parent


def file_entry(path: Path, drive_root: Path) -> dict[str, Any]:
    path = Path(path).resolve()
    entry: dict[str, Any] = {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}
    if path.is_relative_to(drive_root):
        entry["drive_relative"] = path.relative_to(drive_root).as_posix()
    return entry


def write_lineage(path: Path, ids: Mapping[str, Any], files: Mapping[str, Path | None]) -> dict[str, Any]:
    """Write lineage.json: `ids` (run ids, config hash, ...) plus a hashed entry per named file."""
    path = Path(path)
    root = _drive_root(path)
    record = {
        "lineage_version": LINEAGE_VERSION,
        **ids,
        "files": {name: file_entry(p, root) for name, p in files.items() if p is not None},
    }
    atomic_write_json(path, record)
    return record


def extend_lineage(path: Path, run_id: str, files: Mapping[str, Path | None]) -> dict[str, Any]:
    """Add (or, for None, drop) file entries of artifacts derived from the promoted model, such as its ONNX
    export, to an existing lineage.json; refuses a lineage that belongs to another run."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: missing; materialize champion_model first") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); rematerialize champion_model") from None
    if record.get("run_id") != run_id:
        raise ValueError(
            f"{path}: records run {record.get('run_id')!r}, not the champion's run {run_id!r}; "
            "rematerialize champion_model, then this asset"
        )
    root = _drive_root(path)
    entries = dict(record.get("files") or {})
    for name, file in files.items():
        if file is None:
            entries.pop(name, None)
        else:
            entries[name] = file_entry(file, root)
    record["files"] = entries
    atomic_write_json(path, record)
    return record


def _resolve(entry: Mapping[str, Any], root: Path) -> Path:
    recorded = Path(entry["path"])
    if recorded.exists() or "drive_relative" not in entry:
        return recorded
    return root / entry["drive_relative"]


def verify_lineage(path: str | os.PathLike[str]) -> list[str]:
    """Differences between lineage.json and the files it names; an empty list means everything matches."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{path}: no 'files' section; it was not written by mlgraph's champion_model")
    for required in ("run_id", "config_hash"):
        if not record.get(required):
            raise ValueError(f"{path}: field {required!r} is missing or empty")
    root = _drive_root(path)
    differences = []
    for name, entry in sorted(files.items()):
        target = _resolve(entry, root)
        if not target.exists():
            differences.append(f"{name}: {target} is missing")
            continue
        actual = sha256_file(target)
        if actual != entry.get("sha256"):
            differences.append(
                f"{name}: {target} SHA-256 differs: recorded {str(entry.get('sha256'))[:16]}…, now {actual[:16]}…"
            )
    return differences
