"""What `mlgraph serve` is told: the experiment, where to listen, and the service's limits."""

from __future__ import annotations

from dataclasses import dataclass

from mlgraph.core.prediction_log import DEFAULT_RETENTION_BYTES, DEFAULT_RETENTION_DAYS
from mlgraph.serving.log_writer import (
    DEFAULT_FLUSH_SECONDS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_PENDING_ROWS,
)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_STRING_LENGTH = 256  # characters in one string feature (a category)


@dataclass(frozen=True)
class ServeSettings:
    experiment: str
    host: str = "127.0.0.1"
    port: int = 8000
    drive_root: str | None = None  # unset: $SHARED_DRIVE, else <project>/.shared
    config_dir: str | None = None  # unset: $MLGRAPH_CONFIG_DIR, else <project>/config
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger bodies: 413
    max_rows: int = DEFAULT_MAX_ROWS  # more rows in one /batch_predict: 413
    max_string_length: int = DEFAULT_MAX_STRING_LENGTH  # longer string features: 422
    log_predictions: bool = True
    log_path: str | None = None  # unset: the experiment's prediction log; serving_capacity logs to a scratch file
    log_max_bytes: int = DEFAULT_MAX_BYTES  # the prediction log rotates past this size
    log_sync_interval: float = 1.0  # seconds between fsyncs at most (what a machine crash may lose)
    log_max_pending_rows: int = DEFAULT_MAX_PENDING_ROWS  # rows queued for the log; past it predictions get 503
    log_max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES  # the same bound in (estimated) bytes
    log_retention_bytes: int | None = DEFAULT_RETENTION_BYTES  # rotated files kept, newest first (None: no limit)
    log_retention_days: float | None = DEFAULT_RETENTION_DAYS  # rotated files older than this are deleted
    log_flush_timeout: float = DEFAULT_FLUSH_SECONDS  # /monitoring/* wait this long for the log to catch up
    poll_interval: float = 1.0  # seconds between checks of the promotion pointer
    graceful_timeout: float = 30.0  # on SIGTERM: how long in-flight requests may still take
    max_batch_rows: int | None = None  # rows per batched model call; None: the model's inline rows, 1: off
    release_hold: bool = True  # refuse a champion whose serving_capacity_meets_slo gate failed
