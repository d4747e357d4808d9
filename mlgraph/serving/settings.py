"""What `mlgraph serve` is told: the experiment, where to listen, and the service's limits."""

from __future__ import annotations

from dataclasses import dataclass

from mlgraph.serving.log_writer import DEFAULT_MAX_BYTES

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_ROWS = 10_000


@dataclass(frozen=True)
class ServeSettings:
    experiment: str
    host: str = "127.0.0.1"
    port: int = 8000
    drive_root: str | None = None  # unset: $SHARED_DRIVE, else <project>/.shared
    config_dir: str | None = None  # unset: $MLGRAPH_CONFIG_DIR, else <project>/config
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger bodies: 413
    max_rows: int = DEFAULT_MAX_ROWS  # more rows in one /batch_predict: 413
    log_predictions: bool = True
    log_max_bytes: int = DEFAULT_MAX_BYTES  # the prediction log rotates past this size
    log_sync_interval: float = 1.0  # seconds between fsyncs at most (what a machine crash may lose)
    poll_interval: float = 1.0  # seconds between checks of the promotion pointer
    graceful_timeout: float = 30.0  # on SIGTERM: how long in-flight requests may still take
