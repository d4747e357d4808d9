"""The shared-drive resource: every path comes from mlgraph.core.drive.DrivePaths (one home for file names)."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from mlgraph.core.drive import DriveLayout, DrivePaths, resolve_drive_root


class SharedDrive(dg.ConfigurableResource, DrivePaths):
    """The shared-drive layout every asset reads and writes."""

    root: str | None = Field(
        default=None,
        description="Root of the shared drive; unset means $SHARED_DRIVE, else <project>/.shared",
    )

    @property
    def root_path(self) -> Path:
        return resolve_drive_root(self.root)

    @property
    def layout(self) -> DriveLayout:
        """The same layout as plain Python, for domain functions that take one."""
        return DriveLayout(self.root_path)
