"""The experiment catalog: which config directory holds the experiments, and how one is loaded.

The rule, written once: an explicit directory, else `$MLGRAPH_CONFIG_DIR`, else the project's
`config/`; experiments are `experiments/<name>.yaml` there, the constraint grid `constraints.yaml`.
`CatalogRules` is mixed into the plain `ConfigCatalog` (the service, the CLI, the trainer) and into
the `ExperimentCatalog` resource (assets, sensors), as `DrivePaths` is into the drive's two forms.
`ConfigHashCache` remembers each config file's hash by its stat, for processes that live between ticks.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from mlgraph.core.drive import CONFIG_DIR_ENV, resolve_config_dir
from mlgraph.core.experiment import LoadedExperiment, experiment_names, load_experiment_file

__all__ = ["CONFIG_DIR_ENV", "CatalogRules", "ConfigCatalog", "ConfigHashCache", "resolve_config_dir"]


class CatalogRules:
    """Paths and loading below a config directory; subclasses provide `root`."""

    @property
    def root(self) -> Path:
        raise NotImplementedError

    @property
    def experiments_dir(self) -> Path:
        return self.root / "experiments"

    @property
    def constraints_file(self) -> Path:
        return self.root / "constraints.yaml"

    def names(self) -> list[str]:
        return experiment_names(self.root)

    def path(self, experiment: str) -> Path:
        return self.experiments_dir / f"{experiment}.yaml"

    def load(self, experiment: str) -> LoadedExperiment:
        return load_experiment_file(self.path(experiment))


class ConfigCatalog(CatalogRules):
    """The catalog as plain Python: `ConfigCatalog().load("salary")`."""

    def __init__(self, config_dir: str | os.PathLike[str] | None = None):
        self._root = resolve_config_dir(config_dir)

    @property
    def root(self) -> Path:
        return self._root


# Config files whose hash a code server remembers between ticks; experiments come and go over months.
MAX_CACHED_CONFIGS = 4096


class ConfigHashCache:
    """config file → (mtime_ns, size, config hash): one entry per file, at most `max_entries` files,
    the least recently used dropped first. The code server lives on between ticks; YAML parsing is slow."""

    def __init__(self, max_entries: int = MAX_CACHED_CONFIGS):
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[int, int, str]] = OrderedDict()
        # Sensors of one code server may be evaluated in parallel threads.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return str(path) in self._entries

    def config_hash(self, path: Path, load: Callable[[], str]) -> str:
        """The cached hash while the file's mtime and size are unchanged, else `load()` (raises OSError if
        the file is gone)."""
        st = path.stat()
        key, version = str(path), (st.st_mtime_ns, st.st_size)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[:2] == version:
                self._entries.move_to_end(key)
                return entry[2]
        value = load()
        with self._lock:
            # Replaces the file's stale entry, if any, so a rewritten config never adds a second one.
            self._entries[key] = (*version, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value
