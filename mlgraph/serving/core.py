"""The service's request core, free of any web framework: (method, path, body bytes, request id) in, an
`Answer` or a `Refusal` out (`ServiceCore.handle`). The ASGI wrapper (mlgraph/serving/guard.py) reads the
body, calls the core and writes what it returns; FastAPI (mlgraph/serving/app.py) only adds /docs and the
lifespan. Every route is a named `Route` in `ROUTES`, which the wrapper dispatches, FastAPI registers and
/docs describes.

Prediction answers: 200 with the outputs, the request id and the version of the model that answered (read
once: hot reload cannot switch models mid-request); refusals, by kind (mlgraph.core.http_errors): malformed
JSON, too large (bytes or rows), validation (naming each field, at most MAX_ERRORS_SHOWN), not ready, and a
generic internal error for anything unexpected. Only a 200 is logged, after the prediction succeeded. The body
is parsed and validated in one step by pydantic-core (`model_validate_json`) against the models
mlgraph/serving/schema.py builds.

Requests small enough to predict on the event loop are batched with the others of the same loop turn into
one model call (mlgraph/serving/batching.py); larger ones run alone in the thread pool.

Delayed labels (issue 22): every prediction has an id its client gets back, `request_id` for /predict and
`prediction_ids` (one `<request_id>-<row>` per row, mlgraph.monitoring.labels.prediction_id) for
/batch_predict; the log keeps the request id and row they are made of. `POST /feedback` takes
`{"labels": [{"request_id": …, "label": …, "time": …?}, …]}`: a label of the wrong type (not one of the
served model's classes, a non-finite or non-numeric regression value) refuses the whole request 422 naming
`labels.<i>.label`, so nothing is half-stored; duplicate ids (the last wins) and ids this service never
gives are counted in the answer, never refused. Valid labels go to the labels store in one locked append
(mlgraph.monitoring.labels.append_labels), off the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from anyio.to_thread import run_sync
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, create_model

from mlgraph.core.experiment import ExperimentConfig
from mlgraph.core.http_errors import (
    INTERNAL,
    MALFORMED_JSON,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    NOT_READY,
    TOO_LARGE,
    VALIDATION,
    ErrorKind,
    Refusal,
)
from mlgraph.core.untrusted import Unusable
from mlgraph.monitoring.labels import SOURCE_FEEDBACK, append_labels, feedback_batch, label_problem, prediction_id
from mlgraph.serving.batching import Coalescer
from mlgraph.serving.log_writer import Entry, LogFull, PredictionLogWriter
from mlgraph.serving.metrics import ServiceMetrics
from mlgraph.serving.model import LoadedModel, NonFiniteOutput
from mlgraph.serving.reload import ModelHolder
from mlgraph.serving.schema import batch_model, response_models, row_model
from mlgraph.serving.settings import DEFAULT_MAX_STRING_LENGTH

LOG = logging.getLogger("mlgraph.serving")
JSON = "application/json"
MAX_ERRORS_SHOWN = 50


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful response: a JSON-able body (bytes go out as they are, as `content_type`)."""

    body: Any
    model_version: str | None = None  # the model that answered, when one did
    status: int = 200
    content_type: str = JSON


def body_too_large(limit: int) -> Refusal:
    return Refusal(TOO_LARGE, f"request body larger than {limit} bytes. Fix: send fewer rows per request.")


def field_name(loc: tuple) -> str:
    """A validation error's location as the client wrote it: `minutes_watched`, `rows.3.age`."""
    parts = [str(p) for p in loc]
    return ".".join(parts[1:] if parts and parts[0] == "body" else parts) or "body"


