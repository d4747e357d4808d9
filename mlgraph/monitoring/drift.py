"""Drift of the prediction log against the champion's training distribution: one implementation for the
`drift_report` asset, the `drift_sensor` and the service's `/monitoring/drift` and `/monitoring/retraining_trigger`.

The rule (design document 001, stage 5, and issue 22; thresholds in the experiment's `drift:` section). A
feature drifts when any of its deciding tests (`drift.tests`) flags it; every test is computed and
reported per feature (`tests`: statistic, threshold, flagged, decides) whether it decides or not:

- numeric feature, `z`: z = (window mean - training mean) / training std, the shift of the window's mean
  in training standard deviations; flags |z| > `drift_zscore_threshold` (3.0). The standard error
  (std / sqrt(n)) is deliberately not the denominator: over a window of thousands of predictions it
  would flag shifts of a hundredth of a standard deviation, so 3.0 would mean nothing;
- numeric feature, `ks`, `wasserstein`, `psi`: the window's distribution against the baseline's quantile
  sketch (mlgraph/monitoring/distribution.py); they see what z cannot, such as a spread tripled around
  an unchanged mean;
- categorical feature: `unseen` flags when the share of categories never seen in training exceeds
  `unseen_share_threshold`, `chi2` when a chi-square test of homogeneity (scipy.stats.chi2_contingency)
  of the seen categories' counts in training and in the window gives p < `chi2_pvalue`, and
  `jensen_shannon` on the distance between the category shares (distribution.py);
- feature drift when at least `drift_min_features` (2) features drift;
- prediction shift when the predicted positive rate (binary) or any class share (multiclass) moves
  more than `class_rate_shift_threshold` (0.1) from the training split's;
- fewer than `min_window` logged predictions: "insufficient_data", never "no drift"; no saved
  baseline: "no_baseline".

`build_report(drive, config)` reads the newest `window` records (mlgraph/monitoring/window.py)
and returns a JSON-serializable dict; `retraining_trigger(report)` says whether to retrain, and why.

The window reads at most `window_byte_cap(window)` bytes: `WINDOW_BYTES_PER_RECORD` (16 KiB) per
record of the window by default (80 MiB for the default 5,000), or `$MLGRAPH_DRIFT_WINDOW_MAX_BYTES`
when set (read on each report). A window stopped by the cap says so (`window.capped`).
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from mlgraph.core.drive import DrivePaths
from mlgraph.core.experiment import DriftConfig, ExperimentConfig
from mlgraph.monitoring.baseline import read_baseline
from mlgraph.monitoring.distribution import UNAVAILABLE, categorical_tests, numeric_tests, unavailable
from mlgraph.monitoring.distribution import result as test_result
from mlgraph.monitoring.window import Window, read_window

DRIFT, NO_DRIFT, INSUFFICIENT_DATA, NO_BASELINE = "drift", "no_drift", "insufficient_data", "no_baseline"
STATUSES = (DRIFT, NO_DRIFT, INSUFFICIENT_DATA, NO_BASELINE)
RULE = (
    "a feature drifts when any deciding test (drift.tests) flags it; drift when at least drift_min_features "
    "features drift, or the predicted class shares move"
)
UNSEEN_RULE = "statistic (share of categories never seen in training) > threshold"
CHI2_RULE = "p_value < threshold"
# Ordinary records are 0.3-2 KiB (a few hundred features fit 16 KiB); a hostile 1 MiB string per line
# would otherwise make the default 5,000-line window 5 GB of reading.
WINDOW_BYTES_PER_RECORD = 16 << 10
WINDOW_MAX_BYTES_ENV = "MLGRAPH_DRIFT_WINDOW_MAX_BYTES"


def window_byte_cap(window: int, environ: Mapping[str, str] | None = None) -> int:
    """The most bytes a drift window of `window` records reads: $MLGRAPH_DRIFT_WINDOW_MAX_BYTES, else 16 KiB a record."""
    raw = (os.environ if environ is None else environ).get(WINDOW_MAX_BYTES_ENV, "").strip()
    if not raw:
        return window * WINDOW_BYTES_PER_RECORD
    try:
        cap = int(raw)
    except ValueError:
        cap = 0
    if cap <= 0:
        raise ValueError(
            f"${WINDOW_MAX_BYTES_ENV}={raw[:40]!r} is not a positive number of bytes. "
            f"Fix: set it to an integer such as {window * WINDOW_BYTES_PER_RECORD}, or unset it "
            f"for {WINDOW_BYTES_PER_RECORD} bytes per record of the window"
        )
    return cap


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _decide(result: dict[str, Any], tests: dict[str, dict[str, Any]], drift: DriftConfig) -> dict[str, Any]:
    """A feature's result with its tests: each marked deciding or not; the feature drifts when a deciding one flags."""
    for name, test in tests.items():
        test["decides"] = name in drift.tests
    flagged_by = [name for name, test in tests.items() if test["decides"] and test["flagged"]]
    return {**result, "drift": bool(flagged_by), "flagged_by": flagged_by, "tests": tests}


