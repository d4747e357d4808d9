"""The outermost layer of every request, and the only ASGI code between the server and the request core
(pure ASGI, so it costs microseconds): a request id, the body limit (the declared Content-Length and the
bytes actually streamed, since either may lie or be absent), the latency histogram, the version header,
and the dispatch of the routes in mlgraph.serving.core.ROUTES straight to the core. Any other path (the docs,
a 404 or 405) goes to the FastAPI app.

`refusal_response` is the one place a refusal becomes an HTTP status and body, and is counted: the core's
refusals here, and FastAPI's errors through the app's exception handlers. Every body is strict JSON: an answer
holding NaN or Infinity is refused (500), never written.

A body over the limit is answered 413 and the connection closed, after reading and discarding the rest of
the body (a lingering close, bounded by DRAIN_FACTOR times the limit and DRAIN_SECONDS): closing a socket with
unread bytes in it makes the kernel send a reset, and a client still writing its body would then lose the 413.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException

from mlgraph.core.http_errors import INTERNAL, MALFORMED_JSON, TOO_LARGE, Refusal
from mlgraph.serving.core import Answer, Route, ServiceCore, body_too_large
from mlgraph.serving.metrics import ServiceMetrics

REQUEST_ID_HEADER = "x-request-id"
MODEL_VERSION_HEADER = "x-model-version"
_REQUEST_ID = REQUEST_ID_HEADER.encode()
_MODEL_VERSION = MODEL_VERSION_HEADER.encode()
_JSON = b"application/json"
# Built once, not per call; allow_nan=False: `NaN` and `Infinity` are not JSON, and a client's parser may reject them.
_ENCODE = json.JSONEncoder(separators=(",", ":"), default=str, allow_nan=False).encode
DRAIN_FACTOR = 8  # the rest of an oversize body is read and discarded up to this many times the limit ...
DRAIN_SECONDS = 5.0  # ... and for at most this long, before the 413 and the close
LOG = logging.getLogger("mlgraph.serving")


def new_request_id() -> str:
    """32 random hex digits (128 bits, as uuid4().hex, without building a UUID: a quarter of the cost)."""
    return os.urandom(16).hex()


def dumps(body: Any) -> bytes:
    return _ENCODE(body).encode()


def error_body(kind: str, detail: Any, request_id: str) -> bytes:
    """Every error the service answers: {"error": kind, "detail": ..., "request_id": ...}, never a traceback."""
    return dumps({"error": kind, "detail": detail, "request_id": request_id})


def refusal_response(refusal: Refusal, request_id: str, metrics: ServiceMetrics) -> tuple[int, bytes]:
    """(HTTP status, JSON body) of a refusal, counted under its kind's metric label."""
    metrics.refused(refusal.kind)
    return refusal.kind.status, error_body(refusal.kind.name, refusal.detail, request_id)


