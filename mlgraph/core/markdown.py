"""The one way tables and images become markdown (assets wrap the result in dg.MetadataValue.md)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    # A pipe inside a cell would start a new column.
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any] | Mapping[str, Any]],
    align: Sequence[str] | None = None,
    fmt: Callable[[Any], str] = _cell,
) -> str:
    """A markdown table; rows are sequences in column order or mappings keyed by column.

    `align` holds one of "", "l", "r", "c" per column (default: left, unmarked).
    """
    marks = {"": "---", "l": ":---", "r": "---:", "c": ":---:"}
    separator = [marks[a] for a in (align or [""] * len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(separator) + "|"]
    for row in rows:
        values = [row.get(c) for c in columns] if isinstance(row, Mapping) else list(row)
        lines.append("| " + " | ".join(fmt(v) for v in values) + " |")
    return "\n".join(lines)


def md_image_bytes(data: bytes, alt: str, mime: str = "image/png") -> str:
    """An inline image (data URI), so it shows in the Dagster UI without a file server."""
    return f"![{alt}](data:{mime};base64,{base64.b64encode(data).decode('ascii')})"


def md_image(path: str | os.PathLike[str], alt: str | None = None) -> str:
    with open(path, "rb") as fh:
        data = fh.read()
    return md_image_bytes(data, alt if alt is not None else os.path.basename(path))
