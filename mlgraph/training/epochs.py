"""Per-epoch reporting from the platform's torch training loops, so a sweep can prune a lagging trial.

The loops (forecasting's recurrent fit, the tabular torch estimator) call `report_epoch` after each
epoch; outside a sweep nothing listens. A trial worker installs a listener with `epoch_listener`, and
the listener raises `TrialPruned` to stop the fit: the loop does not need to know about sweeps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

EpochListener = Callable[[int, float], None]
_LISTENER: ContextVar[EpochListener | None] = ContextVar("mlgraph_epoch_listener", default=None)


class TrialPruned(Exception):
    """Raised by a listener to stop a trial whose validation loss lags the others'."""

    def __init__(self, epoch: int, val_loss: float):
        super().__init__(f"pruned at epoch {epoch} (validation loss {val_loss:.6g} above the median of earlier trials)")
        self.epoch = epoch
        self.val_loss = val_loss


def report_epoch(epoch: int, val_loss: float) -> None:
    """Called by a training loop after each epoch (1-based) with its validation loss."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(epoch, val_loss)


@contextlib.contextmanager
def epoch_listener(listener: EpochListener) -> Iterator[None]:
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)
