"""The dashboard's FastAPI app: the page, its live fragment, job log tails, and a status endpoint. Read-only.

One SlurmPoller per app (started with the app) and short-lived caches of the instance's run records and
the open alerts are shared by every viewer, so the number of open pages never multiplies the load on Slurm or the
run storage. Optional basic auth covers every route; errors never carry a stack trace. Every error is a
`Refusal` of a kind in the shared error-kind table (mlgraph.core.http_errors), answered as plain text in one
place (`refusal_text`).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
import threading
import time
from base64 import b64decode
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from mlgraph.core.drive import DriveLayout
from mlgraph.core.http_errors import BAD_REQUEST, FORBIDDEN, INTERNAL, NOT_FOUND, UNAUTHORIZED, Refusal
from mlgraph.core.tags import SLURM_JOB_ID_TAG, SLURM_LOG_TAG
from mlgraph.dashboard import render
from mlgraph.dashboard.alerts import open_alerts
from mlgraph.dashboard.live import LiveCache
from mlgraph.dashboard.settings import DashboardSettings
from mlgraph.dashboard.slurm_poller import SlurmPoller
from mlgraph.dashboard.state import (
    DEFAULT_PER_PAGE,
    MAX_PAGE,
    MAX_PER_PAGE,
    STATUSES,
    DashboardState,
    SignalCache,
    collect,
)

logger = logging.getLogger("mlgraph.dashboard")
_RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LOG_TAIL_BYTES = 256 << 10
_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Shared:
    """`load()`'s result, recomputed at most once per `ttl` seconds however many requests ask."""

    def __init__(self, load, ttl: float):
        self._load = load
        self.ttl = ttl
        self._lock = threading.Lock()
        self._value = None
        self._at = float("-inf")

    def get(self):
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                self._value = self._load()
                self._at = time.monotonic()
            return self._value


class RunRecords:
    """The instance's `limit` most recent run records, kept current cheaply: a full read at start and every
    `full_seconds` (to drop deleted runs), otherwise only the runs updated since the last read."""

    def __init__(self, instance, limit: int, full_seconds: float = 300.0):
        self.instance = instance
        self.limit = limit
        self.full_seconds = full_seconds
        self._by_id: dict[str, object] = {}
        self._since = None
        self._full_at = float("-inf")

    def read(self) -> list:
        import dagster as dg

        if self._since is None or time.monotonic() - self._full_at >= self.full_seconds:
            records = self.instance.get_run_records(limit=self.limit)
            self._by_id = {r.dagster_run.run_id: r for r in records}
            self._full_at = time.monotonic()
        else:
            # A margin: update times have second resolution in some storages; rereading a few runs is harmless.
            records = self.instance.get_run_records(
                filters=dg.RunsFilter(updated_after=self._since - timedelta(seconds=2)), limit=self.limit
            )
            self._by_id.update((r.dagster_run.run_id, r) for r in records)
        if records:
            newest = max(r.update_timestamp for r in records)
            self._since = newest if self._since is None else max(self._since, newest)
        ordered = sorted(self._by_id.values(), key=lambda r: r.create_timestamp, reverse=True)[: self.limit]
        if len(ordered) < len(self._by_id):
            self._by_id = {r.dagster_run.run_id: r for r in ordered}
        return ordered


class Dashboard:
    """Everything a request needs: settings, the drive, the run source, the poller, the signal cache."""

    def __init__(self, settings: DashboardSettings, instance, poller: SlurmPoller | None = None):
        self.settings = settings
        self.drive = DriveLayout.at(settings.drive_root)
        self.instance = instance
        ttl = min(settings.cache_seconds, settings.refresh_seconds / 2)
        self.records = Shared(RunRecords(instance, settings.run_limit).read, ttl)
        self.alerts = Shared(lambda: open_alerts(self.drive), ttl)
        self.poller = poller or SlurmPoller(
            settings.slurm_poll_seconds, bin_dir=settings.slurm_bin_dir, timeout_seconds=settings.slurm_timeout_seconds
        )
        self.signals = SignalCache()
        self.live = LiveCache()
        self._signals_lock = threading.Lock()

    def state(
        self, experiment: str = "", status: str = "", page: int = 1, per_page: int = DEFAULT_PER_PAGE
    ) -> DashboardState:
        records = self.records.get()
        # Tell the poller which finished jobs to look up (it runs on its own clock, never per request).
        self.poller.want(job_id for r in records if (job_id := r.dagster_run.tags.get(SLURM_JOB_ID_TAG)))
        with self._signals_lock:
            return collect(
                records,
                self.poller.snapshot,
                self.drive,
                self.signals,
                self.alerts.get(),
                experiment=experiment,
                status=status,
                page=page,
                per_page=per_page,
                live=self.live,
            )

    def log_tail(self, run_id: str, stream: str) -> str:
        """The end of the job log a run's `slurm/log` tag names, only inside logs/; else a Refusal saying why."""
        if not _RUN_ID.match(run_id):
            raise Refusal(NOT_FOUND, "no such run")
        record = self.instance.get_run_record_by_id(run_id)
        raw = record.dagster_run.tags.get(SLURM_LOG_TAG) if record else None
        if not raw:
            raise Refusal(NOT_FOUND, "this run has no Slurm log")
        path = Path(raw).with_suffix(".err") if stream == "err" else Path(raw)
        real = Path(os.path.realpath(path))
        root = Path(os.path.realpath(self.drive.logs_root()))
        if not real.is_relative_to(root):
            raise Refusal(
                FORBIDDEN, f"the log {path} is outside the drive's logs directory {root}; open it on the cluster"
            )
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise Refusal(NOT_FOUND, f"{path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Refusal(FORBIDDEN, f"{path} is not a regular file")
            fh.seek(max(st.st_size - _LOG_TAIL_BYTES, 0))
            data = fh.read(_LOG_TAIL_BYTES)
        head = f"# {path}: last {len(data)} of {st.st_size} bytes\n" if st.st_size > len(data) else ""
        return head + data.decode("utf-8", "replace")


def whole_number(name: str, raw: str, default: int, most: int) -> int:
    """A query parameter that must be a whole number from 1 to `most` ("" for the default); else a 400 saying so."""
    if raw == "":
        return default
    # ASCII digits only (int() also takes ' 3', '3_0' and other scripts' digits); like the status answer, the value
    # itself is not repeated back.
    value = int(raw) if _WHOLE_NUMBER.fullmatch(raw) else 0
    if not 1 <= value <= most:
        raise Refusal(BAD_REQUEST, f"{name} must be a whole number from 1 to {most:,}")
    return value


def _authorized(header: str | None, credentials: tuple[str, str]) -> bool:
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        username, _, password = b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    # Both compared in constant time, and both always compared (no early exit on a wrong name).
    user_ok = secrets.compare_digest(username.encode(), credentials[0].encode())
    password_ok = secrets.compare_digest(password.encode(), credentials[1].encode())
    return user_ok and password_ok


def refusal_text(refusal: Refusal, headers: dict[str, str] | None = None):
    """The dashboard's one error answer: the kind's status, the detail as one line of plain text."""
    from fastapi.responses import PlainTextResponse

    return PlainTextResponse(f"{refusal.detail}\n", status_code=refusal.status, headers=headers)


def create_app(settings: DashboardSettings, instance=None, poller: SlurmPoller | None = None):
    """The FastAPI app; `instance` defaults to `DagsterInstance.get()` ($DAGSTER_HOME)."""
    import dagster as dg
    from fastapi import FastAPI, Query, Request
    from fastapi.middleware.gzip import GZipMiddleware
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

    dashboard = Dashboard(settings, instance if instance is not None else dg.DagsterInstance.get(), poller)

    @asynccontextmanager
    async def lifespan(app):
        dashboard.poller.start()
        try:
            yield
        finally:
            dashboard.poller.stop()

    app = FastAPI(title="mlgraph dashboard", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.dashboard = dashboard
    # The page is ~1 kB per run: compressed, a 30 s refresh of thousands of rows stays cheap over a network.
    app.add_middleware(GZipMiddleware, minimum_size=2048, compresslevel=5)

    @app.exception_handler(Refusal)
    async def refused(request: Request, refusal: Refusal):
        return refusal_text(refusal)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if settings.credentials and not _authorized(request.headers.get("authorization"), settings.credentials):
            response = refusal_text(Refusal(UNAUTHORIZED), {"WWW-Authenticate": 'Basic realm="mlgraph dashboard"'})
        else:
            try:
                response = await call_next(request)
            except Exception:
                logger.exception("dashboard request %s failed", request.url.path)
                response = refusal_text(Refusal(INTERNAL, "internal error; see the dashboard's log"))
        response.headers.update(_SECURITY_HEADERS)
        return response

    def filters(experiment: str, status: str, page: str, per_page: str) -> tuple[str, str, int, int]:
        if status not in ("", *STATUSES):
            raise Refusal(BAD_REQUEST, f"status must be one of {', '.join(STATUSES)}, or empty for all")
        return (
            experiment.strip()[:128],
            status,
            whole_number("page", page, 1, MAX_PAGE),
            whole_number("per_page", per_page, DEFAULT_PER_PAGE, MAX_PER_PAGE),
        )

    @app.get("/", response_class=HTMLResponse)
    def index(experiment: str = Query(""), status: str = Query(""), page: str = Query(""), per_page: str = Query("")):
        chosen = filters(experiment, status, page, per_page)
        return HTMLResponse(render.page(dashboard.state(*chosen), settings, *chosen[:2]))

    @app.get("/fragment", response_class=HTMLResponse)
    def live_fragment(
        experiment: str = Query(""), status: str = Query(""), page: str = Query(""), per_page: str = Query("")
    ):
        chosen = filters(experiment, status, page, per_page)
        return HTMLResponse(render.fragment(dashboard.state(*chosen), settings))

    @app.get("/static/dashboard.js")
    def script():
        return Response(render.static_text("dashboard.js"), media_type="text/javascript; charset=utf-8")

    @app.get("/logs/{run_id}")
    def log(run_id: str, stream: str = Query("out")):
        return PlainTextResponse(dashboard.log_tail(run_id, stream))

    @app.get("/api/status")
    def api_status():
        snapshot = dashboard.poller.snapshot
        return JSONResponse(
            {
                "slurm_available": snapshot.available,
                "slurm_error": snapshot.error,
                "slurm_polled_at": snapshot.polled_at,
                "slurm_polls": dashboard.poller.polls,
                "slurm_poll_seconds": dashboard.poller.interval,
                "refresh_seconds": settings.refresh_seconds,
            }
        )

    return app
