"""The outermost layer of every request (pure ASGI, so it costs microseconds): a request id, the body
limit (the declared Content-Length and the bytes actually streamed, since either may lie or be absent),
the latency histogram, the version header, and the direct dispatch of the prediction routes."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException

REQUEST_ID_HEADER = "x-request-id"
MODEL_VERSION_HEADER = "x-model-version"
_ENCODE = json.JSONEncoder(separators=(",", ":"), default=str).encode  # built once, not per call


def dumps(body: Any) -> bytes:
    return _ENCODE(body).encode()


def error_body(kind: str, detail: Any, request_id: str) -> bytes:
    """Every error the service answers: {"error": kind, "detail": ..., "request_id": ...}, never a traceback."""
    return dumps({"error": kind, "detail": detail, "request_id": request_id})


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes HTTPExceptions from body reading through unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes. Fix: send fewer rows per request.")


def request_id(request: Any) -> str:
    return request.scope.get("state", {}).get("request_id", "")


class Guard:
    def __init__(
        self,
        app: Any,
        max_body_bytes: int,
        observe: Callable[[str, float], None],
        too_large: Callable[[], None],
        version: Callable[[], str | None],
        direct: dict[tuple[str, str], Any] | None = None,
    ) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes
        self.observe, self.too_large, self.version = observe, too_large, version
        # (method, path) → ASGI endpoint called without the framework's middleware and routing: the
        # prediction routes, which handle their own errors (half the per-request cost otherwise).
        self.direct = direct or {}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        limit = self.max_body_bytes
        try:
            declared = next((int(v) for k, v in scope["headers"] if k == b"content-length"), None)
        except ValueError:
            declared = None  # not a number: the streamed count below still applies
        if declared is not None and declared > limit:
            await self._refuse(send, rid, BodyTooLarge(limit).detail)
            self.observe(scope["path"], time.perf_counter() - start)
            return
        received = 0

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
                headers.append((REQUEST_ID_HEADER.encode(), rid.encode()))
                if not any(k == MODEL_VERSION_HEADER.encode() for k, _ in headers) and (v := self.version()):
                    headers.append((MODEL_VERSION_HEADER.encode(), v.encode()))
                message["headers"] = headers
            await send(message)

        target = self.direct.get((scope["method"], scope["path"]), self.app)
        try:
            await target(scope, counted_receive, tagged_send)
        finally:
            self.observe(scope["path"], time.perf_counter() - start)

    async def _refuse(self, send: Callable, rid: str, detail: str) -> None:
        self.too_large()
        body = error_body("too_large", detail, rid)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (REQUEST_ID_HEADER.encode(), rid.encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
