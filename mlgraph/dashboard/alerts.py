"""Open alerts for the page, from `mlgraph.ops.alerts.read_open_alerts` (the alert log's one reader)."""

from __future__ import annotations

from mlgraph.core.drive import DriveLayout

_MAX_OPEN = 200


def open_alerts(drive: DriveLayout) -> list[dict]:
    """Newest first, at most _MAX_OPEN; never raises (a broken alert log must not take the page down)."""
    try:
        # Lazy: the dashboard starts, and shows why, even if the alerting module cannot load.
        from mlgraph.ops.alerts import read_open_alerts

        alerts = list(read_open_alerts(drive))
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
    return alerts[:_MAX_OPEN]
