"""The reproducibility manifest: what a run used and produced, by SHA-256, and its verifier.

`artifacts/{experiment}/metadata/run_manifest.json` names files relative to the shared-drive
root (so a copied drive still verifies) and the experiment YAML by absolute path.
`verify_manifest` recomputes every hash; `mlgraph verify` prints the differences and exits 1.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlgraph.core.drive import PROJECT_ROOT, DriveLayout
from mlgraph.core.hashing import sha256_file

MANIFEST_VERSION = 1
PACKAGES = (
    "mlgraph",
    "dagster",
    "pyarrow",
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
    "duckdb",
    "matplotlib",
    "pydantic",
    "threadpoolctl",
)


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """Commit and whether the work tree had local changes; None where git or the repository is absent."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def drive_root(manifest_path: Path, experiment: str) -> Path:
    """The shared drive whose run manifest of `experiment` is `manifest_path`."""
    resolved = manifest_path.resolve()
    for root in resolved.parents:
        if DriveLayout(root).run_manifest_json(experiment) == resolved:
            return root
    raise ValueError(
        f"not where a run manifest of experiment {experiment!r} lives on a shared drive (expected "
        f"{DriveLayout(Path('<drive>')).run_manifest_json(experiment)}); verify it in place, where the paths it "
        "records are relative to"
    )


def _drive_relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def build_manifest(
    root: Path,
    experiment: str,
    config: Any,
    config_path: Path,
    files: Iterable[Path],
    run_id: str | None,
    fingerprint: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest for `experiment` (config: an ExperimentConfig); `files` must lie under `root`."""
    root = root.resolve()
    layout = DriveLayout(root)
    hashes = {}
    for path in sorted({Path(p).resolve() for p in files}):
        hashes[_drive_relative(root, path)] = sha256_file(path)

    def dataset_sha(split: str) -> str | None:
        return hashes.get(_drive_relative(root, layout.dataset_path(experiment, split)))

    return {
        "manifest_version": MANIFEST_VERSION,
        "experiment": experiment,
        "config_hash": config.config_hash,
        "config_path": str(config_path.resolve()),
        "config_sha256": sha256_file(config_path),
        "dataset": {
            "sha256": dataset_sha("raw"),
            "source_sha256": fingerprint.get("source_sha256"),
            "fingerprint": fingerprint.get("fingerprint"),
            "train_sha256": dataset_sha("train"),
            "test_sha256": dataset_sha("test"),
            "rows": fingerprint.get("rows"),
        },
        "files": hashes,
        "seeds": {
            "experiment": config.seed,
            "dataset": config.dataset.seed,
            "split": config.split.seed,
            "sampling": config.sampling.seed,
        },
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "git": git_state(),
        "dagster_run_id": run_id,
    }


def verify_manifest(path: str | Path) -> list[str]:
    """Recompute every hash the manifest records; one human-readable line per difference (none = OK)."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(
            "not a run manifest (no 'files' mapping); expected artifacts/<experiment>/metadata/run_manifest.json"
        )
    experiment = str(manifest.get("experiment"))
    root = drive_root(path, experiment)
    differences = []
    for relative, recorded in sorted(manifest["files"].items()):
        target = root / relative
        if not target.exists():
            differences.append(f"{relative}: missing (recorded SHA-256 {recorded[:12]}…)")
            continue
        actual = sha256_file(target)
        if actual != recorded:
            differences.append(f"{relative}: SHA-256 changed: recorded {recorded[:12]}…, now {actual[:12]}…")
    dataset = manifest.get("dataset", {})
    raw = _drive_relative(root, DriveLayout(root).dataset_path(experiment, "raw"))
    if dataset.get("sha256") and manifest["files"].get(raw) != dataset["sha256"]:
        differences.append(f"dataset.sha256 {dataset['sha256'][:12]}… does not match the recorded {raw}")
    differences.extend(_verify_config(manifest))
    return differences


def _verify_config(manifest: Mapping[str, Any]) -> list[str]:
    config_path = Path(manifest.get("config_path") or "")
    if not config_path.is_file():
        return [f"config {config_path}: missing (recorded config hash {str(manifest.get('config_hash'))[:12]}…)"]
    differences = []
    actual_sha = sha256_file(config_path)
    if manifest.get("config_sha256") and actual_sha != manifest["config_sha256"]:
        differences.append(
            f"config {config_path}: file SHA-256 changed: recorded {manifest['config_sha256'][:12]}…, now {actual_sha[:12]}…"
        )
    from mlgraph.core.experiment import ConfigError, load_experiment_file

    try:
        config_hash = load_experiment_file(config_path).config.config_hash
    except ConfigError as exc:
        return [*differences, f"config {config_path}: no longer valid: {exc}"]
    if config_hash != manifest.get("config_hash"):
        differences.append(
            f"config {config_path}: config hash changed: recorded {str(manifest.get('config_hash'))[:12]}…, "
            f"now {config_hash[:12]}…"
        )
    return differences
