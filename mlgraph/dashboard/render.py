"""HTML for the page and for the live fragment it refetches; every value from a run, a file or Slurm is escaped."""

from __future__ import annotations

import time
from html import escape
from importlib import resources
from urllib.parse import quote, urlencode

from mlgraph.dashboard.live import LiveMetric
from mlgraph.dashboard.settings import DashboardSettings
from mlgraph.dashboard.state import DEFAULT_PER_PAGE, STATUSES, DashboardState, RunRow, TrainingSignal

RUN_COLUMNS = (
    "Experiment",
    "What ran",
    "Status",
    "Slurm job",
    "Slurm state",
    "Reason",
    "Submitted",
    "Started",
    "Elapsed",
    "Time limit",
    "Links",
)
EXPERIMENT_COLUMNS = ("Experiment", "Latest training signal", "Latest evaluation", "Latest analysis", "Live metric")


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _clock(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp)) if timestamp else "never"


def _link(href: str, text: str, cls: str) -> str:
    return f'<a class="{cls}" href="{_e(href)}" rel="noopener">{_e(text)}</a>'


def run_links(row: RunRow, settings: DashboardSettings) -> str:
    links = [_link(f"{settings.dagster_url}/runs/{quote(row.run_id, safe='')}", "Dagster", "dagster-link")]
    if row.mlflow_run_id:
        links.append(
            _link(f"{settings.mlflow_url}/#/runs/{quote(row.mlflow_run_id, safe='')}", "MLflow", "mlflow-link")
        )
    if row.log_path:
        links.append(_link(f"logs/{quote(row.run_id, safe='')}", "log", "log-link"))
    return " ".join(links)


# Asset names a cell spells out; the rest are counted (all of them, up to state.MAX_ASSETS, on hover).
_ASSETS_SHOWN = 3


def what_ran(row: RunRow) -> str:
    """The kind (when the pipeline names one), the job, and the run's asset selection and partition."""
    parts = [f'<span class="kind">{_e(row.kind)}</span> ' if row.kind else ""]
    if not row.implicit_job:  # Dagster's "materialize these assets" job: its name says nothing
        parts.append(f'<code class="job-name">{_e(row.job_name)}</code>')
    details = []
    if row.assets is not None:
        names = ", ".join(row.assets[:_ASSETS_SHOWN])
        more = row.assets_total - min(len(row.assets), _ASSETS_SHOWN)
        title = ", ".join(row.assets) + (" …" if row.assets_total > len(row.assets) else "")
        details.append(
            f'<span class="assets" title="{_e(title)}">assets: {_e(names)}{f" +{more} more" if more else ""}</span>'
        )
    if row.partition:
        details.append(f'<span class="partition">partition {_e(row.partition)}</span>')
    if details:
        parts.append(f'<br><span class="what muted">{" · ".join(details)}</span>')
    return "".join(parts)


def run_row(row: RunRow, settings: DashboardSettings) -> str:
    cells = (
        _e(row.experiment),
        what_ran(row),
        f'<span class="badge status-{row.status}">{_e(row.label)}</span>',
        _e(row.slurm_job_id or ""),
        f'<span class="slurm-state">{_e(row.slurm_state or "")}</span>',
        _e(row.reason or ""),
        _e(row.submitted or ""),
        _e(row.started or ""),
        _e(row.elapsed or ""),
        _e(row.time_limit or ""),
        run_links(row, settings),
    )
    return (
        f'<tr id="run-{_e(row.run_id)}" class="run status-{row.status}" data-status="{row.status}" '
        f'data-experiment="{_e(row.experiment)}" data-run-id="{_e(row.run_id)}">'
        + "".join(f"<td>{cell}</td>" for cell in cells)
        + "</tr>"
    )


def _signal_cell(signal: TrainingSignal | None, settings: DashboardSettings) -> str:
    if signal is None:
        return '<span class="muted">no training signal</span>'
    if signal.error:
        return f'<span class="signal-error">unreadable: {_e(signal.error)}</span>'
    s = signal.signal
    text = (
        f"{_e(s.user)}@{_e(s.hostname)}, {_e(s.timestamp.isoformat())}, checkpoint <code>{_e(s.checkpoint_path)}</code>"
    )
    if s.mlflow_run_id:
        text += " " + _link(f"{settings.mlflow_url}/#/runs/{quote(s.mlflow_run_id, safe='')}", "MLflow", "mlflow-link")
    return text


def query(state: DashboardState, page: int, keep_status: bool = True, **override: str) -> str:
    """The link to `page` with the page's filters and page size kept ("?..."; empty values left out)."""
    params = {
        "experiment": state.experiment_filter,
        "status": state.status_filter if keep_status else "",
        "page": str(page) if page != 1 else "",
        "per_page": str(state.per_page) if state.per_page != DEFAULT_PER_PAGE else "",
        **override,
    }
    return "?" + urlencode({k: v for k, v in params.items() if v})


