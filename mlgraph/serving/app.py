"""The service's ASGI app: `create_app(settings)` builds it for one experiment.

The prediction routes are plain ASGI endpoints (mlgraph/serving/predict.py) that `Guard` calls directly; FastAPI
serves health, readiness, monitoring, metrics and the docs (whose schema mlgraph/serving/openapi.py extends with
the prediction routes). The lifespan starts the prediction-log writer and the promotion-pointer poll
(hot reload, mlgraph/serving/reload.py) and, on shutdown — after uvicorn has answered every request in flight —
stops the poll and drains the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import Route

from mlgraph.core.drive import DriveLayout
from mlgraph.serving.guard import Guard, dumps, error_body, request_id
from mlgraph.serving.log_writer import PredictionLogWriter
from mlgraph.serving.metrics import ServiceMetrics
from mlgraph.serving.model import LoadedModel, input_spec
from mlgraph.serving.openapi import add_prediction_paths
from mlgraph.serving.predict import INTERNAL, PredictEndpoint, validation_refusal
from mlgraph.serving.reload import ModelHolder
from mlgraph.serving.schema import batch_model, response_models, row_model
from mlgraph.serving.settings import ServeSettings

LOG = logging.getLogger("mlgraph.serving")
KINDS = {
    400: "malformed_json",
    404: "not_found",
    405: "not_found",
    413: "too_large",
    422: "validation",
    503: "not_ready",
}


def _json(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status, media_type="application/json")


def _error(request: Request, status: int, kind: str, detail: Any) -> Response:
    return Response(error_body(kind, detail, request_id(request)), status, media_type="application/json")


def load_experiment(settings: ServeSettings) -> Any:
    from mlgraph.core.catalog import ConfigCatalog

    return ConfigCatalog(settings.config_dir).load(settings.experiment).config


def create_app(settings: ServeSettings) -> Guard:
    """The ASGI app (the FastAPI app wrapped in `Guard`; `.app` is the FastAPI one)."""
    drive = DriveLayout.at(settings.drive_root)
    config = load_experiment(settings)
    spec = input_spec(drive, config)
    holder = ModelHolder(drive, config, spec)
    metrics = ServiceMetrics(config.name)
    writer = (
        PredictionLogWriter(drive.prediction_log_path(config.name), settings.log_max_bytes, settings.log_sync_interval)
        if settings.log_predictions
        else None
    )
    Row = row_model(spec)
    Batch = batch_model(Row, settings.max_rows)
    One, Many = response_models(spec)

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
        try:
            yield
        finally:  # uvicorn runs this after the last in-flight request has been answered
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            if writer is not None:
                await asyncio.to_thread(writer.close)

    app = FastAPI(
        title=f"mlgraph: {config.name}",
        lifespan=lifespan,
        description=f"Predictions of the promoted champion of experiment {config.name!r} ({spec.task}).",
    )
    app.state.holder, app.state.writer, app.state.metrics = holder, writer, metrics

    def current() -> LoadedModel:
        model = holder.current
        if model is None:
            why = holder.failure.error if holder.failure else "the champion is still loading"
            raise HTTPException(503, f"no model is being served: {why}")
        return model

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        refused = validation_refusal(list(exc.errors()))
        metrics.error(refused.kind)
        return _error(request, refused.status, refused.kind, refused.detail)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        kind = KINDS.get(exc.status_code, "internal" if exc.status_code >= 500 else "client")
        if kind != "client":
            metrics.error(kind)
        return _error(request, exc.status_code, kind, exc.detail)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        metrics.error("internal")
        LOG.error("request %s failed", request_id(request), exc_info=exc)
        return _error(request, 500, "internal", INTERNAL)

    predictions = [
        ("/predict", "Predict one row", Row, One, False),
        ("/batch_predict", "Predict many rows", Batch, Many, True),
    ]
    direct = {}
    for path, _, body_model, _, batch in predictions:
        direct["POST", path] = PredictEndpoint(holder, metrics, writer, body_model, batch, settings.max_rows)
        app.router.routes.insert(0, Route(path, direct["POST", path], methods=["POST"]))  # also reachable via app

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = add_prediction_paths(schema, [p[:4] for p in predictions])
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/health", summary="Liveness, and which model is served")
    async def health(request: Request) -> Response:
        model = holder.current
        log = (
            None
            if writer is None
            else {
                "path": str(writer.path),
                "records": writer.records,
                "pending": writer.pending(),
                "failures": writer.failures,
            }
        )
        return _json(
            {
                "status": "ok",
                "ready": model is not None,
                "experiment": config.name,
                "task": spec.task,
                "model_version": model.version if model else None,
                "model": model.describe() if model else None,
                "last_load_failure": holder.failure.describe() if holder.failure else None,
                "prediction_log": log,
                "request_id": request_id(request),
            }
        )

    @app.get("/ready", summary="200 once a gated model is loaded, else 503")
    async def ready(request: Request) -> Response:
        model = current()
        return _json(
            {"ready": True, "model_version": model.version, "runtime": model.runtime, "request_id": request_id(request)}
        )

    async def drift_report() -> dict[str, Any]:
        # The one drift implementation the drift_report asset and drift_sensor use (pandas/pyarrow: imported on use).
        from mlgraph.monitoring.drift import build_report

        try:
            return await run_in_threadpool(build_report, drive, config)
        except (OSError, ValueError) as exc:  # a damaged baseline or log: the message names the file and the fix
            raise HTTPException(503, f"drift report unavailable: {exc}") from None

    @app.get("/monitoring/drift", summary="Drift of the logged inputs and predictions against training")
    async def drift() -> Response:
        return _json(await drift_report())

    @app.get("/monitoring/retraining_trigger", summary="Whether drift recommends retraining")
    async def retraining_trigger() -> Response:
        from mlgraph.monitoring.drift import retraining_trigger as trigger

        return _json(trigger(await drift_report()))

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        if writer is not None:
            metrics.log_pending.set(writer.pending())
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return Guard(
        app,
        settings.max_body_bytes,
        metrics.observe,
        lambda: metrics.error("too_large"),
        lambda: holder.current.version if holder.current else None,
        direct,
    )
