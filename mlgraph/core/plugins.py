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
    """The source files of `module` (every .py of a package), sorted; None when Python cannot find it."""
    ensure_on_path()
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent package is missing or broken
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        roots = [Path(p) for p in spec.submodule_search_locations]
        return sorted({f for root in roots for f in root.rglob("*.py") if "__pycache__" not in f.parts})
    if spec.origin and Path(spec.origin).is_file():
        return [Path(spec.origin)]
    return []  # built-in or frozen: no source to hash


def source_digest(import_path: str) -> str:
    """SHA-256 over the module's source files (relative name + content); 'missing:<module>' if not found.

    A missing module is not an error here: the config still loads, and training stops before any fit with
    the message that names the spec (mlgraph.training.spec_check).
    """
    module, _ = split_import_path(import_path)
    files = module_files(module)
    if files is None:
        return f"missing:{module}"
    base = files[0].parent if files else Path()
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
