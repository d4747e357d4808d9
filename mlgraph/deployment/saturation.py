"""The rate sweep: open-loop replays (mlgraph.deployment.loadgen) at rising rates until the service misses its SLO.

Rates step up geometrically from `start_rps` while the SLO holds, then bisect (geometric mean) between the
last passing and the first failing rate; a failing step is tried once more before it counts (`retries`).
A step misses the SLO when its open-loop p99 is over `p99_ms`, its achieved rate is below 95 % of the
offered rate, or any request failed. The saturation point is the largest rate that met it. The curve is written as CSV and PNG (matplotlib, imported on use).
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlgraph.deployment.loadgen import DEFAULT_TIMEOUT_S, Endpoint, replay

MIN_ACHIEVED_SHARE = 0.95  # a step whose achieved rate is below this share of the offered rate saturated


@dataclass(frozen=True)
class SLO:
    """The service level a rate must meet: p99 latency (open loop) and the throughput the service must reach."""

    p99_ms: float
    min_rps: float

    def as_dict(self) -> dict[str, float]:
        return {"p99_ms": self.p99_ms, "min_rps": self.min_rps}


def step_verdict(summary: Mapping[str, Any], slo: SLO) -> str:
    """Why a replay step missed the SLO ('' when it met it)."""
    reasons = []
    if summary["errors"]:
        reasons.append("errors " + ", ".join(f"{k}: {v}" for k, v in summary["errors"].items()))
    p99 = summary["latency_ms"]["p99_ms"]
    if p99 is None or p99 > slo.p99_ms:
        reasons.append(f"p99 {p99} ms > {slo.p99_ms:g} ms")
    if summary["achieved_rps"] < MIN_ACHIEVED_SHARE * summary["offered_rps"]:
        reasons.append(
            f"achieved {summary['achieved_rps']:.0f}/s < {MIN_ACHIEVED_SHARE:.0%} of offered {summary['offered_rps']:.0f}/s"
        )
    return "; ".join(reasons)


@dataclass(frozen=True)
class SweepSettings:
    start_rps: float = 250.0
    factor: float = 1.5  # geometric step while the SLO holds
    max_rps: float = 20_000.0  # stop here even if the SLO still holds (saturation is then "at least" this)
    step_seconds: float = 3.0
    refine_steps: int = 2  # bisections (geometric mean) between the last passing and the first failing rate
    connections: int = 32  # enough that the client pool is not the limit: 32 / 8 ms = 4,000 req/s
    timeout: float = DEFAULT_TIMEOUT_S
    pause_seconds: float = 0.3  # lets the server drain one step's backlog before the next
    # A failing step is run once more before it counts: saturation is sustained, and on a shared machine
    # one second can miss the p99 for a reason that has nothing to do with the service (another process).
    retries: int = 1
    warmup_seconds: float = 1.0  # a first replay at start_rps, not recorded: a fresh service's first requests are slow

    def rates(self) -> Iterable[float]:
        rate = self.start_rps
        while rate <= self.max_rps * (1 + 1e-9):
            yield round(rate, 1)
            rate *= self.factor


@dataclass
class Sweep:
    slo: SLO
    settings: SweepSettings
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def saturation_rps(self) -> float:
        """The largest offered rate that met the SLO (0 when none did)."""
        return max((s["offered_rps"] for s in self.steps if s["passed"]), default=0.0)

    @property
    def saturated(self) -> bool:
        """Whether some step failed (otherwise the service met the SLO up to max_rps)."""
        return any(not s["passed"] and not s.get("retried") for s in self.steps)

    @property
    def meets_slo(self) -> bool:
        return self.saturation_rps >= self.slo.min_rps

    def summary(self) -> dict[str, Any]:
        return {
            "slo": self.slo.as_dict(),
            "saturation_rps": self.saturation_rps,
            "saturated": self.saturated,
            "meets_slo": self.meets_slo,
            "steps": len(self.steps),
            "settings": {
                k: getattr(self.settings, k) for k in ("start_rps", "factor", "max_rps", "step_seconds", "refine_steps")
            },
        }


def run_sweep(
    endpoint: Endpoint,
    requests: Sequence[bytes],
    slo: SLO,
    settings: SweepSettings = SweepSettings(),
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> Sweep:
    """Step the offered rate up until a step misses `slo`, then bisect; each step is one open-loop replay."""
    sweep = Sweep(slo, settings)

    def step(rate: float) -> bool:
        for attempt in range(1 + settings.retries):
            summary = replay(endpoint, requests, rate, settings.step_seconds, settings.connections, settings.timeout)
            summary = summary.summary()
            reason = step_verdict(summary, slo)
            retried = bool(reason) and attempt < settings.retries
            row = {
                **summary,
                "passed": not reason,
                "reason": reason + (" (tried again)" if retried else ""),
                "retried": retried,
            }
            sweep.steps.append(row)
            if on_step is not None:
                on_step(row)
            time.sleep(settings.pause_seconds)
            if not reason:
                return True
        return False

    if settings.warmup_seconds > 0:
        replay(endpoint, requests, settings.start_rps, settings.warmup_seconds, settings.connections, settings.timeout)
        time.sleep(settings.pause_seconds)
    passed, failed = 0.0, None
    for rate in settings.rates():
        if not step(rate):
            failed = rate
            break
        passed = rate
    if failed is not None and passed > 0:
        for _ in range(settings.refine_steps):
            middle = round(math.sqrt(passed * failed), 1)
            if step(middle):
                passed = middle
            else:
                failed = middle
    return sweep


CURVE_COLUMNS = [
    "offered_rps",
    "achieved_rps",
    "ok",
    "errors",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p99_9_ms",
    "max_ms",
    "queue_delay_p99_ms",
    "passed",
    "reason",
]


def curve_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per step, by offered rate: the throughput–latency curve."""
    rows = []
    for s in sorted(sweep.steps, key=lambda s: s["offered_rps"]):
        lat = s["latency_ms"]
        rows.append(
            {
                "offered_rps": s["offered_rps"],
                "achieved_rps": s["achieved_rps"],
                "ok": s["ok"],
                "errors": sum(s["errors"].values()),
                **{k: lat[k] for k in ("p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms")},
                "queue_delay_p99_ms": s["queue_delay_ms"]["p99_ms"],
                "passed": s["passed"],
                "reason": s["reason"],
            }
        )
    return rows


