"""The execution comparison table (design document 003) built from MLflow.

One row per execution — the MLflow parent run of one Dagster run — with its metadata (run ids,
start, duration, status, champion), its inputs (`params.*`) and its metrics (`metrics.*`; for a
metric logged as a series, its last value, as MLflow reports it). `level="model"` gives one row
per candidate (child run) instead. Rows can be filtered (KEY=VALUE, KEY!=VALUE, KEY>=N, ...) and
sorted by any column; the table, CSV and JSON renderings share the same rows.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from mlgraph.core.tracking import PARENT_TAG, ROLE_CANDIDATE, ROLE_PARENT, ROLE_TAG, with_retry

_WIDTH = {"run_id": 8, "dagster_run_id": 8, "parent_run_id": 8, "params.config_hash": 12}
_FILTER = re.compile(r"^(?P<key>[^!<>=]+?)\s*(?P<op>==|!=|>=|<=|=|>|<)\s*(?P<value>.*)$")


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# `--level family` predates spec names: one child run per model spec, which used to be one per family.
LEVEL_ALIASES = {"family": "model"}


def run_rows(
    client: Any, experiment_id: str, level: str = "execution", now_ms: int | None = None
) -> list[dict[str, Any]]:
    """Rows for every parent run (level "execution") or child run (level "model"; "family" is its old
    spelling) of an experiment."""
    level = LEVEL_ALIASES.get(level, level)
    if level not in ("execution", "model"):
        raise ValueError(f"level must be 'execution' or 'model', got {level!r}")
    role = ROLE_PARENT if level == "execution" else ROLE_CANDIDATE
    now_ms = now_ms if now_ms is not None else int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    runs, token = [], None
    while True:
        page = with_retry(client.search_runs, [experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    rows = []
    for run in runs:
        tags = run.data.tags
        if tags.get(ROLE_TAG) != role:
            continue
        info = run.info
        end = info.end_time if info.end_time else (now_ms if info.status == "RUNNING" else None)
        row: dict[str, Any] = {
            "run_id": info.run_id,
            "run_name": info.run_name,
            "dagster_run_id": tags.get("dagster_run_id"),
            "start_time": _iso(info.start_time),
            "duration_s": round((end - info.start_time) / 1000, 3) if end and info.start_time else None,
            "status": info.status,
        }
        if level == "execution":
            row["champion"] = tags.get("mlgraph.champion")
            row["promoted"] = tags.get("mlgraph.promoted")
        else:
            # Child runs from before spec names carry only the family, which was their name.
            row["model"] = tags.get("mlgraph.model") or tags.get("mlgraph.family")
            row["family"] = tags.get("mlgraph.family")
            row["parent_run_id"] = tags.get(PARENT_TAG)
        row.update({f"params.{k}": v for k, v in sorted(run.data.params.items())})
        row.update({f"metrics.{k}": v for k, v in sorted(run.data.metrics.items())})
        rows.append(row)
    return sorted(rows, key=lambda r: r["start_time"] or "")


def columns_of(rows: Iterable[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    meta = [c for c in seen if not c.startswith(("params.", "metrics."))]
    params = sorted(c for c in seen if c.startswith("params."))
    metrics = sorted(c for c in seen if c.startswith("metrics."))
    return meta + params + metrics


def resolve_column(key: str, columns: Sequence[str]) -> str:
    """`key` as given, or as `metrics.key` / `params.key`, or the one column ending in `.key`."""
    for candidate in (key, f"metrics.{key}", f"params.{key}"):
        if candidate in columns:
            return candidate
    suffix = [c for c in columns if c.endswith(f".{key}")]
    if len(suffix) == 1:
        return suffix[0]
    hint = f" (ambiguous: {', '.join(suffix)})" if suffix else ""
    raise KeyError(f"no column {key!r}{hint}; available: {', '.join(columns)}")


def _matches(cell: Any, op: str, value: str) -> bool:
    if op in ("=", "=="):
        a, b = _number(cell), _number(value)
        return a == b if a is not None and b is not None else str(cell) == value
    if op == "!=":
        return not _matches(cell, "=", value)
    a, b = _number(cell), _number(value)
    if a is None or b is None:
        return False
    return {">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]


def filter_rows(rows: list[dict[str, Any]], filters: Sequence[str]) -> list[dict[str, Any]]:
    columns = columns_of(rows)
    for expression in filters:
        match = _FILTER.match(expression.strip())
        if not match:
            raise ValueError(f"filter {expression!r} is not KEY=VALUE (also !=, >, <, >=, <=)")
        column = resolve_column(match["key"].strip(), columns) if rows else match["key"].strip()
        rows = [r for r in rows if _matches(r.get(column), match["op"], match["value"].strip())]
    return rows


def sort_rows(rows: list[dict[str, Any]], key: str, descending: bool = False) -> list[dict[str, Any]]:
    """Sort by a column (numbers numerically, text as text); rows without the value go last either way."""
    if not rows:
        return rows
    column = resolve_column(key, columns_of(rows))
    present = [r for r in rows if r.get(column) is not None]
    absent = [r for r in rows if r.get(column) is None]
    numeric = all(_number(r[column]) is not None for r in present)
    present.sort(key=lambda r: _number(r[column]) if numeric else str(r[column]), reverse=descending)
    return present + absent


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render(rows: list[dict[str, Any]], fmt: str = "table", columns: Sequence[str] | None = None) -> str:
    """Table (aligned text; params equal in every row are folded into one 'common' line), CSV or JSON."""
    all_columns = list(columns) if columns else columns_of(rows)
    if fmt == "json":
        return json.dumps([{c: r.get(c) for c in all_columns} for r in rows], indent=2, default=str) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=all_columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    if fmt != "table":
        raise ValueError(f"format must be table, csv or json, got {fmt!r}")
    if not rows:
        return "(no runs)\n"
    shown, common = list(all_columns), {}
    if not columns:
        for c in all_columns:
            values = {_cell(r.get(c)) for r in rows}
            if c.startswith("params.") and len(values) == 1:
                common[c] = values.pop()
                shown.remove(c)
    short = {c: c.removeprefix("metrics.").removeprefix("params.") for c in shown}
    # Ids and hashes are unique in their first characters; full values are in --format csv/json.
    cells = [[_cell(r.get(c))[: _WIDTH.get(c)] for c in shown] for r in rows]
    widths = [max(len(short[c]), *(len(row[i]) for row in cells)) for i, c in enumerate(shown)]
    lines = []
    if common:
        lines.append("common params: " + ", ".join(f"{k.removeprefix('params.')}={v}" for k, v in common.items()))
    lines.append("  ".join(short[c].ljust(w) for c, w in zip(shown, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines) + "\n"


# Metrics logged once per epoch or per fold: the ones `--reduce` turns into one number.
EPOCH_SERIES = ("train_loss", "val_loss")


def sweep_rows(client: Any, experiment_id: str, sweep: str, reduce: str = "last") -> list[dict[str, Any]]:
    """One row per trial of the newest sweep named `sweep`: its inputs (`params.*`), its metrics, and its
    per-epoch and per-fold list metrics reduced by `reduce` (last, min, max or mean).

    A trial reused by a later rerun appears once, as the run that executed it.
    """
    from mlgraph.core.tracking import ROLE_SWEEP, ROLE_TRIAL
    from mlgraph.training.sweep_report import reduce as reduce_values

    reduce_values([], reduce)  # an unknown reduction fails before any query
    sweeps = _search_all(client, experiment_id, f"tags.`mlgraph.sweep` = '{_quoted(sweep)}'")
    runs = [r for r in sweeps if r.data.tags.get(ROLE_TAG) == ROLE_SWEEP]
    if not runs:
        names = sorted({r.data.tags.get("mlgraph.sweep") for r in _search_all(client, experiment_id, "")} - {None})
        raise KeyError(f"no sweep named {sweep!r} in this experiment; sweeps: {', '.join(names) or 'none yet'}")
    newest = max(runs, key=lambda r: r.info.start_time or 0)
    key = newest.data.tags.get("mlgraph.sweep_key")
    trials = [
        r for r in sweeps if r.data.tags.get(ROLE_TAG) == ROLE_TRIAL and r.data.tags.get("mlgraph.sweep_key") == key
    ]
    # The same trial (key) logged twice: a rerun of a failed one. The newest run is the trial's outcome.
    latest: dict[str, Any] = {}
    for run in sorted(trials, key=lambda r: r.info.start_time or 0):
        latest[run.data.tags.get("mlgraph.trial_key", run.info.run_id)] = run
    rows = []
    for run in latest.values():
        tags, info = run.data.tags, run.info
        row: dict[str, Any] = {
            "trial": int(tags.get("mlgraph.trial_number", -1)),
            "run_id": info.run_id,
            "status": tags.get("mlgraph.trial_state") or info.status.lower(),
            "duration_s": round((info.end_time - info.start_time) / 1000, 3) if info.end_time else None,
        }
        row.update({f"params.{k}": _param(v) for k, v in sorted(run.data.params.items())})
        metrics = dict(run.data.metrics)
        for name in list(metrics):
            if name in EPOCH_SERIES or _is_fold_series(name, metrics):
                history = with_retry(client.get_metric_history, info.run_id, name)
                values = [m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))]
                metrics[name] = reduce_values(values, reduce)
        row.update({f"metrics.{k}": v for k, v in sorted(metrics.items())})
        if tags.get("mlgraph.error"):
            row["error"] = tags["mlgraph.error"]
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial"])


def _is_fold_series(name: str, metrics: dict[str, float]) -> bool:
    # cv_<m> is logged once per fold; cv_<m>_mean / _std beside it are its summary.
    return name.startswith("cv_") and f"{name}_mean" in metrics


def _param(value: str) -> Any:
    number = _number(value)
    return number if number is not None and value.strip().lower() not in ("nan", "inf", "-inf") else value


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _search_all(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = with_retry(
            client.search_runs, [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs
