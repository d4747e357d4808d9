"""The service's ASGI app: `create_app(settings)` builds it for one experiment.

Three layers: the request core (mlgraph/serving/core.py: bytes in, an answer or a refusal out, no web
framework), the ASGI guard that dispatches the core's routes and writes its answers (mlgraph/serving/guard.py),
and this thin FastAPI app, which registers the same routes (so a wrong method is a 405 and the bare app
serves them too), serves /docs (its schema built from the routes, mlgraph/serving/openapi.py), turns
FastAPI's own errors into refusals, and runs the lifespan: it starts the prediction-log writer, the
event-loop lag probe (mlgraph/serving/metrics.py) and the promotion-pointer poll (hot reload,
mlgraph/serving/reload.py, through a loader that applies the serving-capacity release rule) and, on
shutdown — after uvicorn has answered every request in flight — stops the poll and drains the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.routing import Route as StarletteRoute

from mlgraph.core.drive import DriveLayout
from mlgraph.core.http_errors import INTERNAL, Refusal, kind_for_status
from mlgraph.serving.core import ROUTES, ServiceCore
from mlgraph.serving.guard import Guard, refusal_response, request_id
from mlgraph.serving.log_writer import PredictionLogWriter
from mlgraph.serving.metrics import ServiceMetrics
from mlgraph.serving.model import LoadedModel, ModelRefused, input_spec, load_model
from mlgraph.serving.openapi import add_route_paths
from mlgraph.serving.reload import ModelHolder
from mlgraph.serving.settings import ServeSettings

LOG = logging.getLogger("mlgraph.serving")


def load_experiment(settings: ServeSettings) -> Any:
    from mlgraph.core.catalog import ConfigCatalog

    return ConfigCatalog(settings.config_dir).load(settings.experiment).config


def _released_loader(hold: bool, serving: Callable[[], str | None]) -> Callable[..., LoadedModel]:
    """load_model, refusing (with `hold`) a champion the serving-capacity gate holds: one whose gate failed, or,
    while `serving()` names another model, one not measured yet. The model being served stays, as for any
    champion that cannot be served (mlgraph.deployment.capacity.release_hold)."""
    from mlgraph.deployment.capacity import release_hold
    from mlgraph.deployment.champion import read_champion

    def load(drive: DriveLayout, config: Any, spec: Any) -> LoadedModel:
        if hold and (why := release_hold(drive, read_champion(drive, config), serving())):
            raise ModelRefused(why)  # before loading: a held champion costs no ONNX session per retry
        return load_model(drive, config, spec)

    return load


class _CountingGuard(Guard):
    """The guard, counting the requests in flight for /metrics (saturation shows as a growing count)."""

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        metrics = self.core.metrics
        metrics.in_flight += 1
        try:
            await super().__call__(scope, receive, send)
        finally:
            metrics.in_flight -= 1


def create_app(settings: ServeSettings) -> Guard:
    """The ASGI app (`Guard`; `.core` is the request core, `.app` the FastAPI app)."""
    drive = DriveLayout.at(settings.drive_root)
    config = load_experiment(settings)
    spec = input_spec(drive, config)
    holder: ModelHolder | None = None  # the loader reads it only when polling, after it is set

    def serving() -> str | None:
        return holder.current.version if holder is not None and holder.current is not None else None

    holder = ModelHolder(drive, config, spec, _released_loader(settings.release_hold, serving))
    metrics = ServiceMetrics(config.name, [r.path for r in ROUTES])
    writer = (
        PredictionLogWriter(
            Path(settings.log_path) if settings.log_path else drive.prediction_log_path(config.name),
            settings.log_max_bytes,
            settings.log_sync_interval,
            within=drive.root,  # no symlink at the path is followed, and its directory must be on the drive
            max_pending_rows=settings.log_max_pending_rows,
            max_pending_bytes=settings.log_max_pending_bytes,
            retention_bytes=settings.log_retention_bytes,
            retention_days=settings.log_retention_days,
            flush_timeout=settings.log_flush_timeout,
        )
        if settings.log_predictions
        else None
    )
    if writer is not None:
        metrics.watch_log(writer.status)
    core = ServiceCore(
        holder,
        metrics,
        writer,
        config,
        drive,
        max_body_bytes=settings.max_body_bytes,
        max_rows=settings.max_rows,
        max_string_length=settings.max_string_length,
        max_batch_rows=settings.max_batch_rows,
    )

    async def poll_forever() -> None:
        failure = None
        while True:
            try:
                if await asyncio.to_thread(holder.poll):
                    metrics.serving(holder.current)
                if holder.failure is not None and holder.failure is not failure:
                    metrics.reload_failures.inc()
                failure = holder.failure
            except Exception:  # the poll must outlive any one bad read
                LOG.exception("polling the promotion pointer failed")
            await asyncio.sleep(settings.poll_interval)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if writer is not None:
            writer.start()
        poller = asyncio.create_task(poll_forever())
        lag = asyncio.create_task(metrics.watch_event_loop())
        try:
            yield
        finally:  # uvicorn runs this after the last in-flight request has been answered
            for task in (poller, lag):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if writer is not None:
                await asyncio.to_thread(writer.close)

    app = FastAPI(
        title=f"mlgraph: {config.name}",
        lifespan=lifespan,
        description=f"Predictions of the promoted champion of experiment {config.name!r} ({spec.task}).",
    )
    app.state.holder, app.state.writer, app.state.metrics, app.state.core = holder, writer, metrics, core

    def refused(request: Request, refusal: Refusal, headers: dict[str, str] | None = None) -> Response:
        status, body = refusal_response(refusal, request_id(request), metrics)
        return Response(body, status, headers, media_type="application/json")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return refused(request, Refusal(kind_for_status(exc.status_code), exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        LOG.error("request %s failed", request_id(request), exc_info=exc)
        return refused(request, Refusal(INTERNAL))

    guard = _CountingGuard(
        app, core, settings.max_body_bytes, metrics.observe, lambda: holder.current.version if holder.current else None
    )
    for route in ROUTES:  # the guard answers them first; registered so that FastAPI knows the paths
        endpoint = guard.endpoint(route)
        app.router.routes.insert(0, StarletteRoute(route.path, endpoint, methods=[route.method], name=route.name))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = add_route_paths(schema, ROUTES, core.models)
        return app.openapi_schema

    app.openapi = openapi
    return guard
