"""Load an experiment's source data (file or generator) and validate it, with errors a user can act on."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from core.experiment import LoadedExperiment
from core.hashing import sha256_text
from pipeline_assets.data import generators


class DataValidationError(ValueError):
    """The source data cannot be used; the message names the file, the column and the fix."""


@dataclass(frozen=True)
class SourceData:
    table: pa.Table
    description: str  # file path or "generator:<name>(rows=..., seed=...)"
    file: Path | None


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        return next(csv.reader(fh), [])


def _check_duplicate_columns(names: list[str], where: str) -> None:
    seen: set[str] = set()
    dupes = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if dupes:
        raise DataValidationError(
            f"{where}: duplicate column name(s) {dupes}. Fix: rename the columns so each is unique."
        )


def read_source_file(path: Path) -> pa.Table:
    """Read a CSV or parquet file; parse failures name the file and the row pyarrow reports."""
    if not path.exists():
        raise DataValidationError(f"{path}: dataset file not found. Fix: check dataset.path in the experiment YAML.")
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path}: the file is empty. Fix: point dataset.path at a file with a header and rows.")
    if path.suffix.lower() == ".csv":
        header = _csv_header(path)
        _check_duplicate_columns(header, str(path))
        try:
            return pacsv.read_csv(path)
        except pa.ArrowInvalid as exc:
            raise DataValidationError(
                f"{path}: cannot parse as CSV: {exc}. Fix: every row needs the header's "
                f"{len(header)} fields and each column one type."
            ) from None
    try:
        schema = pq.read_schema(path)
    except pa.ArrowInvalid as exc:
        raise DataValidationError(f"{path}: not a readable parquet file: {exc}.") from None
    _check_duplicate_columns(schema.names, str(path))
    return pq.read_table(path)


def load_source(experiment: LoadedExperiment) -> SourceData:
    cfg = experiment.config.dataset
    if cfg.generator is not None:
        rows = cfg.rows or generators.DEFAULT_ROWS[cfg.generator]
        table = generators.generate(cfg.generator, rows=rows, seed=cfg.seed)
        return SourceData(table, f"generator:{cfg.generator}(rows={rows}, seed={cfg.seed})", None)
    path = experiment.source_path
    assert path is not None  # the config validator guarantees path or generator
    return SourceData(read_source_file(path), str(path), path)


_NUMERIC_CHECK = {
    "numeric": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t),
    "integer": pa.types.is_integer,
    "boolean": pa.types.is_boolean,
    "datetime": lambda t: pa.types.is_timestamp(t) or pa.types.is_date(t),
    "categorical": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
    or pa.types.is_dictionary(t) or pa.types.is_integer(t) or pa.types.is_boolean(t),
}


def _coerce_declared(table: pa.Table, column: str, declared: str, where: str) -> pa.Table:
    """Cast a column to its declared type when the values allow it; otherwise name the first bad row."""
    arr = table[column]
    if _NUMERIC_CHECK[declared](arr.type):
        return table
    target = {
        "numeric": pa.float64(),
        "integer": pa.int64(),
        "boolean": pa.bool_(),
        "datetime": pa.timestamp("s"),
        "categorical": pa.string(),
    }[declared]
    try:
        cast = pc.cast(arr, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad_row = None
        for i, value in enumerate(arr.to_pylist()):
            if value is None:
                continue
            try:
                pc.cast(pa.array([value]), target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                bad_row = (i, value)
                break
        detail = f" (data row {bad_row[0] + 1}: {bad_row[1]!r})" if bad_row else ""
        raise DataValidationError(
            f"{where}: column {column!r} is declared {declared} but holds {arr.type} values{detail}. "
            f"Fix: clean the column or change its type under 'columns:' in the experiment YAML."
        ) from None
    return table.set_column(table.schema.get_field_index(column), column, cast)


def validate_source(table: pa.Table, experiment: LoadedExperiment, where: str) -> pa.Table:
    """Check the loaded table against the experiment; return it with declared types applied."""
    cfg = experiment.config
    if table.num_rows == 0:
        raise DataValidationError(f"{where}: no data rows. Fix: the dataset needs at least one row below the header.")
    _check_duplicate_columns(table.column_names, where)
    if cfg.target not in table.column_names:
        raise DataValidationError(
            f"{where}: target column {cfg.target!r} not found (columns: {', '.join(table.column_names)}). "
            f"Fix: set 'target' in {experiment.path} to one of these columns."
        )
    if cfg.time_column and cfg.time_column not in table.column_names:
        raise DataValidationError(
            f"{where}: time column {cfg.time_column!r} not found. Fix: set 'time_column' in {experiment.path}."
        )
    all_null = [name for name in table.column_names if table[name].null_count == table.num_rows]
    if all_null:
        raise DataValidationError(
            f"{where}: column(s) {all_null} hold no values at all. Fix: drop them from the file or fill them."
        )
    for column, declared in cfg.columns.items():
        if column not in table.column_names:
            raise DataValidationError(
                f"{where}: declared column {column!r} (under 'columns:' in {experiment.path}) is missing. "
                "Fix: remove the declaration or add the column."
            )
        table = _coerce_declared(table, column, declared, where)
    if cfg.time_column and not _NUMERIC_CHECK["datetime"](table[cfg.time_column].type):
        table = _coerce_declared(table, cfg.time_column, "datetime", where)
    if cfg.task == "classification":
        classes = pc.unique(table[cfg.target].drop_null())
        if len(classes) < 2:
            raise DataValidationError(
                f"{where}: target {cfg.target!r} has {len(classes)} distinct value(s); classification needs two or more."
            )
    return table


def schema_hash(schema: pa.Schema) -> str:
    """Hash of column names and types only (pandas/arrow metadata does not count)."""
    fields = [[f.name, str(f.type)] for f in schema]
    return sha256_text(json.dumps(fields))
