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

from mlgraph.core.experiment import LoadedExperiment
from mlgraph.core.hashing import sha256_text
from mlgraph.data import generators


class DataValidationError(ValueError):
    """The source data cannot be used; the message names the file, the column and the fix."""


@dataclass(frozen=True)
class SourceData:
    table: pa.Table
    description: str  # file path or "generator:<name>(rows=..., seed=...)"
    file: Path | None
    cells_read_as_missing: int = 0  # empty or NA-spelled cells the reader turned into nulls


# pandas' default missing-value spellings (pandas._libs.parsers.STR_NA_VALUES in pandas 2.x), copied
# because that module is private; a test compares the two. The empty cell is always missing.
PANDAS_NA_VALUES = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)


def missing_spellings(na_values: list[str] | None) -> list[str]:
    """Cell texts read as missing: the empty cell plus `dataset.na_values` (pandas' set when unset)."""
    return sorted({"", *(PANDAS_NA_VALUES if na_values is None else na_values)})


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def null_missing_text(table: pa.Table, spellings: list[str]) -> tuple[pa.Table, int]:
    """Text cells spelled as missing become null; returns the table and how many cells changed.

    A parquet file converted from CSV by a tool that kept '' or 'NA' as text must load like the CSV.
    """
    changed = 0
    value_set = pa.array(spellings, pa.string())
    for i, field in enumerate(table.schema):
        if not _is_text(field.type):
            continue
        column = table.column(i)
        mask = pc.is_in(column, value_set=value_set)
        hits = pc.sum(mask).as_py() or 0
        if hits:  # untouched columns keep their exact chunks, so unaffected files give identical bytes
            table = table.set_column(i, field, pc.if_else(mask, pa.scalar(None, field.type), column))
            changed += hits
    return table, changed


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


def read_source_file(path: Path, na_values: list[str] | None = None) -> tuple[pa.Table, int]:
    """Read a CSV or parquet file with missing cells as nulls in every column type.

    Returns the table and the number of cells read as missing; parse failures name the file and the row.
    """
    if not path.exists():
        raise DataValidationError(f"{path}: dataset file not found. Fix: check dataset.path in the experiment YAML.")
    if path.stat().st_size == 0:
        raise DataValidationError(
            f"{path}: the file is empty. Fix: point dataset.path at a file with a header and rows."
        )
    if path.suffix.lower() == ".csv":
        header = _csv_header(path)
        _check_duplicate_columns(header, str(path))
        # Without strings_can_be_null pyarrow keeps an empty or 'NA' cell of a text column as text.
        options = pacsv.ConvertOptions(null_values=missing_spellings(na_values), strings_can_be_null=True)
        try:
            table = pacsv.read_csv(path, convert_options=options)
        except pa.ArrowInvalid as exc:
            raise DataValidationError(
                f"{path}: cannot parse as CSV: {exc}. Fix: every row needs the header's "
                f"{len(header)} fields and each column one type."
            ) from None
        return table, sum(column.null_count for column in table.columns)
    try:
        schema = pq.read_schema(path)
    except pa.ArrowInvalid as exc:
        raise DataValidationError(f"{path}: not a readable parquet file: {exc}.") from None
    _check_duplicate_columns(schema.names, str(path))
    return null_missing_text(pq.read_table(path), missing_spellings(na_values))


def load_source(experiment: LoadedExperiment) -> SourceData:
    cfg = experiment.config.dataset
    if cfg.generator is not None:
        rows = cfg.rows or generators.DEFAULT_ROWS[cfg.generator]
        table = generators.generate(cfg.generator, rows=rows, seed=cfg.seed)
        return SourceData(table, f"generator:{cfg.generator}(rows={rows}, seed={cfg.seed})", None)
    path = experiment.source_path
    assert path is not None  # the config validator guarantees path or generator
    table, missing = read_source_file(path, cfg.na_values)
    return SourceData(table, str(path), path, missing)


_NUMERIC_CHECK = {
    "numeric": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t),
    "integer": pa.types.is_integer,
    "boolean": pa.types.is_boolean,
    "datetime": lambda t: pa.types.is_timestamp(t) or pa.types.is_date(t),
    "categorical": lambda t: (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_dictionary(t)
        or pa.types.is_integer(t)
        or pa.types.is_boolean(t)
    ),
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
    unknown = [name for name in cfg.exclude_columns if name not in table.column_names]
    if unknown:
        raise DataValidationError(
            f"{where}: column(s) {unknown} under 'exclude_columns' in {experiment.path} not found "
            f"(columns: {', '.join(table.column_names)}). Fix: correct the names or remove them from exclude_columns."
        )
    excluded = set(cfg.exclude_columns)
    all_null = [
        name for name in table.column_names if name not in excluded and table[name].null_count == table.num_rows
    ]
    if all_null:
        raise DataValidationError(
            f"{where}: column(s) {all_null} hold no values at all. Fix: drop them from the file, fill them, "
            f"or list them under 'exclude_columns' in {experiment.path}."
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