def numeric_drift(values: np.ndarray, stats: Mapping[str, Any], drift: DriftConfig) -> dict[str, Any]:
    """One numeric feature: the window mean's shift in training standard deviations (z), and the distribution
    tests against the baseline's quantile sketch (ks, wasserstein, psi; mlgraph/monitoring/distribution.py)."""
    present = values[np.isfinite(values)]
    threshold = drift.drift_zscore_threshold
    result: dict[str, Any] = {
        "kind": "numeric",
        "count": int(present.size),
        "missing_share": float(1 - present.size / values.size) if values.size else 0.0,
        "baseline_mean": stats.get("mean"),
        "baseline_std": stats.get("std"),
    }
    z_rule = "|statistic| > threshold"
    if present.size == 0 or stats.get("mean") is None:
        note = "no values to compare"
        tests = {"z": unavailable(threshold, z_rule, note), **numeric_tests(np.empty(0), stats, drift)}
        return _decide({**result, "window_mean": None, "z": None, "note": note}, tests, drift)
    mean, base_mean, base_std = float(present.mean()), float(stats["mean"]), float(stats["std"] or 0.0)
    result["window_mean"] = mean
    # Sorted once (only for a baseline with a sketch): every distribution test then searches the sketch into it.
    tests = numeric_tests(np.sort(present) if stats.get("sketch") else present, stats, drift)
    if base_std > 0:
        z = (mean - base_mean) / base_std
        tests = {"z": test_result(_finite(z), threshold, abs(z) > threshold, z_rule), **tests}
        return _decide({**result, "z": _finite(z)}, tests, drift)
    # Constant in training: any move of the mean is infinitely many standard deviations.
    moved = not math.isclose(mean, base_mean, rel_tol=1e-9, abs_tol=1e-12)
    note = "constant in training" + ("; the window moved" if moved else "")
    tests = {"z": test_result(None, threshold, moved, z_rule, note=note), **tests}
    return _decide({**result, "z": None, "note": note}, tests, drift)


def categorical_drift(counts: Mapping[str | None, int], stats: Mapping[str, Any], drift: DriftConfig) -> dict[str, Any]:
    """One categorical feature (window counts by category, None = missing): unseen share, a chi-square test and the
    Jensen-Shannon distance."""
    from scipy.stats import chi2_contingency

    observed = {c: k for c, k in counts.items() if c is not None and k}
    shares: Mapping[str, float] = stats.get("frequencies") or {}
    n, total = sum(observed.values()), sum(counts.values())
    result: dict[str, Any] = {
        "kind": "categorical",
        "count": n,
        "missing_share": float(1 - n / total) if total else 0.0,
    }
    if n == 0 or not shares:
        note = "no values to compare"
        tests = {
            "unseen": unavailable(drift.unseen_share_threshold, UNSEEN_RULE, note),
            "chi2": unavailable(drift.chi2_pvalue, CHI2_RULE, note),
            **categorical_tests(observed, stats, drift),
        }
        return _decide({**result, "unseen_share": None, "chi2": None, "p_value": None, "note": note}, tests, drift)
    seen = {c: observed.get(c, 0) for c in shares}
    # Categories pooled as "other" in the baseline are not unseen: only the excess over their share is.
    unseen_share = max(0.0, (n - sum(seen.values())) / n - float(stats.get("other_share") or 0.0))
    chi2 = p_value = None
    # Two samples (training counts, window counts), not the window against exact shares: the training
    # shares are estimates too, and treating them as exact makes a large window "drift" on noise alone.
    training = np.array([shares[c] * stats["count"] for c in seen])
    window = np.array(list(seen.values()), dtype=np.float64)
    used = (training + window) > 0
    if used.sum() > 1 and window.sum() > 0:
        test = chi2_contingency(np.vstack([training[used], window[used]]), correction=False)
        chi2, p_value = _finite(float(test.statistic)), _finite(float(test.pvalue))
    tests = {
        "unseen": test_result(
            unseen_share, drift.unseen_share_threshold, unseen_share > drift.unseen_share_threshold, UNSEEN_RULE
        ),
        "chi2": test_result(
            chi2, drift.chi2_pvalue, p_value is not None and p_value < drift.chi2_pvalue, CHI2_RULE, p_value=p_value
        ),
        **categorical_tests(observed, stats, drift),
    }
    top_unseen = sorted((c for c in observed if c not in shares), key=lambda c: -observed[c])[:5]
    result.update(unseen_share=unseen_share, unseen_examples=top_unseen, chi2=chi2, p_value=p_value)
    return _decide(result, tests, drift)


