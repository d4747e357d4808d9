"""Every kind of error an mlgraph HTTP service answers, in one table: its status, its default message and
the label the model service counts it under (`mlgraph_request_errors_total{kind=...}`).

Plain Python, no web framework: the model service's request core raises and returns `Refusal`s, its
FastAPI/ASGI wrapper turns them into responses in one place, and the dashboard answers its errors from the
same kinds. A new kind of error is a new row here, never a bare status code at a call site.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any


@dataclass(frozen=True)
class ErrorKind:
    name: str  # what the body's "error" says
    status: int
    message: str  # the detail when the refusal gives none; also what /docs says of the status
    metric: str | None  # the model service's error-counter label; None: not counted


MALFORMED_JSON = ErrorKind("malformed_json", 400, "the request body is not valid JSON", "malformed_json")
BAD_REQUEST = ErrorKind("bad_request", 400, "a query parameter is not one the page accepts", None)
UNAUTHORIZED = ErrorKind("unauthorized", 401, "authentication required", None)
FORBIDDEN = ErrorKind("forbidden", 403, "outside what this service may show", None)
NOT_FOUND = ErrorKind("not_found", 404, "no such resource", "not_found")
METHOD_NOT_ALLOWED = ErrorKind("method_not_allowed", 405, "this path does not take this method", "not_found")
TOO_LARGE = ErrorKind("too_large", 413, "body or row count over the limit", "too_large")
VALIDATION = ErrorKind("validation", 422, "invalid input: each error names its field", "validation")
INTERNAL = ErrorKind("internal", 500, "internal error; the server log has details under this request id", "internal")
NOT_READY = ErrorKind("not_ready", 503, "no model is being served", "not_ready")

# In table order: the first kind of a status is the one a bare HTTP error of that status maps to.
ERROR_KINDS: dict[str, ErrorKind] = {
    k.name: k
    for k in (
        MALFORMED_JSON,
        BAD_REQUEST,
        UNAUTHORIZED,
        FORBIDDEN,
        NOT_FOUND,
        METHOD_NOT_ALLOWED,
        TOO_LARGE,
        VALIDATION,
        INTERNAL,
        NOT_READY,
    )
}
_BY_STATUS: dict[int, ErrorKind] = {}
for _kind in ERROR_KINDS.values():
    _BY_STATUS.setdefault(_kind.status, _kind)
METRIC_LABELS: tuple[str, ...] = tuple(dict.fromkeys(k.metric for k in ERROR_KINDS.values() if k.metric))


def kind_for_status(status: int) -> ErrorKind:
    """The kind of a bare HTTP error (one a web framework raised): the table's, else an uncounted one."""
    known = _BY_STATUS.get(status)
    if known is not None:
        return known
    if status >= 500:
        return ErrorKind(INTERNAL.name, status, INTERNAL.message, INTERNAL.metric)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "client error"
    return ErrorKind("client", status, phrase, None)


class Refusal(Exception):
    """A request answered with an error of `kind` (its `detail`: the kind's message unless given).

    Raised inside a request's handling, returned by the model service's core, and turned into a response
    by each service in one place.
    """

    def __init__(self, kind: ErrorKind, detail: Any = None) -> None:
        super().__init__(kind.name)
        self.kind = kind
        self.detail = kind.message if detail is None else detail

    @property
    def status(self) -> int:
        return self.kind.status

    def __repr__(self) -> str:
        return f"Refusal({self.kind.name}, {self.detail!r})"
