"""What an experiment's inputs are, by content: its validated config and the bytes of the file it names.

The `experiment_source` observation carries `SourceVersion.data_version`. The same YAML and the same
bytes always give the same version, so re-observing an unchanged experiment changes nothing downstream;
one changed byte in the data file, or any change to the config that is not prose, gives a new one.
Hashing a multi-GB file every sensor tick would be wasteful, so `SourceVersion.fresh` says whether a
version computed earlier still describes the file: same size, modification and change times, inode.
As git does with its index, a file that changed just before it was hashed keeps no stamp (a filesystem
with coarse timestamps could hide a second write in the same tick), so the next look hashes it again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mlgraph.core.experiment import ConfigError, LoadedExperiment
from mlgraph.core.hashing import canonical_json, sha256_file, sha256_text

# Files changed less than this before they were hashed are hashed again on the next look.
RACY_SECONDS = 2.0
Stamp = tuple[int, int, int, int]


@dataclass(frozen=True)
class SourceVersion:
    """One experiment's inputs as last seen: enough to tell, cheaply, whether they changed."""

    experiment: str
    config_hash: str
    source: str  # the data file, or "generator:<name>" (its rows and seed are part of the config)
    source_sha256: str | None  # None for generators
    stamp: Stamp | None  # (size, mtime_ns, ctime_ns, inode) of the file when it was hashed

    @property
    def data_version(self) -> str:
        """The version downstream staleness keys on: config and data content, not file times."""
        return sha256_text(canonical_json({"config_hash": self.config_hash, "source_sha256": self.source_sha256}))

    def to_dict(self) -> dict:
        return {**asdict(self), "stamp": list(self.stamp) if self.stamp else None}

    @classmethod
    def from_dict(cls, data: dict) -> SourceVersion:
        stamp = data.get("stamp")
        return cls(**{**data, "stamp": tuple(stamp) if stamp else None})

    def fresh(self, experiment: LoadedExperiment) -> bool:
        """True when this version still describes the experiment (same config, same file stamp)."""
        if experiment.config.config_hash != self.config_hash:
            return False
        path = experiment.source_path
        if path is None:
            return self.source_sha256 is None
        return str(path) == self.source and _stamp(path, experiment) == self.stamp


def _stamp(path: Path, experiment: LoadedExperiment) -> Stamp:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(
            f"{experiment.path}: field 'dataset.path': {path} does not exist. "
            "Fix: create the file or point dataset.path at an existing CSV or parquet file."
        ) from None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def source_version(experiment: LoadedExperiment, previous: SourceVersion | None = None) -> SourceVersion:
    """The experiment's current `SourceVersion`; `previous` is reused when it is still fresh (no re-hash)."""
    if previous is not None and previous.fresh(experiment):
        return previous
    config = experiment.config
    path = experiment.source_path
    if path is None:
        return SourceVersion(config.name, config.config_hash, f"generator:{config.dataset.generator}", None, None)
    stamp = _stamp(path, experiment)
    digest = sha256_file(path)
    changed_ns = max(stamp[1], stamp[2])
    if _stamp(path, experiment) != stamp or time.time_ns() - changed_ns < RACY_SECONDS * 1e9:
        stamp = None  # written during or just before hashing: look again next time
    return SourceVersion(config.name, config.config_hash, str(path), digest, stamp)
