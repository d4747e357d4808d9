"""DuckDB warehouse wiring (dagster-duckdb): one database file under the shared drive's state/."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

from dagster_duckdb import DuckDBResource
from pydantic import Field

from mlgraph.core.drive import DriveLayout


class Warehouse(DuckDBResource):
    """DuckDB over every result table; the default file is $SHARED_DRIVE/state/warehouse.duckdb."""

    database: str = Field(default="", description="DuckDB file; empty means $SHARED_DRIVE/state/warehouse.duckdb")

    @property
    def database_path(self) -> str:
        if self.database:
            return self.database
        path = DriveLayout.at().warehouse_db()
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)

    @contextlib.contextmanager
    def get_connection(self) -> Iterator:
        if self.database == ":memory:" or self.database:
            with super().get_connection() as conn:
                yield conn
            return
        # DuckDBResource connects to `self.database`; resolve the default lazily, at run time.
        resolved = DuckDBResource(database=self.database_path, connection_config=self.connection_config)
        with resolved.get_connection() as conn:
            yield conn

    def ensure_parent(self) -> Path:
        path = Path(self.database_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
