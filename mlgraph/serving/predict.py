"""/predict and /batch_predict as plain ASGI endpoints: the hot path, without FastAPI's per-request
dependency machinery (which cost more than the model). The body is parsed and validated in one step
by pydantic-core (`model_validate_json`) against the models mlgraph/serving/schema.py builds; /docs still
shows them (mlgraph/serving/openapi.py).

Answers: 200 with the outputs, the request id and the version of the model that answered (read once:
hot reload cannot switch models mid-request); 400 malformed JSON; 413 too large (bytes or rows);
422 invalid, naming each field; 503 no model; 500 with a generic body for anything unexpected. Only a
200 is logged, after the prediction succeeded.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from mlgraph.serving.guard import MODEL_VERSION_HEADER, BodyTooLarge, dumps, error_body
from mlgraph.serving.log_writer import Entry, PredictionLogWriter
from mlgraph.serving.metrics import ServiceMetrics
from mlgraph.serving.reload import ModelHolder

LOG = logging.getLogger("mlgraph.serving")
INTERNAL = "internal error; the server log has details under this request id"
MAX_ERRORS_SHOWN = 50


class Refused(Exception):
    def __init__(self, status: int, kind: str, detail: Any) -> None:
        super().__init__(kind)
        self.status, self.kind, self.detail = status, kind, detail


def field_name(loc: tuple) -> str:
    """A validation error's location as the client wrote it: `minutes_watched`, `rows.3.age`."""
    parts = [str(p) for p in loc]
    return ".".join(parts[1:] if parts and parts[0] == "body" else parts) or "body"


def validation_refusal(errors: list[dict[str, Any]]) -> Refused:
    bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad_json is not None:
        reason = (bad_json.get("ctx") or {}).get("error", "not JSON")
        return Refused(400, "malformed_json", f"request body is not valid JSON: {reason}")
    detail = [
        {"field": field_name(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors[:MAX_ERRORS_SHOWN]
    ]
    if len(errors) > MAX_ERRORS_SHOWN:  # a 10,000-row batch of one wrong column must not answer megabytes
        detail.append(
            {"field": None, "message": f"{len(errors) - MAX_ERRORS_SHOWN} more errors not shown", "type": "truncated"}
        )
    return Refused(422, "validation", detail)


class PredictEndpoint:
    """One of the two prediction routes (`batch`: a {"rows": [...]} body, else one row)."""

    def __init__(
        self,
        holder: ModelHolder,
        metrics: ServiceMetrics,
        writer: PredictionLogWriter | None,
        body_model: type[BaseModel],
        batch: bool,
        max_rows: int,
    ) -> None:
        self.holder, self.metrics, self.writer = holder, metrics, writer
        self.body_model, self.batch, self.max_rows = body_model, batch, max_rows
        self.classifier = holder.spec.task == "classification"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        rid = scope.get("state", {}).get("request_id") or uuid.uuid4().hex  # Guard sets it; the bare app may not
        headers = [(b"content-type", b"application/json")]
        try:
            version, body = await self._answer(receive, rid)
            status = 200
            headers.append((MODEL_VERSION_HEADER.encode(), version.encode()))
        except Refused as refused:
            self.metrics.error(refused.kind)
            status, body = refused.status, error_body(refused.kind, refused.detail, rid)
        except Exception:  # never a traceback to the client; the log names the request
            LOG.exception("request %s failed", rid)
            self.metrics.error("internal")
            status, body = 500, error_body("internal", INTERNAL, rid)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _read(self, receive: Any) -> bytes:
        chunks = []
        while True:
            try:
                message = await receive()
            except BodyTooLarge as exc:
                raise Refused(413, "too_large", exc.detail) from None
            if message["type"] != "http.request":
                raise Refused(400, "malformed_json", "the client disconnected before the body ended")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _answer(self, receive: Any, rid: str) -> tuple[str, bytes]:
        raw = await self._read(receive)
        try:
            payload = self.body_model.model_validate_json(raw)
        except ValidationError as exc:
            raise validation_refusal(exc.errors(include_url=False, include_input=False)) from None
        if self.batch:
            if len(payload.rows) > self.max_rows:
                raise Refused(
                    413,
                    "too_large",
                    f"{len(payload.rows)} rows, more than the limit of {self.max_rows}. Fix: split the batch.",
                )
            rows = payload.model_dump(by_alias=True)["rows"]  # one call into pydantic-core for all rows
        else:
            rows = [payload.model_dump(by_alias=True)]
        model = self.holder.current  # read once: this model answers the whole request
        if model is None:
            failure = self.holder.failure
            raise Refused(
                503,
                "not_ready",
                "no model is being served: " + (failure.error if failure else "the champion is still loading"),
            )
        if len(rows) <= model.inline_rows:  # measured at load: fast enough not to hold up the event loop
            outputs = model.predict(rows)
        else:
            outputs = await run_in_threadpool(model.predict, rows)
        self.metrics.predicted(
            [o["prediction"] for o in outputs] if self.classifier else ["value"] * len(outputs), model.version
        )
        if self.writer is not None:
            self.writer.submit(Entry(time.time(), rid, model.version, rows, outputs))
        answer = {"request_id": rid, "model_version": model.version}
        answer.update(outputs[0] if not self.batch else {"predictions": outputs})
        return model.version, dumps(answer)
