"""What one dashboard server is configured with: the drive, the links it renders, its refresh and poll intervals."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Credentials come from the environment only: never a flag (shell history, `ps`) and never a file.
USERNAME_ENV = "MLGRAPH_DASHBOARD_USERNAME"
PASSWORD_ENV = "MLGRAPH_DASHBOARD_PASSWORD"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050


@dataclass(frozen=True)
class DashboardSettings:
    """`refresh_seconds` is how often an open page refetches its tables; `slurm_poll_seconds` how often the one
    background poller asks Slurm (never below `slurm_poller.MIN_POLL_SECONDS`, enforced there)."""

    drive_root: Path
    dagster_url: str = "http://127.0.0.1:3000"
    mlflow_url: str = "http://127.0.0.1:5000"
    refresh_seconds: float = 30.0
    slurm_poll_seconds: float = 30.0
    # Directory holding squeue/scontrol/sacct; None: found on PATH.
    slurm_bin_dir: str | None = None
    slurm_timeout_seconds: float = 10.0
    # The most recent runs read from the instance per refresh (older runs are in the Dagster UI).
    run_limit: int = 5000
    # How long one instance read is shared by every viewer (bounded by the refresh interval).
    cache_seconds: float = 5.0
    credentials: tuple[str, str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.refresh_seconds <= 0:
            raise ValueError(f"refresh_seconds must be positive, got {self.refresh_seconds}")
        if self.run_limit < 1:
            raise ValueError(f"run_limit must be at least 1, got {self.run_limit}")
        object.__setattr__(self, "dagster_url", self.dagster_url.rstrip("/"))
        object.__setattr__(self, "mlflow_url", self.mlflow_url.rstrip("/"))


def credentials_from_env(environ: dict[str, str] | None = None) -> tuple[str, str] | None:
    """(username, password) when both variables are set; one without the other is a configuration error."""
    env = os.environ if environ is None else environ
    username, password = env.get(USERNAME_ENV, ""), env.get(PASSWORD_ENV, "")
    if bool(username) != bool(password):
        missing = PASSWORD_ENV if username else USERNAME_ENV
        raise ValueError(
            f"{missing} is not set: set both {USERNAME_ENV} and {PASSWORD_ENV} for basic auth, "
            "or neither for an open dashboard on 127.0.0.1"
        )
    return (username, password) if username else None
