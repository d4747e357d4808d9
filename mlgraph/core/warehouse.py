"""Writing result rows to a DuckDB warehouse table: one home for the "replace this slice" transaction.

Plain SQL on a DuckDB connection (the Warehouse resource's, or any other): no import of duckdb here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def replace_rows(
    connection: Any,
    table: str,
    columns: Mapping[str, str],
    where: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
) -> int:
    """Replace the rows of `table` matching `where` (column = value) by `rows`, in one transaction.

    `columns` maps each column to its DuckDB type; the table is created on first use with a
    `recorded_at` timestamp. Rerunning with the same rows leaves the same table (idempotent).
    """
    names = list(columns)
    ddl = ", ".join(f'"{c}" {t}' for c, t in columns.items())
    connection.execute(f"CREATE TABLE IF NOT EXISTS {table} ({ddl}, recorded_at TIMESTAMP)")
    connection.execute("BEGIN TRANSACTION")
    try:
        condition = " AND ".join(f'"{c}" = ?' for c in where)
        connection.execute(f"DELETE FROM {table} WHERE {condition}", list(where.values()))
        if rows:
            quoted = ", ".join(f'"{c}"' for c in names)
            placeholders = ", ".join("?" for _ in names)
            connection.executemany(
                f"INSERT INTO {table} ({quoted}, recorded_at) VALUES ({placeholders}, current_timestamp)",
                [[row.get(c) for c in names] for row in rows],
            )
        connection.execute("COMMIT")
    except Exception:
        connection.execute("ROLLBACK")
        raise
    return len(rows)
