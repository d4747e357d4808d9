"""Each experiment's live metric and its trend, from the last live_performance report (read-only).

The report (`artifacts/{experiment}/monitoring/live_performance.json`, written by the live_performance asset)
is reread only when its (mtime, size, inode) changes, bounded in bytes and only as a regular file inside
the drive, like the training signals; an unreadable one shows its reason in the cell, never breaks the page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from mlgraph.core.drive import DriveLayout
from mlgraph.core.untrusted import Unusable, read_regular_file
from mlgraph.dashboard.file_cache import StatCache

MAX_REPORT_BYTES = 16 << 20
SPARK = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class LiveMetric:
    experiment: str
    metric: str | None = None
    last: float | None = None
    change: float | None = None  # from the bucket before
    series: tuple[float, ...] = field(default_factory=tuple)  # the newest buckets, oldest first
    n_labelled: int = 0
    dropped: bool = False
    champion_test: float | None = None
    computed_at: str | None = None
    error: str | None = None

    def sparkline(self) -> str:
        if len(self.series) < 2:
            return ""
        low, high = min(self.series), max(self.series)
        span = high - low or 1.0
        return "".join(SPARK[round((v - low) / span * (len(SPARK) - 1))] for v in self.series)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse(experiment: str, data: bytes) -> LiveMetric:
    report = json.loads(data)
    trend, check = report.get("trend") or {}, report.get("performance") or {}
    series = tuple(v for v in (trend.get("series") or []) if _number(v) is not None)
    return LiveMetric(
        experiment,
        metric=str(trend.get("metric") or report.get("metric") or ""),
        last=_number(trend.get("last")),
        change=_number(trend.get("change")),
        series=series,
        n_labelled=int((report.get("join") or {}).get("labelled_predictions") or 0),
        dropped=bool(check.get("dropped")),
        champion_test=_number((report.get("champion") or {}).get("test")),
        computed_at=str(report.get("computed_at") or ""),
    )


class LiveCache:
    """Each experiment's parsed live_performance report, reread only when the file changes."""

    def __init__(self) -> None:
        self._files: StatCache[LiveMetric] = StatCache(follow_symlinks=False)

    def read(self, drive: DriveLayout, experiment: str) -> LiveMetric | None:
        path = drive.live_performance_json(experiment)

        def parsed() -> LiveMetric:
            try:
                return parse(experiment, read_regular_file(path, MAX_REPORT_BYTES, drive.root_path))
            except (Unusable, ValueError, TypeError, AttributeError) as exc:
                return LiveMetric(experiment, error=f"{path.name}: {exc}")

        return self._files.get(path, parsed)
