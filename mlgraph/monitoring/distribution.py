"""Distribution drift tests against a quantile sketch of the training data (issue 22): KS, Wasserstein, PSI, JS.

The mean rule (z in mlgraph/monitoring/drift.py) sees only a moved mean: a feature whose spread tripled
around an unchanged mean passes it. These tests compare whole distributions, without keeping a training
row: `drift_baseline` stores per numeric feature a *quantile sketch* (`quantile_sketch`): the training
values at evenly spaced probabilities 0, 1/(k-1), ..., 1 (k = 1001, fewer for small splits so that every
point summarizes at least `MIN_VALUES_PER_POINT` training values). Between its points the sketch is read
as linear (the quantile function numpy's default interpolation gives); tied points are atoms (an integer
or boolean feature's values).

Per numeric feature, the window's present values are sorted once (n log n; everything after is a
binary search of the sketch's k points into the window, or an interpolation on a fixed grid):

- `ks`: the two-sample Kolmogorov-Smirnov statistic D = sup |F_window - F_training|, the training CDF
  being the sketch's. Evaluated on both sides of every sketch point: within 1/(k-1) of the exact value
  (between two points both CDFs are monotone and the training one moves by 1/(k-1)). The p-value is
  scipy's asymptotic two-sample one (`kstwo.sf(D, round(n m / (n + m)))`, as `ks_2samp(method="asymp")`),
  m being the training count;
- `wasserstein`: W1 = integral over p of |Q_window(p) - Q_training(p)|, divided by the training standard
  deviation (Evidently's "normed" Wasserstein), by the midpoint rule on min(n, `WASSERSTEIN_GRID`) strips;
- `psi`: the population stability index over the training deciles (the sketch's values at 0.1 ... 0.9,
  the outer bins open, tied edges merged), shares clipped at `PSI_EPSILON` so an empty bin is finite.

Per categorical feature (the baseline's category shares, present in every baseline version):
`jensen_shannon`, the Jensen-Shannon distance (scipy, natural logarithm, as Evidently) between the
training shares and the window's, with the categories outside the baseline's top ones (or never seen)
pooled as one "other" category on both sides.

A distance between two samples of one distribution is not 0: it shrinks like 1/sqrt(n) (n the window's
values; with m training values, n m / (n + m)). A fixed threshold such as Evidently's 0.1 σ holds for large
samples only (Evidently switches to p-value tests at 1,000 rows), and a 200-prediction window would drift
on noise. So each distance flags at max(configured threshold, `noise_floor`), the value sampling alone
reaches about once in `1/NOISE_LEVEL` features: for PSI and JS from their chi-square approximations
(PSI ≈ 8·JSD ≈ χ²(cells - 1)·(1/n + 1/m)), for Wasserstein from measurement (`wasserstein_floor`). The
report shows both.

Every numeric test of a baseline without a sketch (version 1) is `UNAVAILABLE`, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mlgraph.core.experiment import DriftConfig

SKETCH_POINTS = 1001  # KS within 0.001 of exact; 20 features cost ~400 KB of JSON
MIN_SKETCH_POINTS = 101
SKETCH_BUDGET = 200_000  # points over all features of a baseline (~4 MB of JSON)
MIN_VALUES_PER_POINT = 10  # a small split's sketch never lists its values one by one
WASSERSTEIN_GRID = 20_000  # strips of the quantile integral: mass below 1/20,000 is resolved as a whole
PSI_BINS = 10  # training deciles, the usual PSI binning
PSI_EPSILON = 1e-4  # an empty bin's share (Evidently's choice): PSI stays finite, a new bin still counts
NOISE_LEVEL = 0.001  # a distance threshold is raised to what sampling alone exceeds this often (per feature)
WASSERSTEIN_NOISE = 4.0  # see wasserstein_floor
UNAVAILABLE = "not available (baseline predates it; rematerialize drift_baseline)"


def sketch_points(features: int) -> int:
    """Points per sketch for a baseline of `features` numeric features: 1,001, fewer (down to 101) for wide data
    so that the baseline stays a few MB (its reader caps it at 64 MiB)."""
    return max(MIN_SKETCH_POINTS, min(SKETCH_POINTS, SKETCH_BUDGET // max(features, 1)))


def quantile_sketch(present: np.ndarray, most: int = SKETCH_POINTS) -> list[float]:
    """The sketch of a feature's finite training values: their quantiles at evenly spaced probabilities 0..1,
    at most `most` points, and no more than one per `MIN_VALUES_PER_POINT` values."""
    if present.size == 0:
        return []
    points = min(most, max(2, present.size // MIN_VALUES_PER_POINT + 1))
    return np.quantile(present, np.linspace(0.0, 1.0, points)).tolist()


class Sketch:
    """A training feature's quantile sketch read as a distribution: its CDF (both one-sided limits) and quantiles."""

    def __init__(self, values: list[float] | np.ndarray, count: int):
        self.values = np.asarray(values, dtype=np.float64)
        self.probs = np.linspace(0.0, 1.0, self.values.size)
        self.count = int(count)

    def _between(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """The linear CDF at `x` on the segment [values[idx-1], values[idx]] (0 below the first, 1 above the last)."""
        k = self.values.size
        lo, hi = np.clip(idx - 1, 0, k - 1), np.clip(idx, 0, k - 1)
        span = self.values[hi] - self.values[lo]
        with np.errstate(divide="ignore", invalid="ignore"):  # span is 0 only where idx is 0 or k, set below
            inside = self.probs[lo] + (x - self.values[lo]) / span * (self.probs[hi] - self.probs[lo])
        return np.where(idx == 0, 0.0, np.where(idx == k, 1.0, inside))

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """P(X <= x): at a tied value (an atom) the last tied point's probability."""
        return self._between(x, np.searchsorted(self.values, x, side="right"))

    def cdf_below(self, x: np.ndarray) -> np.ndarray:
        """P(X < x): at a tied value the first tied point's probability."""
        return self._between(x, np.searchsorted(self.values, x, side="left"))

    def quantile(self, p: np.ndarray) -> np.ndarray:
        return np.interp(p, self.probs, self.values)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def ks(window: np.ndarray, sketch: Sketch) -> tuple[float, float]:
    """(D, asymptotic two-sided p-value) of the sorted window against the sketch; see the module docstring."""
    from scipy.stats import kstwo

    n, points = window.size, sketch.values
    above = np.abs(np.searchsorted(window, points, side="right") / n - sketch.cdf(points))
    below = np.abs(np.searchsorted(window, points, side="left") / n - sketch.cdf_below(points))
    statistic = float(max(above.max(), below.max()))
    m = float(max(sketch.count, 1))
    en = n * m / (n + m)
    return statistic, float(kstwo.sf(statistic, max(1, round(en))))


def wasserstein(window: np.ndarray, sketch: Sketch) -> float:
    """W1 between the sorted window and the sketch, in the sketch's units (divide by the training std for σ)."""
    n = window.size
    strips = min(n, WASSERSTEIN_GRID)
    mid = (np.arange(strips) + 0.5) / strips
    # With as many strips as values this is the exact integral against the window's step quantile function.
    picked = window if strips == n else window[np.minimum((mid * n).astype(np.int64), n - 1)]
    return float(np.abs(picked - sketch.quantile(mid)).mean())


def psi(window: np.ndarray, sketch: Sketch) -> tuple[float, int]:
    """(PSI, bins) of the sorted window over the training deciles (tied edges merged: fewer bins)."""
    edges = np.unique(sketch.quantile(np.arange(1, PSI_BINS) / PSI_BINS))
    training = np.diff(np.concatenate([[0.0], sketch.cdf(edges), [1.0]]))
    counts = np.diff(np.concatenate([[0], np.searchsorted(window, edges, side="right"), [window.size]]))
    current = counts / window.size
    training, current = np.maximum(training, PSI_EPSILON), np.maximum(current, PSI_EPSILON)
    return float(np.sum((current - training) * np.log(current / training))), int(edges.size + 1)


def jensen_shannon(
    counts: Mapping[str, int], frequencies: Mapping[str, float], other_share: float
) -> tuple[float | None, int]:
    """(JS distance (natural log) between training shares and window counts, categories compared): categories
    beyond the training's listed ones pooled as "other" on both sides. None when there is nothing to compare."""
    from scipy.spatial.distance import jensenshannon

    n = sum(counts.values())
    if n <= 0 or not frequencies:
        return None, 0
    listed = list(frequencies)
    seen = [counts.get(c, 0) for c in listed]
    training = np.array([float(frequencies[c]) for c in listed] + [max(0.0, float(other_share))])
    current = np.array([*seen, n - sum(seen)], dtype=np.float64)
    cells = int(np.count_nonzero((training > 0) | (current > 0)))
    return _finite(float(jensenshannon(training / training.sum(), current / n))), cells


def _effective_n(n: int, m: int) -> float:
    """n m / (n + m): both samples' noise (the training sample is one too); n alone when m is unknown."""
    return n * m / (n + m) if m > 0 else float(n)


def wasserstein_floor(n: int, m: int) -> float:
    """The W1 (in σ) that sampling alone reaches about once in 1/`NOISE_LEVEL` features. Measured between samples
    of one distribution (normal, lognormal, exponential; windows of 200 and 1,000 against 50,000 training rows;
    2,000 draws each): W1·sqrt(n m/(n+m)) averages 1.0-1.6, its 99.9th percentile is 2.9-3.8, and at most 1 draw
    in 2,000 reached 4. 4/sqrt(n) is 0.1 (the configured default) at 1,600 predictions."""
    return WASSERSTEIN_NOISE / math.sqrt(_effective_n(n, m))


def chi2_floor(cells: int, n: int, m: int) -> float:
    """The chi-square statistic over `cells` cells, scaled by (1/n + 1/m), that sampling alone exceeds with
    probability `NOISE_LEVEL`: PSI and 8·JSD are both ≈ this statistic for small differences."""
    from scipy.stats import chi2

    scale = 1 / n + (1 / m if m > 0 else 0.0)
    return float(chi2.ppf(1 - NOISE_LEVEL, max(cells - 1, 1))) * scale


def result(statistic: float | None, threshold: float, flagged: bool, rule: str, **extra: Any) -> dict[str, Any]:
    """One test's entry in the report: its statistic beside its threshold, and whether it flagged."""
    return {"statistic": statistic, "threshold": threshold, "flagged": bool(flagged), "rule": rule, **extra}


def unavailable(threshold: float, rule: str, note: str) -> dict[str, Any]:
    return result(None, threshold, False, rule, note=note)


KS_RULE = "p_value < threshold"
WASSERSTEIN_RULE = "statistic (W1 / training std) >= max(threshold, noise_floor)"
PSI_RULE = "statistic >= max(threshold, noise_floor)"
JS_RULE = "statistic (Jensen-Shannon distance) >= max(threshold, noise_floor)"


def numeric_tests(present_sorted: np.ndarray, stats: Mapping[str, Any], drift: DriftConfig) -> dict[str, Any]:
    """`ks`, `wasserstein` and `psi` entries of a feature's sorted present window values against its baseline
    statistics; each "not available" where the baseline holds no sketch."""
    values = stats.get("sketch")
    if not values or present_sorted.size == 0:
        note = UNAVAILABLE if values is None else "no values to compare" if values else "no training values"
        return {
            "ks": unavailable(drift.ks_pvalue, KS_RULE, note),
            "wasserstein": unavailable(drift.wasserstein_threshold, WASSERSTEIN_RULE, note),
            "psi": unavailable(drift.psi_threshold, PSI_RULE, note),
        }
    sketch = Sketch(values, int(stats.get("count") or 0))
    n, m = present_sorted.size, sketch.count
    d, p_value = ks(present_sorted, sketch)
    ks_sizes = {"window_count": n, "training_count": m}  # what the p-value was computed for
    tests = {
        "ks": result(
            _finite(d), drift.ks_pvalue, p_value < drift.ks_pvalue, KS_RULE, p_value=_finite(p_value), **ks_sizes
        )
    }
    std = float(stats.get("std") or 0.0)
    floor = wasserstein_floor(n, m)
    if std > 0:
        distance = wasserstein(present_sorted, sketch) / std
        flagged = distance >= max(drift.wasserstein_threshold, floor)
        tests["wasserstein"] = result(
            _finite(distance), drift.wasserstein_threshold, flagged, WASSERSTEIN_RULE, noise_floor=floor
        )
    else:  # constant in training: no σ to measure in; the z rule flags any move of such a feature
        tests["wasserstein"] = unavailable(drift.wasserstein_threshold, WASSERSTEIN_RULE, "constant in training")
    index, bins = psi(present_sorted, sketch)
    floor = chi2_floor(bins, n, m)
    tests["psi"] = result(
        _finite(index),
        drift.psi_threshold,
        index >= max(drift.psi_threshold, floor),
        PSI_RULE,
        noise_floor=floor,
        bins=bins,
    )
    return tests


def categorical_tests(counts: Mapping[str, int], stats: Mapping[str, Any], drift: DriftConfig) -> dict[str, Any]:
    """The `jensen_shannon` entry of a categorical feature's window counts (missing values left out)."""
    frequencies: Mapping[str, float] = stats.get("frequencies") or {}
    distance, cells = jensen_shannon(counts, frequencies, float(stats.get("other_share") or 0.0))
    if distance is None:
        return {"jensen_shannon": unavailable(drift.jensen_shannon_threshold, JS_RULE, "no values to compare")}
    n, m = sum(counts.values()), int(stats.get("count") or 0)
    floor = math.sqrt(chi2_floor(cells, n, m) / 8)
    flagged = distance >= max(drift.jensen_shannon_threshold, floor)
    return {"jensen_shannon": result(distance, drift.jensen_shannon_threshold, flagged, JS_RULE, noise_floor=floor)}
