"""The user's own model code: where it lives, how it gets on the import path, and its content digest.

An experiment spec names user code as "module:Name" (`family: estimator` or `family: torch`). The module is
looked up in the project's `plugins/` folder — `$MLGRAPH_PLUGINS_DIR`, else `plugins/` beside the config
directory — and then in the installed packages. Every process that builds, trains, loads or serves such a
model calls `ensure_on_path()` first (run workers, loky training workers, Slurm jobs, the service), so no
launcher has to forward anything but the environment it already forwards.

The digest (SHA-256 over the module's source files) enters the experiment's config hash: editing the
user's code makes its models stale, an unchanged file keeps every hash. Finding the files never runs the
module (a dotted path does import its parent packages, as Python's own lookup does).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import sys
from pathlib import Path

from mlgraph.core.drive import resolve_config_dir
from mlgraph.core.hashing import sha256_file, sha256_text

PLUGINS_DIR_ENV = "MLGRAPH_PLUGINS_DIR"


def plugins_dir() -> Path:
    """$MLGRAPH_PLUGINS_DIR, else `plugins/` beside the config directory (read at call time)."""
    explicit = os.environ.get(PLUGINS_DIR_ENV)
    return Path(explicit).resolve() if explicit else resolve_config_dir().parent / "plugins"


def ensure_on_path() -> Path:
    """Put the plugins folder on `sys.path` (once), after the installed packages: a plugin never shadows them."""
    directory = str(plugins_dir())
    if directory not in sys.path:
        sys.path.append(directory)
        importlib.invalidate_caches()
    return Path(directory)


def split_import_path(import_path: str) -> tuple[str, str]:
    module, _, attribute = import_path.partition(":")
    return module, attribute


def module_files(module: str) -> list[Path] | None:
    """The source files of `module` (every .py of a package), plus the plugins-folder modules they import,
    sorted; None when Python cannot find it."""
    folder = ensure_on_path()
    own = _own_files(module)
    if own is None:
        return None
    # A plugin's helpers in the same folder are its code too: editing one must make its models stale.
    found, queue = set(own), list(own)
    while queue:
        for name in _imported_top_level(queue.pop()):
            for path in _local_module(folder, name):
                if path not in found:
                    found.add(path)
                    queue.append(path)
    return sorted(found)


def _own_files(module: str) -> list[Path] | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent package is missing or broken
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return _package_files([Path(p) for p in spec.submodule_search_locations])
    if spec.origin and Path(spec.origin).is_file():
        return [Path(spec.origin)]
    return []  # built-in or frozen: no source to hash


def _package_files(roots: list[Path]) -> list[Path]:
    return sorted({f for root in roots for f in root.rglob("*.py") if "__pycache__" not in f.parts})


def _imported_top_level(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a source file (read, never run)."""
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (OSError, SyntaxError, ValueError):  # importing it will fail with the spec's clear message
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _local_module(folder: Path, name: str) -> list[Path]:
    """The files of top-level module `name` if it lives in the plugins folder (not an installed package)."""
    if (folder / name / "__init__.py").is_file() or (folder / name).is_dir():
        return _package_files([folder / name])
    single = folder / f"{name}.py"
    return [single] if single.is_file() else []


def source_digest(import_path: str) -> str:
    """SHA-256 over the module's source files (relative name + content); 'missing:<module>' if not found.

    A missing module is not an error here: the config still loads, and training stops before any fit with
    the message that names the spec (mlgraph.training.spec_check).
    """
    module, _ = split_import_path(import_path)
    files = module_files(module)
    if files is None:
        return f"missing:{module}"
    base = plugins_dir()
    parts = [f"{_relative(f, base)}:{_file_digest(str(f), *_stamp(f))}" for f in files]
    return sha256_text("\n".join(parts))


def _relative(path: Path, base: Path) -> str:
    # Relative names: the same plugin on another machine's checkout hashes the same.
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.name


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    # Keyed by the file's stamp: the config hash is read many times per run and per sensor tick.
    return sha256_file(Path(path))
