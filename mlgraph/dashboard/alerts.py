"""Open alerts for the page, from `mlgraph.ops.alerts.read_open_alerts` (the alert log's one reader)."""

from __future__ import annotations

from mlgraph.core.drive import DriveLayout

_MAX_OPEN = 200
TRUNCATED_KEY = "alerts-not-shown"


def open_alerts(drive: DriveLayout, limit: int = _MAX_OPEN) -> list[dict]:
    """Critical first, then newest first; every open critical alert, and warnings up to `limit` in all.

    What does not fit is one last line that says how many and where to see them (`hidden`: the count).
    Never raises: a broken alert log must not take the page down.
    """
    try:
        # Lazy: the dashboard starts, and shows why, even if the alerting module cannot load.
        from mlgraph.ops.alerts import read_open_alerts

        alerts = list(read_open_alerts(drive))  # in display order: critical first
    except Exception as exc:
        return [
            {
                "time": "",
                "kind": "dashboard",
                "key": "alerts-unreadable",
                "severity": "warning",
                "message": f"{drive.alerts_jsonl()}: cannot read alerts ({type(exc).__name__}: {exc})",
            }
        ]
    critical = sum(a.get("severity") == "critical" for a in alerts)
    shown = alerts[: max(limit, critical)]
    hidden = len(alerts) - len(shown)
    if hidden:
        shown.append(
            {
                "time": "",
                "kind": "dashboard",
                "key": TRUNCATED_KEY,
                "severity": "warning",
                "hidden": hidden,
                "message": f"{hidden} more open warning(s) not shown here (oldest first to go); "
                "`mlgraph alerts list` prints every open alert",
            }
        )
    return shown
