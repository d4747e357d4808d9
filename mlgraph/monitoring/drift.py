"""Drift of the prediction log against the champion's training distribution: one implementation for the
`drift_report` asset, the `drift_sensor` and the service's `/monitoring/drift` and `/monitoring/retraining_trigger`.

The rule (design document 001, stage 5; thresholds in the experiment's `drift:` section):

- numeric feature: z = (window mean - training mean) / training std, the shift of the window's mean in
  training standard deviations. It drifts when |z| > `drift_zscore_threshold` (3.0). The standard error
  (std / sqrt(n)) is deliberately not the denominator: over a window of thousands of predictions it
  would flag shifts of a hundredth of a standard deviation, so 3.0 would mean nothing;
- categorical feature: it drifts when the share of categories never seen in training exceeds
  `unseen_share_threshold`, or a chi-square test of homogeneity (scipy.stats.chi2_contingency) of the
  seen categories' counts in training and in the window gives p < `chi2_pvalue`;
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
from mlgraph.monitoring.window import Window, read_window

DRIFT, NO_DRIFT, INSUFFICIENT_DATA, NO_BASELINE = "drift", "no_drift", "insufficient_data", "no_baseline"
STATUSES = (DRIFT, NO_DRIFT, INSUFFICIENT_DATA, NO_BASELINE)
RULE = "z = (window mean - training mean) / training std"
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


def numeric_drift(values: np.ndarray, stats: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    """One numeric feature: the window mean's shift in training standard deviations."""
    present = values[np.isfinite(values)]
    result: dict[str, Any] = {
        "kind": "numeric",
        "count": int(present.size),
        "missing_share": float(1 - present.size / values.size) if values.size else 0.0,
        "baseline_mean": stats.get("mean"),
        "baseline_std": stats.get("std"),
    }
    if present.size == 0 or stats.get("mean") is None:
        return {**result, "window_mean": None, "z": None, "drift": False, "note": "no values to compare"}
    mean, base_mean, base_std = float(present.mean()), float(stats["mean"]), float(stats["std"] or 0.0)
    result["window_mean"] = mean
    if base_std > 0:
        z = (mean - base_mean) / base_std
        return {**result, "z": _finite(z), "drift": bool(abs(z) > threshold)}
    # Constant in training: any move of the mean is infinitely many standard deviations.
    moved = not math.isclose(mean, base_mean, rel_tol=1e-9, abs_tol=1e-12)
    return {
        **result,
        "z": None,
        "drift": moved,
        "note": "constant in training" + ("; the window moved" if moved else ""),
    }


def categorical_drift(counts: Mapping[str | None, int], stats: Mapping[str, Any], drift: DriftConfig) -> dict[str, Any]:
    """One categorical feature (window counts by category, None = missing): unseen share and a chi-square test."""
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
        return {
            **result,
            "unseen_share": None,
            "chi2": None,
            "p_value": None,
            "drift": False,
            "note": "no values to compare",
        }
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
    drifted = unseen_share > drift.unseen_share_threshold or (p_value is not None and p_value < drift.chi2_pvalue)
    top_unseen = sorted((c for c in observed if c not in shares), key=lambda c: -observed[c])[:5]
    return {
        **result,
        "unseen_share": unseen_share,
        "unseen_examples": top_unseen,
        "chi2": chi2,
        "p_value": p_value,
        "drift": bool(drifted),
    }


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
    features = {
        name: numeric_drift(window.numeric[name], baseline["numeric"][name], drift.drift_zscore_threshold)
        for name in numeric
    }
    features.update(
        {
            name: categorical_drift(window.categorical[name], baseline["categorical"][name], drift)
            for name in categorical
        }
    )
    shift = class_shift(window.predictions, baseline["target"], drift.class_rate_shift_threshold)
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


def _describe(name: str, result: Mapping[str, Any]) -> str:
    if result["kind"] == "numeric":
        return f"{name} (z={result['z']:+.2f})" if result["z"] is not None else f"{name} ({result.get('note')})"
    p_value = result["p_value"]
    chi2 = f", chi-square p={p_value:.2g}" if p_value is not None else ""
    return f"{name} (unseen {result['unseen_share']:.1%}{chi2})"


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