def _latest_cell(row: RunRow | None, state: DashboardState) -> str:
    if row is None:
        return '<span class="muted">none</span>'
    href = f"#run-{row.run_id}"
    page, keep_status = state.run_pages.get(row.run_id, (state.page, True))
    if page != state.page or not keep_status:
        href = query(state, page, keep_status) + href
    return f'<a href="{_e(href)}" class="badge status-{row.status}">{_e(row.label)}</a>' + (
        f" job {_e(row.slurm_job_id)}" if row.slurm_job_id else ""
    )


def experiment_rows(state: DashboardState, settings: DashboardSettings) -> str:
    out = []
    for name in state.experiments:
        latest = state.latest.get(name, {})
        out.append(
            f'<tr class="experiment" data-experiment="{_e(name)}"><td>{_e(name)}</td>'
            f"<td>{_signal_cell(state.signals.get(name), settings)}</td>"
            f"<td>{_latest_cell(latest.get('evaluation'), state)}</td>"
            f"<td>{_latest_cell(latest.get('analysis'), state)}</td>"
            f"<td>{_live_cell(state.live.get(name))}</td>"
            "</tr>"
        )
    return "".join(out) or f'<tr><td colspan="{len(EXPERIMENT_COLUMNS)}" class="muted">no experiments yet</td></tr>'


def _live_cell(live: LiveMetric | None) -> str:
    """The realized metric from delayed labels: last bucket, change from the one before, trend, drop flag."""
    if live is None:
        return '<span class="muted">no labels yet</span>'
    if live.error:
        return f'<span class="signal-error">unreadable: {_e(live.error)}</span>'
    if live.last is None:
        return f'<span class="muted">{live.n_labelled} labelled predictions, no {_e(live.metric)} yet</span>'
    change = "" if live.change is None else f" {'▲' if live.change >= 0 else '▼'}{abs(live.change):.3f}"
    test = "" if live.champion_test is None else f" (test {live.champion_test:.3f})"
    drop = ' <span class="badge status-failed">performance drop</span>' if live.dropped else ""
    return (
        f'<span class="live-metric" title="{_e(live.computed_at)}">{_e(live.metric)} {live.last:.3f}{change}{test} '
        f'<span class="spark">{_e(live.sparkline())}</span> n={live.n_labelled:,}</span>{drop}'
    )


def _slurm_line(state: DashboardState) -> str:
    slurm = state.slurm
    if slurm.polled_at is None:
        return '<p id="slurm-status" class="slurm-waiting">Slurm: not polled yet</p>'
    if slurm.error:
        return (
            f'<p id="slurm-status" class="slurm-unavailable">Slurm unavailable ({_e(slurm.error)}); '
            f"last poll {_clock(slurm.polled_at)}. Runs below come from Dagster.</p>"
        )
    active = sum(not job.is_terminal for job in slurm.queue.values())
    return (
        f'<p id="slurm-status" class="slurm-ok">Slurm: {active} jobs queued or running, '
        f"polled {_clock(slurm.polled_at)}</p>"
    )


def _stands_for(alert: dict) -> int:
    hidden = alert.get("hidden")  # set by dashboard.alerts on its "N more not shown" line
    return hidden if type(hidden) is int and hidden > 0 else 1


def _alerts(state: DashboardState) -> str:
    items = "".join(
        f'<li class="alert severity-{_e(a.get("severity", "warning"))}"><b>{_e(a.get("severity", ""))}</b> '
        f"{_e(a.get('time', ''))} {_e(a.get('kind', ''))}"
        + (f" [{_e(a.get('experiment'))}]" if a.get("experiment") else "")
        + f": {_e(a.get('message', ''))}</li>"
        for a in state.alerts
    )
    body = f"<ul>{items}</ul>" if items else '<p class="muted">none</p>'
    # The line saying how many did not fit is not an alert itself; the count includes the ones it stands for.
    total = sum(_stands_for(a) for a in state.alerts)
    count = f" ({total})" if state.alerts else ""
    return f'<section id="alerts"><h2>Open alerts{count}</h2>{body}</section>'


