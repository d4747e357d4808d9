"""POST alerts as JSON to the operator's webhook (Slack/Discord-compatible relays, custom receivers).

The URL comes from `$MLGRAPH_ALERT_WEBHOOK_URL` at call time. It often embeds a token, so it never
appears in a log line, an exception message or the alerts file: failures name only the host.
Delivery is best effort with a bounded timeout; it never raises (an alert is already on the drive).

Callers inside a sensor tick never POST themselves: `submit` puts the alert on a bounded in-process
queue (QUEUE_LIMIT) that one background thread drains, so a slow or dead receiver never delays a
tick. What is not delivered is counted and logged, never silently lost: a POST that fails (`failed`),
an alert that finds the queue full (`dropped`), and at process exit whatever is still queued after
EXIT_FLUSH_SECONDS (`abandoned`). Every one of them is still a line in logs/alerts.jsonl.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

WEBHOOK_URL_ENV = "MLGRAPH_ALERT_WEBHOOK_URL"
WEBHOOK_TIMEOUT_ENV = "MLGRAPH_ALERT_WEBHOOK_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_SECONDS = 5.0
# At most this many alerts wait for the sender: with a dead receiver (5 s each) that is a backlog of
# over an hour, more than any real burst; beyond it an alert is dropped from the webhook (and counted).
QUEUE_LIMIT = 1000
# A short-lived process (`mlgraph alerts check` from cron) waits this long at exit for its alerts to go out.
EXIT_FLUSH_SECONDS = 15.0

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


class Sender:
    """A bounded queue of alerts and the one daemon thread that POSTs them, in order."""

    def __init__(self, limit: int = QUEUE_LIMIT):
        self.limit = limit
        self._guard = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.Queue[tuple[dict, str]] = queue.Queue(limit)
        self.sent = self.failed = self.dropped = self.abandoned = 0

    def _after_fork(self) -> None:
        # The parent's thread does not exist in a forked child, and its locks may have been held mid-fork.
        self._guard = threading.Lock()
        self._queue = queue.Queue(self.limit)
        self._pid = None

    def _started(self) -> queue.Queue[tuple[dict, str]]:
        with self._guard:
            if self._pid != os.getpid():
                thread = threading.Thread(
                    target=self._drain, args=(self._queue,), name="mlgraph-alert-webhook", daemon=True
                )
                thread.start()
                self._pid = os.getpid()
            return self._queue

    def submit(self, record: dict, url: str | None = None) -> bool:
        """Queue `record` for the webhook (read now from the environment); False when none is set or the queue is full."""
        url = url or webhook_url()
        if not url:
            return False
        pending = self._started()
        try:
            pending.put_nowait((record, url))
        except queue.Full:
            with self._guard:
                self.dropped += 1
                dropped = self.dropped
            log.warning(
                "alert webhook %s: %d alerts already wait to be sent; alert %s not sent (%d dropped so far). "
                "It is in logs/alerts.jsonl; check the receiver",
                redacted(url),
                self.limit,
                str(record.get("key"))[:200],
                dropped,
            )
            return False
        return True

    def _drain(self, pending: queue.Queue[tuple[dict, str]]) -> None:
        while True:
            record, url = pending.get()
            ok = False
            try:
                ok = post_alert(record, url)
            except Exception as exc:  # post_alert never raises; this thread must outlive a bug in it regardless
                log.warning("alert webhook %s: %s while sending; alert not sent", redacted(url), type(exc).__name__)
            finally:
                with self._guard:  # counted before task_done: a flush that returns sees the count
                    if ok:
                        self.sent += 1
                    else:
                        self.failed += 1
                pending.task_done()

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until every queued alert was tried; True when none is left."""
        pending = self._queue
        deadline = time.monotonic() + timeout
        with pending.all_tasks_done:
            while pending.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                pending.all_tasks_done.wait(remaining)
        return True

    def stats(self) -> dict[str, int]:
        with self._guard:
            return {
                "queued": self._queue.unfinished_tasks,
                "sent": self.sent,
                "failed": self.failed,
                "dropped": self.dropped,
                "abandoned": self.abandoned,
            }

    def close(self, timeout: float = EXIT_FLUSH_SECONDS) -> None:
        """At exit: give queued alerts `timeout` seconds, then log how many stay unsent."""
        if self.flush(timeout):
            return
        left = self._queue.unfinished_tasks
        with self._guard:
            self.abandoned += left
        log.warning("alert webhook: %d alerts not sent before exit (they are in logs/alerts.jsonl)", left)


SENDER = Sender()
atexit.register(SENDER.close)
os.register_at_fork(after_in_child=SENDER._after_fork)


def submit(record: dict) -> bool:
    """Queue `record` for the webhook without waiting for it (see Sender)."""
    return SENDER.submit(record)


def flush(timeout: float = EXIT_FLUSH_SECONDS) -> bool:
    return SENDER.flush(timeout)


def stats() -> dict[str, int]:
    return SENDER.stats()
