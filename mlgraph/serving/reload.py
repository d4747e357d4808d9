"""Hot reload: which model answers now, and the poll that swaps in a new champion.

`ModelHolder.current` is one reference to an immutable `LoadedModel`. A poll (about once a second,
from a background task) reads the promotion pointer and stats the ONNX export report; when either
changed it loads the new champion completely in the calling thread and only then swaps the reference,
so a request in flight keeps the model it started with. A model that cannot be served never replaces
one that can: the failure is logged and kept for /health, and the old model goes on answering.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlgraph.core.drive import DrivePaths
from mlgraph.core.experiment import ExperimentConfig
from mlgraph.serving.model import InputSpec, LoadedModel, load_model
from mlgraph.training.promotion import PromotionStore

LOG = logging.getLogger("mlgraph.serving.reload")


@dataclass(frozen=True)
class LoadFailure:
    error: str
    at: float

    def describe(self) -> dict[str, Any]:
        return {"error": self.error, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at))}


def _stat(path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ModelHolder:
    """The served model and the last failed load; `poll` runs in one thread at a time."""

    def __init__(
        self,
        drive: DrivePaths,
        config: ExperimentConfig,
        spec: InputSpec,
        loader: Callable[[DrivePaths, ExperimentConfig, InputSpec], LoadedModel] = load_model,
    ) -> None:
        self.drive, self.config, self.spec, self._loader = drive, config, spec, loader
        self.pointer = PromotionStore(drive.promotion_dir(config.config_hash)).current_path
        self.current: LoadedModel | None = None
        self.failure: LoadFailure | None = None
        self.reloads = 0
        self._seen: Any = object()

    def _fingerprint(self) -> Any:
        try:
            pointer = self.pointer.read_bytes()
        except FileNotFoundError:
            pointer = None
        return pointer, _stat(self.pointer), _stat(self.drive.export_report_json(self.config.name))

    def poll(self) -> bool:
        """Load and swap in the champion if the pointer or its export changed; True when swapped."""
        seen = self._fingerprint()
        if seen == self._seen:
            return False
        self._seen = seen
        if seen[0] is None:
            if self.current is None:
                self.failure = LoadFailure(
                    f"{self.pointer} is missing: no champion is promoted for "
                    f"{self.config.name!r}. Fix: materialize champion_model.",
                    time.time(),
                )
            return False
        try:
            candidate = self._loader(self.drive, self.config, self.spec)
        except Exception as exc:  # whatever the new model does wrong, the old one keeps serving
            self.failure = LoadFailure(f"{type(exc).__name__}: {exc}", time.time())
            kept = f"; still serving v{self.current.version}" if self.current else ""
            LOG.warning("champion not loaded: %s%s", self.failure.error, kept)
            return False
        previous = self.current
        self.current = candidate  # the one swap: requests read this reference once
        self.failure = None
        self.reloads += 1
        LOG.info(
            "serving %s v%s (%s)%s",
            candidate.champion.model_name,
            candidate.version,
            candidate.runtime,
            f", replacing v{previous.version}" if previous else "",
        )
        return True