def write_curve_csv(sweep: Sweep, path: Path) -> Path:
    from mlgraph.core.atomic import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CURVE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(curve_rows(sweep))
    atomic_write_text(path, buffer.getvalue())
    return path


def curve_plot(sweep: Sweep, path: Path, title: str, previous: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Latency percentiles and achieved rate against offered rate, the SLO and the saturation point marked;
    `previous` (curve rows of the previous champion) drawn dashed beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlgraph.core.atomic import atomic_write_bytes

    rows = [r for r in curve_rows(sweep) if not r["reason"].endswith("(tried again)")]  # one point per rate
    x = [r["offered_rps"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for key, style in (("p50_ms", "o-"), ("p99_ms", "s-"), ("max_ms", "^:")):
        top.plot(x, [r[key] for r in rows], style, label=key.replace("_ms", ""))
    if previous:
        px = [float(r["offered_rps"]) for r in previous]
        top.plot(
            px,
            [float(r["p99_ms"]) if r["p99_ms"] not in ("", None) else math.nan for r in previous],
            "s--",
            color="grey",
            label="p99 (previous champion)",
        )
    top.axhline(sweep.slo.p99_ms, color="red", lw=0.8, label=f"SLO p99 {sweep.slo.p99_ms:g} ms")
    top.set_yscale("log")
    top.set_ylabel("latency from intended send (ms)")
    top.legend(fontsize=8)
    bottom.plot(x, [r["achieved_rps"] for r in rows], "o-", label="achieved")
    bottom.plot(x, x, ":", color="grey", label="offered")
    bottom.axvline(sweep.slo.min_rps, color="red", lw=0.8, label=f"SLO min {sweep.slo.min_rps:g}/s")
    if sweep.saturation_rps:
        for ax in (top, bottom):
            ax.axvline(sweep.saturation_rps, color="green", lw=0.8, ls="--")
        bottom.annotate(f"saturation {sweep.saturation_rps:,.0f}/s", (sweep.saturation_rps, 0), fontsize=8)
    bottom.set_xlabel("offered rate (requests/s)")
    bottom.set_ylabel("requests/s")
    bottom.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