def _class_counts(counts: Mapping[str | None, int], classes: list[str]) -> dict[str, int]:
    """Predicted labels by class key; a service answering class indices (0, 1, ...) is mapped onto the classes."""
    labels = {c: k for c, k in counts.items() if c is not None and k}
    if labels and not set(labels) & set(classes) and set(labels) <= {str(i) for i in range(len(classes))}:
        labels = {classes[int(c)]: k for c, k in labels.items()}
    return labels


def class_shift(
    predictions: Mapping[str | None, int], target: Mapping[str, Any], threshold: float
) -> dict[str, Any] | None:
    """Predicted class shares (window counts by label) against the training split's: binary the positive rate,
    multiclass the largest move."""
    kind = target.get("kind")
    if kind not in ("binary", "multiclass"):
        return None
    training: Mapping[str, float] = target["shares"]
    labels = _class_counts(predictions, list(training))
    n = sum(labels.values())
    if not n:
        return {"kind": kind, "count": 0, "shift": None, "drift": False, "note": "no predictions to compare"}
    window = {c: k / n for c, k in labels.items()}
    if kind == "binary":
        positive = target["positive_label"]
        rate = window.get(positive, 0.0)
        shift = rate - float(target["positive_rate"])
        return {
            "kind": kind,
            "count": n,
            "positive_label": positive,
            "window_positive_rate": rate,
            "baseline_positive_rate": target["positive_rate"],
            "shift": shift,
            "drift": bool(abs(shift) > threshold),
        }
    moves = {c: window.get(c, 0.0) - float(training.get(c, 0.0)) for c in {*training, *window}}
    largest = max(sorted(moves), key=lambda c: abs(moves[c]))
    return {
        "kind": kind,
        "count": n,
        "window_shares": window,
        "baseline_shares": dict(training),
        "largest_class": largest,
        "shift": moves[largest],
        "drift": bool(abs(moves[largest]) > threshold),
    }


def _baseline_summary(drive: DrivePaths, config: ExperimentConfig, baseline: Mapping[str, Any]) -> dict[str, Any]:
    from mlgraph.training.promotion import PromotionStore

    current = PromotionStore(drive.promotion_dir(config.config_hash)).current() or {}
    summary = {
        key: baseline.get(key)
        for key in (
            "champion_version",
            "champion_run_id",
            "model_type",
            "model_name",
            "config_hash",
            "computed_at",
            "rows",
        )
    }
    summary["current_champion_version"] = str(current.get("model_version", "")) or None
    # Stale: computed for another config, or a champion other than the one promoted now.
    summary["stale"] = baseline.get("config_hash") != config.config_hash or summary["current_champion_version"] not in (
        None,
        baseline.get("champion_version"),
    )
    return summary


def _window_summary(window: Window, drift: DriftConfig) -> dict[str, Any]:
    return {
        "rows": window.rows,
        "size": drift.window,
        "min_window": drift.min_window,
        "bad_lines": window.bad_lines,
        "first_time": window.first_time,
        "last_time": window.last_time,
        "files": window.files,
        "bytes_read": window.bytes_read,
        "max_bytes": window.max_bytes,
        "capped": window.capped,
    }


