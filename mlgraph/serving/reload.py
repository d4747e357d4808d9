"""Hot reload: which model answers now, and the poll that swaps in a new champion.

`ModelHolder.current` is one reference to an immutable `LoadedModel`. A poll (about once a second,
from a background task) reads the promotion pointer and stats the ONNX export report and the serving
capacity record (which releases or holds a champion); when one changed it loads the new champion completely in the calling thread and only then swaps the reference,
so a request in flight keeps the model it started with. A model that cannot be served never replaces
one that can: the failure is logged and kept for /health, and the old model goes on answering.

A pointer counts as seen only once its champion loaded. One that failed (a file not synced yet, a read
error on the drive, a broken model) is tried again with exponential backoff, RETRY_FIRST_S doubling up to
RETRY_MAX_S, for as long as it stays the pointer; a new pointer is tried at once. `poll` never raises.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlgraph.core.drive import DrivePaths
from mlgraph.core.experiment import ExperimentConfig
from mlgraph.core.untrusted import Unusable, read_regular_file
from mlgraph.serving.model import InputSpec, LoadedModel, load_model
from mlgraph.training.promotion import POINTER_MAX_BYTES, PromotionStore

LOG = logging.getLogger("mlgraph.serving.reload")
RETRY_FIRST_S = 1.0  # a failed load is tried again after this long, then twice as long each time ...
RETRY_MAX_S = 60.0  # ... up to this
_UNREADABLE = object()  # the fingerprint of a pointer (or export report) that could not be read


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


@dataclass(frozen=True)
class LoadFailure:
    error: str
    at: float
    attempts: int = 1  # failed loads of this pointer in a row
    retry_at: float | None = None  # when it is tried again (epoch seconds); None: when the pointer changes

    def describe(self) -> dict[str, Any]:
        retry = None if self.retry_at is None else _utc(self.retry_at)
        return {"error": self.error, "at": _utc(self.at), "attempts": self.attempts, "next_retry": retry}


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
        *,
        retry_first: float = RETRY_FIRST_S,
        retry_max: float = RETRY_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.drive, self.config, self.spec, self._loader = drive, config, spec, loader
        self.retry_first, self.retry_max, self._clock = retry_first, retry_max, clock
        self.pointer = PromotionStore(drive.promotion_dir(config.config_hash)).current_path
        self.current: LoadedModel | None = None
        self.failure: LoadFailure | None = None
        self.reloads = 0
        self._seen: Any = object()  # the fingerprint last loaded (or found missing)
        self._failing: Any = object()  # the fingerprint whose loads are failing, and when to try it again
        self._retry_at = 0.0
        self._attempts = 0

    def _fingerprint(self) -> Any:
        try:
            pointer = read_regular_file(self.pointer, POINTER_MAX_BYTES)
        except Unusable:
            if not self.pointer.exists() and not self.pointer.is_symlink():
                pointer = None
            else:
                raise
        name = self.config.name  # the capacity record releases (or holds) a champion: a change is a reason to load
        return (
            pointer,
            _stat(self.pointer),
            _stat(self.drive.export_report_json(name)),
            _stat(self.drive.capacity_json(name)),
        )

    def _fail(self, seen: Any, error: str) -> None:
        """Record a failed load of `seen` and when to try it again (sooner for a pointer not failed before)."""
        self._attempts = self._attempts + 1 if seen == self._failing else 1
        delay = min(self.retry_max, self.retry_first * 2 ** (self._attempts - 1))
        self._failing, self._retry_at = seen, self._clock() + delay
        now = time.time()
        self.failure = LoadFailure(error, now, self._attempts, now + delay)
        kept = f"still serving v{self.current.version}" if self.current else "no model is served"
        LOG.warning("champion not loaded (attempt %d, next in %.0f s; %s): %s", self._attempts, delay, kept, error)

    def poll(self) -> bool:
        """Load and swap in the champion if the pointer or its export changed, or retry a failed load when its
        backoff is over; True when swapped. Never raises: a failure is logged and kept in `failure`."""
        if self._failing is _UNREADABLE and self._clock() < self._retry_at:
            return False
        try:
            seen = self._fingerprint()
        except (OSError, Unusable) as exc:  # a drive that cannot be read now may be readable at the next try
            self._fail(_UNREADABLE, f"cannot read {self.pointer} or its export report: {exc}")
            return False
        if seen == self._seen or (seen == self._failing and self._clock() < self._retry_at):
            return False
        if seen[0] is None:
            self._seen, self._failing, self._attempts = seen, object(), 0
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
            self._fail(seen, f"{type(exc).__name__}: {exc}")
            return False
        self._seen, self._failing, self._attempts = seen, object(), 0  # seen only once it loaded
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