def validation_refusal(errors: list[dict[str, Any]]) -> Refusal:
    """pydantic's errors as the client sees them: malformed JSON, or each invalid field (a bounded list)."""
    bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad_json is not None:
        reason = (bad_json.get("ctx") or {}).get("error", "not JSON")
        return Refusal(MALFORMED_JSON, f"request body is not valid JSON: {reason}")
    detail = [
        {"field": field_name(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors[:MAX_ERRORS_SHOWN]
    ]
    if len(errors) > MAX_ERRORS_SHOWN:  # a 10,000-row batch of one wrong column must not answer megabytes
        detail.append(
            {"field": None, "message": f"{len(errors) - MAX_ERRORS_SHOWN} more errors not shown", "type": "truncated"}
        )
    return Refusal(VALIDATION, detail)


class ServiceCore:
    """What every request needs: the served model, the metrics, the log writer, the limits and the schema."""

    def __init__(
        self,
        holder: ModelHolder,
        metrics: ServiceMetrics,
        writer: PredictionLogWriter | None,
        config: ExperimentConfig,
        drive: Any,
        *,
        max_body_bytes: int,
        max_rows: int,
        max_string_length: int = DEFAULT_MAX_STRING_LENGTH,
        max_batch_rows: int | None = None,
    ) -> None:
        self.holder, self.metrics, self.writer = holder, metrics, writer
        self.config, self.drive, self.spec = config, drive, holder.spec
        self.max_body_bytes, self.max_rows = max_body_bytes, max_rows
        self.classifier = self.spec.task == "classification"
        row = row_model(self.spec, max_string_length)
        one, many = response_models(self.spec)
        many = create_model(  # the batch answer names each row's prediction id (what /feedback takes)
            "BatchPredictResponse",
            __base__=many,
            prediction_ids=(list[str], Field(description="One id per row, in row order: `<request_id>-<row>`")),
        )
        # Route.request / Route.response name these (the request and response schemas /docs shows).
        self.models: dict[str, type[BaseModel]] = {
            "row": row,
            "batch": batch_model(row, max_rows),
            "one": one,
            "many": many,
            **feedback_models(max_rows),
        }
        self.coalescer = Coalescer(max_batch_rows)
        metrics.watch_batching(self.coalescer)
        self.routes = ROUTES
        self.routes_by_key = {(r.method, r.path): r for r in ROUTES}  # the wrapper dispatches through it too

    async def handle(self, method: str, path: str, body: bytes, request_id: str) -> Answer | Refusal:
        """The answer to one request, given its whole body; never raises."""
        route = self.routes_by_key.get((method, path))
        if route is None:
            known = any(r.path == path for r in self.routes)
            return Refusal(METHOD_NOT_ALLOWED if known else NOT_FOUND, f"{method} {path}: no such route")
        return await self.respond(route, body, request_id)

    async def respond(self, route: Route, body: bytes, request_id: str) -> Answer | Refusal:
        """`route`'s answer to `body`, or the refusal; an unexpected failure is logged and refused as internal."""
        if len(body) > self.max_body_bytes:
            return body_too_large(self.max_body_bytes)
        try:
            return await route.handler(self, body, request_id)
        except Refusal as refusal:
            return refusal
        except NonFiniteOutput as exc:  # the model's fault, not the request's: a 500 that says so
            LOG.error("request %s: %s", request_id, exc)
            return Refusal(INTERNAL, str(exc))
        except Exception:  # never a traceback to the client; the log names the request
            LOG.exception("request %s failed", request_id)
            return Refusal(INTERNAL)

    def current(self) -> LoadedModel:
        model = self.holder.current
        if model is None:
            failure = self.holder.failure
            why = failure.error if failure else "the champion is still loading"
            raise Refusal(NOT_READY, f"no model is being served: {why}")
        return model

    async def _predict(self, body: bytes, request_id: str, batch: bool) -> Answer:
        try:
            payload = self.models["batch" if batch else "row"].model_validate_json(body)
        except ValidationError as exc:
            raise validation_refusal(exc.errors(include_url=False, include_input=False)) from None
        if batch:
            if len(payload.rows) > self.max_rows:
                raise Refusal(
                    TOO_LARGE,
                    f"{len(payload.rows)} rows, more than the limit of {self.max_rows}. Fix: split the batch.",
                )
            rows = payload.model_dump(by_alias=True)["rows"]  # one call into pydantic-core for all rows
        else:
            rows = [payload.model_dump(by_alias=True)]
        model = self.current()  # read once: this model answers the whole request
        if len(rows) <= model.inline_rows:  # measured at load: fast enough not to hold up the event loop
            outputs = await self.coalescer.predict(model, rows)  # with the other requests of this loop turn
        else:
            outputs = await run_sync(model.predict, rows)
        if self.writer is not None:
            try:  # a bounded queue: a prediction that cannot be logged is refused, never answered unlogged
                self.writer.submit(Entry(time.time(), request_id, model.version, rows, outputs, len(body)))
            except LogFull as full:
                raise Refusal(NOT_READY, f"prediction not logged, so not answered: {full}") from None
        self.metrics.predicted(
            [o["prediction"] for o in outputs] if self.classifier else ["value"] * len(outputs), model.version
        )
        answer = {"request_id": request_id, "model_version": model.version}
        if batch:
            answer["predictions"] = outputs
            answer["prediction_ids"] = [prediction_id(request_id, row, True) for row in range(len(outputs))]
        else:
            answer.update(outputs[0])
        return Answer(answer, model.version)

    async def predict(self, body: bytes, request_id: str) -> Answer:
        return await self._predict(body, request_id, batch=False)

    async def batch_predict(self, body: bytes, request_id: str) -> Answer:
        return await self._predict(body, request_id, batch=True)

    async def feedback(self, body: bytes, request_id: str) -> Answer:
        """Ground truth for earlier predictions: validated whole, then stored in one append (or refused whole)."""
        try:
            payload = self.models["feedback"].model_validate_json(body)
        except ValidationError as exc:
            raise validation_refusal(exc.errors(include_url=False, include_input=False)) from None
        if len(payload.labels) > self.max_rows:
            raise Refusal(
                TOO_LARGE, f"{len(payload.labels)} labels, more than the limit of {self.max_rows}. Fix: split them."
            )
        classes = self.current().classes if self.classifier else None  # the served model's classes
        errors = [
            {"loc": ("labels", i, "label"), "msg": problem, "type": "label_type"}  # pydantic's shape: one renderer
            for i, item in enumerate(payload.labels)
            if (problem := label_problem(item.label, self.spec.task, classes)) is not None
        ]
        if errors:
            raise validation_refusal(errors)
        batch = feedback_batch((item.request_id, item.label, item.time) for item in payload.labels)
        path = self.drive.labels_store_path(self.config.name)
        try:
            await run_sync(append_labels, path, batch, SOURCE_FEEDBACK, self.drive.root_path)
        except (Unusable, OSError) as exc:
            LOG.error("request %s: labels not stored in %s: %s", request_id, path, exc)
            raise Refusal(NOT_READY, f"labels not stored: {exc}") from None
        return Answer({"request_id": request_id, **batch.summary()})

    async def health(self, body: bytes, request_id: str) -> Answer:
        model, holder, writer = self.holder.current, self.holder, self.writer
        log = None if writer is None else writer.status().as_dict()
        return Answer(
            {
                "status": "ok" if log is None or log["healthy"] else "degraded",  # degraded: the log is failing
                "ready": model is not None,
                "experiment": self.config.name,
                "task": self.spec.task,
                "model_version": model.version if model else None,
                "model": model.describe() if model else None,
                "last_load_failure": holder.failure.describe() if holder.failure else None,
                "prediction_log": log,
                "request_id": request_id,
            }
        )

    async def ready(self, body: bytes, request_id: str) -> Answer:
        model = self.current()
        if self.writer is not None and not (log := self.writer.status()).healthy:
            raise Refusal(NOT_READY, f"the prediction log {log.path} cannot be written: {log.last_error}")
        return Answer(
            {"ready": True, "model_version": model.version, "runtime": model.runtime, "request_id": request_id}
        )

    async def _drift_report(self) -> dict[str, Any]:
        # The one drift implementation the drift_report asset and drift_sensor use (pandas/pyarrow: imported on use).
        from mlgraph.monitoring.drift import build_report

        # Every prediction answered before this call must be in the file the report reads (bounded wait).
        if self.writer is not None and not await run_sync(self.writer.flush):
            status = self.writer.status()
            raise Refusal(
                NOT_READY,
                f"drift report unavailable: {status.pending} logged predictions are not yet written to "
                f"{status.path} ({status.last_error or 'the writer is behind'})",
            )
        try:
            return await run_sync(build_report, self.drive, self.config)
        except (OSError, ValueError) as exc:  # a damaged baseline or log: the message names the file and the fix
            raise Refusal(NOT_READY, f"drift report unavailable: {exc}") from None

    async def drift(self, body: bytes, request_id: str) -> Answer:
        return Answer(await self._drift_report())

    async def retraining_trigger(self, body: bytes, request_id: str) -> Answer:
        from mlgraph.monitoring.drift import retraining_trigger as trigger

        return Answer(trigger(await self._drift_report()))

    async def prometheus(self, body: bytes, request_id: str) -> Answer:
        text, content_type = self.metrics.render()
        return Answer(text, content_type=content_type)


def feedback_models(max_labels: int) -> dict[str, type[BaseModel]]:
    """The /feedback request and answer (labels are checked against the task and classes after parsing)."""
    label = create_model(
        "FeedbackLabel",
        __config__=ConfigDict(extra="forbid"),
        request_id=(
            StrictStr,
            Field(max_length=1024, description="/predict's request_id, or one of /batch_predict's prediction_ids"),
        ),
        label=(Any, Field(description="The true class (classification) or value (regression, forecasting)")),
        time=(StrictStr | None, Field(None, max_length=64, description="When the label was established (kept)")),
    )
    labels = Annotated[list[label], Field(min_length=1, description=f"At most {max_labels} labels (more: 413).")]
    request = create_model("FeedbackRequest", __config__=ConfigDict(extra="forbid"), labels=(labels, ...))
    answer = create_model(
        "FeedbackResponse",
        request_id=(str, ...),
        accepted=(int, Field(description="Labels stored (one per id)")),
        duplicates=(int, Field(description="Labels replaced by a later one for the same id in this request")),
        unknown_ids=(int, Field(description="Ids this service never gives: counted, not stored")),
    )
    return {"feedback": request, "feedback_answer": answer}


Handler = Callable[[ServiceCore, bytes, str], Awaitable[Answer]]
PREDICTION_REFUSALS = (MALFORMED_JSON, TOO_LARGE, VALIDATION, NOT_READY, INTERNAL)


@dataclass(frozen=True)
class Route:
    """One endpoint of the service: dispatched by the ASGI wrapper, registered with FastAPI, shown in /docs."""

    name: str  # the route's name in FastAPI (url_path_for) and its operationId in /docs
    method: str
    path: str
    summary: str
    handler: Handler
    request: str | None = None  # ServiceCore.models key of the JSON body it takes
    response: str | None = None  # ServiceCore.models key of its 200 body
    refusals: tuple[ErrorKind, ...] = (INTERNAL,)  # the error kinds it may answer (for /docs)


ROUTES: tuple[Route, ...] = (
    Route("predict", "POST", "/predict", "Predict one row", ServiceCore.predict, "row", "one", PREDICTION_REFUSALS),
    Route(
        "batch_predict",
        "POST",
        "/batch_predict",
        "Predict many rows",
        ServiceCore.batch_predict,
        "batch",
        "many",
        PREDICTION_REFUSALS,
    ),
    Route(
        "feedback",
        "POST",
        "/feedback",
        "Ground truth for earlier predictions, by prediction id",
        ServiceCore.feedback,
        "feedback",
        "feedback_answer",
        PREDICTION_REFUSALS,
    ),
    Route("health", "GET", "/health", "Liveness, and which model is served", ServiceCore.health),
    Route(
        "ready",
        "GET",
        "/ready",
        "200 once a gated model is loaded, else 503",
        ServiceCore.ready,
        refusals=(NOT_READY, INTERNAL),
    ),
    Route(
        "drift",
        "GET",
        "/monitoring/drift",
        "Drift of the logged inputs and predictions against training",
        ServiceCore.drift,
        refusals=(NOT_READY, INTERNAL),
    ),
    Route(
        "retraining_trigger",
        "GET",
        "/monitoring/retraining_trigger",
        "Whether drift recommends retraining",
        ServiceCore.retraining_trigger,
        refusals=(NOT_READY, INTERNAL),
    ),
    Route("metrics", "GET", "/metrics", "Prometheus metrics", ServiceCore.prometheus),
)