def build_report(drive: DrivePaths, config: ExperimentConfig, max_window_bytes: int | None = None) -> dict[str, Any]:
    """The drift report of `config`'s experiment over the newest `drift.window` logged predictions (read within
    `max_window_bytes`, by default `window_byte_cap(drift.window)`)."""
    drift = config.drift
    max_bytes = max_window_bytes or window_byte_cap(drift.window)
    report: dict[str, Any] = {
        "experiment": config.name,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(),
        "rule": RULE,
        "thresholds": drift.model_dump(mode="json"),
        "tests": {"deciding": list(drift.tests), "not_available": {}},
        "log": str(drive.prediction_log_path(config.name)),
    }
    baseline = read_baseline(drive, config.name)
    if baseline is None:
        reasons = [f"no drift baseline yet: materialize drift_baseline for {config.name} (it follows the champion)"]
        return {
            **report,
            "status": NO_BASELINE,
            "drift": False,
            "reasons": reasons,
            "baseline": None,
            "window": None,
            "features": {},
            "class_rate": None,
        }
    report["baseline"] = _baseline_summary(drive, config, baseline)
    numeric, categorical = list(baseline["numeric"]), list(baseline["categorical"])
    window = read_window(drive.prediction_log_path(config.name), drift.window, numeric, categorical, max_bytes)
    report["window"] = _window_summary(window, drift)
    minimum = min(drift.min_window, drift.window)
    if window.rows < minimum:
        reasons = [f"insufficient data: {window.rows} logged prediction(s), fewer than min_window={minimum}"]
        if window.capped:
            reasons.append(
                f"the newest lines of the log hold more than {max_bytes} bytes (the window's byte cap): "
                f"records of unusual size; raise ${WINDOW_MAX_BYTES_ENV} if they are legitimate"
            )
        return {
            **report,
            "status": INSUFFICIENT_DATA,
            "drift": False,
            "reasons": reasons,
            "features": {},
            "class_rate": None,
        }
    features = {name: numeric_drift(window.numeric[name], baseline["numeric"][name], drift) for name in numeric}
    features.update(
        {
            name: categorical_drift(window.categorical[name], baseline["categorical"][name], drift)
            for name in categorical
        }
    )
    shift = class_shift(window.predictions, baseline["target"], drift.class_rate_shift_threshold)
    report["tests"]["not_available"] = _not_available(features)
    reasons = _reasons(features, shift, drift)
    return {
        **report,
        "status": DRIFT if reasons else NO_DRIFT,
        "drift": bool(reasons),
        "reasons": reasons,
        "drifted_features": [n for n, f in features.items() if f["drift"]],
        "features": features,
        "class_rate": shift,
    }


def _not_available(features: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Tests an old baseline cannot run (no quantile sketch), with the fix; said once, not per feature."""
    return {
        name: UNAVAILABLE
        for result in features.values()
        for name, test in result["tests"].items()
        if test.get("note") == UNAVAILABLE
    }


def _describe(name: str, result: Mapping[str, Any]) -> str:
    """`name (z=+4.01; wasserstein 1.58 >= 0.1)`: the tests that flagged it, each statistic beside its threshold."""
    parts = []
    for test_name in result["flagged_by"]:
        test = result["tests"][test_name]
        statistic, threshold = test["statistic"], max(test["threshold"], test.get("noise_floor") or 0.0)
        if test_name == "z":
            parts.append(f"z={statistic:+.2f}" if statistic is not None else str(test.get("note")))
        elif test_name == "unseen":
            parts.append(f"unseen {statistic:.1%}")
        elif "p_value" in test:
            parts.append(f"{test_name} p={test['p_value']:.2g} < {threshold:g}")
        else:
            parts.append(f"{test_name} {statistic:.3g} >= {threshold:.3g}")
    return f"{name} ({'; '.join(parts)})"


def _reasons(
    features: Mapping[str, Mapping[str, Any]], shift: Mapping[str, Any] | None, drift: DriftConfig
) -> list[str]:
    reasons = []
    drifted = [n for n, f in features.items() if f["drift"]]
    if len(drifted) >= drift.drift_min_features:
        named = ", ".join(_describe(n, features[n]) for n in drifted)
        reasons.append(
            f"feature drift: {len(drifted)} feature(s) drifted (at least {drift.drift_min_features}): {named}"
        )
    if shift is not None and shift["drift"]:
        what = (
            "predicted positive rate" if shift["kind"] == "binary" else f"predicted share of {shift['largest_class']!r}"
        )
        reasons.append(
            f"prediction shift: {what} moved {shift['shift']:+.3f} from training "
            f"(limit {drift.class_rate_shift_threshold})"
        )
    return reasons


def retraining_trigger(report: Mapping[str, Any]) -> dict[str, Any]:
    """Whether `report` recommends retraining, and why (drift only; missing data or baseline is said, not acted on)."""
    status = report.get("status")
    reasons = list(report.get("reasons") or [])
    if status == DRIFT:
        return {"recommended": True, "status": status, "reasons": reasons, "window": report.get("window")}
    if status == NO_DRIFT:
        reasons = ["no drift in the window: every rule is within its threshold"]
    return {"recommended": False, "status": status, "reasons": reasons, "window": report.get("window")}
