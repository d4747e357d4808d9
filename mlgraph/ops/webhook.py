"""POST one alert as JSON to the operator's webhook (Slack/Discord-compatible relays, custom receivers).

The URL comes from `$MLGRAPH_ALERT_WEBHOOK_URL` at call time. It often embeds a token, so it never
appears in a log line, an exception message or the alerts file: failures name only the host.
Delivery is best effort with a bounded timeout; it never raises (an alert is already on the drive).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from urllib.parse import urlsplit

WEBHOOK_URL_ENV = "MLGRAPH_ALERT_WEBHOOK_URL"
WEBHOOK_TIMEOUT_ENV = "MLGRAPH_ALERT_WEBHOOK_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_SECONDS = 5.0

log = logging.getLogger(__name__)


def webhook_url() -> str | None:
    return os.environ.get(WEBHOOK_URL_ENV, "").strip() or None


def redacted(url: str) -> str:
    """`scheme://host[:port]/…`: enough to tell which receiver failed, never the path or query (tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def post_alert(record: dict, url: str | None = None, timeout: float | None = None) -> bool:
    """POST `record` as JSON; True on a 2xx answer. Any failure is logged (host only) and returns False."""
    url = url or webhook_url()
    if not url:
        return False
    if timeout is None:
        timeout = float(os.environ.get(WEBHOOK_TIMEOUT_ENV) or DEFAULT_TIMEOUT_SECONDS)
    if urlsplit(url).scheme not in ("http", "https"):
        log.warning("alert webhook %s: only http(s) URLs are supported; alert not sent", redacted(url))
        return False
    body = json.dumps(record, sort_keys=True).encode("utf-8")
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "mlgraph-alerts"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            ok = 200 <= response.status < 300
            if not ok:
                log.warning("alert webhook %s answered HTTP %s", redacted(url), response.status)
            return ok
    except urllib.error.HTTPError as exc:
        log.warning("alert webhook %s answered HTTP %s", redacted(url), exc.code)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        # The reason of a URLError never holds the URL; str(exc) of some errors might, so only the type and reason.
        reason = getattr(exc, "reason", None) or type(exc).__name__
        log.warning("alert webhook %s unreachable: %s", redacted(url), reason)
    return False