def _table(table_id: str, title: str, headers: tuple[str, ...], body: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return (
        f'<section><h2>{_e(title)}</h2><table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></section>"
    )


def _queue(state: DashboardState) -> str:
    rows = []
    for j in state.queue:
        cells = (
            j.job_id,
            j.name,
            j.state,
            j.reason if j.reason != "None" else "",
            j.raw.get("SubmitTime"),
            j.elapsed,
            j.time_limit,
        )
        rows.append(
            f'<tr class="queue-job" data-job-id="{_e(j.job_id)}">'
            + "".join(f"<td>{_e(c)}</td>" for c in cells)
            + "</tr>"
        )
    headers = ("Job", "Name", "State", "Reason", "Submitted", "Elapsed", "Time limit")
    return _table("queue", "Other Slurm jobs", headers, "".join(rows)) if rows else ""


def _pager(state: DashboardState) -> str:
    """Links to newer and older pages (the filters kept), and where this page lies; nothing when one page holds all."""
    if state.page == state.pages == 1:
        return ""
    links = []
    if state.page > 1:
        links.append(f'<a class="page-first" href="{_e(query(state, 1))}">newest</a>')
        newer = min(state.page - 1, state.pages)
        links.append(f'<a class="page-newer" href="{_e(query(state, newer))}" rel="prev">← newer</a>')
    links.append(f'<span class="page-number">page {state.page} of {state.pages}</span>')
    if state.page < state.pages:
        links.append(f'<a class="page-older" href="{_e(query(state, state.page + 1))}" rel="next">older →</a>')
        links.append(f'<a class="page-last" href="{_e(query(state, state.pages))}">oldest</a>')
    return f'<nav class="pager">{" ".join(links)}</nav>'


def _summary(state: DashboardState) -> str:
    first = (state.page - 1) * state.per_page
    shown = f"runs {first + 1:,}–{first + len(state.runs):,} of {state.matched:,}" if state.runs else "no runs"
    return (
        f'<p id="summary" data-page="{state.page}" data-pages="{state.pages}" data-matched="{state.matched}">'
        f"Updated {_clock(state.generated_at)}; {shown} matching, newest first ({state.total_runs:,} recent runs "
        "read).</p>"
    )


def _older_failed(state: DashboardState, settings: DashboardSettings) -> str:
    if not state.older_failed_total:
        return ""
    body = "".join(run_row(row, settings) for row in state.older_failed)
    rest = state.older_failed_total - len(state.older_failed)
    every = query(state, 1, status="failed")
    note = (
        f'<tr><td colspan="{len(RUN_COLUMNS)}" class="muted">{rest:,} older failed run(s) not listed here: '
        f'<a href="{_e(every)}">every failed run</a></td></tr>'
        if rest
        else ""
    )
    return _table("failed-runs", f"Older failed runs ({state.older_failed_total:,})", RUN_COLUMNS, body + note).replace(
        "<section>", '<section id="older-failed">', 1
    )


def fragment(state: DashboardState, settings: DashboardSettings) -> str:
    """The part of the page the browser refetches and swaps in place (no full reload)."""
    body = "".join(run_row(row, settings) for row in state.runs)
    if not body and state.page > state.pages:
        last = query(state, state.pages)
        body = (
            f'<tr><td colspan="{len(RUN_COLUMNS)}" class="muted">page {state.page} is past the last page; '
            f'<a href="{_e(last)}">go to page {state.pages}</a></td></tr>'
        )
    elif not body:
        body = f'<tr><td colspan="{len(RUN_COLUMNS)}" class="muted">no runs match</td></tr>'
    pager = _pager(state)
    return (
        f'<div id="live-content" data-generated="{state.generated_at:.3f}">{_slurm_line(state)}'
        f"{_summary(state)}{_alerts(state)}"
        + _table("experiments", "Experiments", EXPERIMENT_COLUMNS, experiment_rows(state, settings))
        + _table("runs", "Runs", RUN_COLUMNS, body).replace("</h2>", f"</h2>{pager}", 1)
        + pager
        + _older_failed(state, settings)
        + f"{_queue(state)}</div>"
    )


def static_text(name: str) -> str:
    return resources.files("mlgraph.dashboard").joinpath("static", name).read_text(encoding="utf-8")


def page(state: DashboardState, settings: DashboardSettings, experiment: str = "", status: str = "") -> str:
    options = "".join(
        f'<option value="{s}"{" selected" if s == status else ""}>{s or "all"}</option>' for s in ("", *STATUSES)
    )
    # A changed filter starts again at page 1; the page size stays.
    per_page = (
        f'<input type="hidden" name="per_page" value="{state.per_page}">' if state.per_page != DEFAULT_PER_PAGE else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>mlgraph jobs</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{static_text('dashboard.css')}</style></head>"
        f'<body data-refresh-seconds="{settings.refresh_seconds:g}"><header><h1>mlgraph jobs</h1>'
        '<span id="refresh-note" class="muted"></span></header>'
        '<form id="filters" method="get" action="">'
        f'<label>Experiment <input type="search" id="experiment-filter" name="experiment" value="{_e(experiment)}" '
        'placeholder="search"></label> '
        f'<label>Status <select id="status-filter" name="status">{options}</select></label> '
        f'{per_page}<button type="submit">Filter</button></form>'
        f'<div id="live">{fragment(state, settings)}</div>'
        '<script src="static/dashboard.js"></script></body></html>'
    )