class BodyTooLarge(HTTPException):
    """Raised while a body streams into FastAPI, which passes HTTPExceptions from body reading through unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(TOO_LARGE.status, body_too_large(limit).detail)


def request_id(request: Any) -> str:
    return request.scope.get("state", {}).get("request_id", "")


class Guard:
    """The service's ASGI app: `core`'s routes directly, everything else through `app` (FastAPI)."""

    def __init__(
        self,
        app: Any,
        core: ServiceCore,
        max_body_bytes: int,
        observe: Callable[[str, float], None],
        version: Callable[[], str | None],
        drain_seconds: float = DRAIN_SECONDS,
    ) -> None:
        self.app, self.core, self.max_body_bytes = app, core, max_body_bytes
        self.observe, self.version = observe, version
        self.drain_bytes, self.drain_seconds = DRAIN_FACTOR * max_body_bytes, drain_seconds
        self.routes = core.routes_by_key

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        try:
            try:
                declared = next((int(v) for k, v in scope["headers"] if k == b"content-length"), None)
            except ValueError:
                declared = None  # not a number: the streamed count still applies
            if declared is not None and declared > self.max_body_bytes:
                # A client waiting for "100 Continue" has sent no body; past the bound draining is pointless.
                waiting = any(k == b"expect" and v.lower() == b"100-continue" for k, v in scope["headers"])
                if declared <= self.drain_bytes and not waiting:
                    await self._drain(receive, 0)
                await self._send(send, body_too_large(self.max_body_bytes), rid, close=True)
                return
            route = self.routes.get((scope["method"], scope["path"]))
            if route is None:
                await self._fallback(scope, receive, send, rid)
            else:
                await self._answer(route, receive, send, rid)
        finally:
            self.observe(scope["path"], time.perf_counter() - start)

    def endpoint(self, route: Route) -> _Endpoint:
        """`route` as an ASGI endpoint, for FastAPI to register."""
        return _Endpoint(self, route)

    async def dispatch(self, route: Route, scope: dict, receive: Callable, send: Callable) -> None:
        """`route` answered through FastAPI (a HEAD, or the bare app without the guard)."""
        rid = scope.get("state", {}).get("request_id") or new_request_id()  # __call__ sets it; the bare app may not
        await self._answer(route, receive, send, rid)

    async def _answer(self, route: Route, receive: Callable, send: Callable, rid: str) -> None:
        try:
            body = await self._read(receive)
        except Refusal as refusal:
            await self._send(send, refusal, rid, close=refusal.kind is TOO_LARGE)
            return
        await self._send(send, await self.core.respond(route, body, rid), rid)

    async def _read(self, receive: Callable) -> bytes:
        limit, chunks, received = self.max_body_bytes, [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise Refusal(MALFORMED_JSON, "the client disconnected before the body ended")
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                if message.get("more_body", False):
                    await self._drain(receive, received)
                raise body_too_large(limit)
            if not message.get("more_body", False):
                if not chunks:
                    return chunk  # the whole body in one message: no copy
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)

    async def _drain(self, receive: Callable, received: int) -> None:
        """Read and discard the rest of a refused body: until it ends, the client leaves, `drain_bytes` have
        arrived in all, or `drain_seconds` have passed (then the close may reset the connection)."""
        try:
            async with asyncio.timeout(self.drain_seconds):
                while received <= self.drain_bytes:
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    received += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return
        except TimeoutError:
            LOG.info("an oversize body was still arriving after %.1f s; closing the connection", self.drain_seconds)

    async def _send(self, send: Callable, outcome: Answer | Refusal, rid: str, close: bool = False) -> None:
        if isinstance(outcome, Answer):
            try:
                body = outcome.body if isinstance(outcome.body, bytes) else dumps(outcome.body)
            except ValueError as exc:  # NaN or Infinity somewhere in the answer
                LOG.error("request %s: the answer is not JSON (%s); refused", rid, exc)
                outcome = Refusal(
                    INTERNAL, "the answer held a non-finite number (NaN or Infinity), which JSON cannot carry"
                )
        if isinstance(outcome, Answer):
            status, version = outcome.status, outcome.model_version
            content_type = _JSON if outcome.content_type == "application/json" else outcome.content_type.encode()
        else:
            status, body = refusal_response(outcome, rid, self.core.metrics)
            version, content_type = None, _JSON
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (_REQUEST_ID, rid.encode()),
        ]
        if version or (version := self.version()):
            headers.append((_MODEL_VERSION, version.encode()))
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _fallback(self, scope: dict, receive: Callable, send: Callable, rid: str) -> None:
        limit, received = self.max_body_bytes, 0

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tagged_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = {k for k, _ in headers}  # a route FastAPI passed to `dispatch` (HEAD) has both already
                if _REQUEST_ID not in names:
                    headers.append((_REQUEST_ID, rid.encode()))
                if _MODEL_VERSION not in names and (v := self.version()):
                    headers.append((_MODEL_VERSION, v.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, counted_receive, tagged_send)


class _Endpoint:
    """An ASGI app, not a function: Starlette then passes it (scope, receive, send) as they are."""

    def __init__(self, guard: Guard, route: Route) -> None:
        self.guard, self.route = guard, route

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await self.guard.dispatch(self.route, scope, receive, send)
