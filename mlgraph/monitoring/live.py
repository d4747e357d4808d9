"""Live performance: delayed labels joined to the prediction log by prediction id, scored over time.

`join` reads the labels store (mlgraph/monitoring/labels.py, last label per id) and then streams every
file of the prediction log, rotated ones included (a label may arrive long after its prediction was
rotated out of the current file), oldest first. Only the line's head is matched (time, request id, row,
model version: the writer's fixed field order, mlgraph/serving/log_writer.format_entry); the full JSON is
decoded only for the lines whose id has a label, so memory grows with the labels, not with a log of
millions of lines. A line in another layout is decoded whole (slower, still joined); a torn or foreign
line is counted.

`score` groups the labelled predictions by time bucket (`drift.live_bucket`: hour or day, by prediction
time) and model version, and computes the task's metrics for each group with `n_labelled`: accuracy and
the selection metric for a classifier (binary: from the logged decision and positive-class probability;
multiclass: from the logged class probabilities), rmse/mae/r2 (plus mse) for regression and forecasting.
A metric the log cannot give (forecasting's composite) is absent, never guessed.

`performance_check` is the drop rule: over the last `drift.min_labels` labelled predictions of the
champion's version (by prediction time), the realized selection metric against the champion's test value
from its promotion pointer; worse by more than `drift.performance_drop` is a drop (the report says so,
live_performance raises an alert, drift_sensor retrains). Plotting and file writing: live_outputs.py.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlgraph.core.experiment import ExperimentConfig
from mlgraph.core.metrics import (
    classification_metrics,
    lower_is_better,
    multiclass_metrics,
    regression_metrics,
)
from mlgraph.core.prediction_log import (
    MODEL_VERSION,
    OUTPUT,
    PREDICTION,
    PROBABILITIES,
    PROBABILITY,
    REQUEST_ID,
    ROW,
    TIME,
    log_files,
)
from mlgraph.core.untrusted import open_regular
from mlgraph.monitoring.labels import read_labels, record_ids

# The writer's line head: {"time":"…","request_id":"…","row":N,"model_version":"…",
_HEAD = re.compile(rb'^\{"time":"([^"\\]*)","request_id":"([^"\\]*)","row":(\d{1,9}),"model_version":"([^"\\]*)",')
_RID_KEY = b'"request_id":"'
_RID_WITHIN = 96  # the writer puts the request id right after the time: its key starts within these bytes
LISTINGS = 5  # listings of the log's files at most (each after a rotation raced the read)
BUCKET_FORMATS = {"hour": "%Y-%m-%dT%H:00:00+00:00", "day": "%Y-%m-%dT00:00:00+00:00"}
REGRESSION_LIKE = ("rmse", "mae", "r2", "mse")


@dataclass(frozen=True)
class Labelled:
    """One logged prediction with its label."""

    id: str
    time: str  # when it was predicted (ISO UTC)
    model_version: str
    output: dict[str, Any]
    label: Any
    label_received: str | None


@dataclass
class Joined:
    labelled: list[Labelled] = field(default_factory=list)
    labels: int = 0  # distinct ids in the store
    duplicates: int = 0  # labels superseded by a later one for the same id
    unknown_ids: int = 0  # labels whose id names no logged prediction
    unknown_examples: list[str] = field(default_factory=list)
    bad_label_lines: int = 0
    bad_log_lines: int = 0
    log_lines: int = 0
    files: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "labelled_predictions": len(self.labelled),
            "duplicates": self.duplicates,
            "unknown_ids": self.unknown_ids,
            "unknown_examples": self.unknown_examples,
            "bad_label_lines": self.bad_label_lines,
            "bad_log_lines": self.bad_log_lines,
            "log_lines": self.log_lines,
            "log_files": self.files,
        }


def _head(line: bytes) -> tuple[str, str, int, str] | None:
    match = _HEAD.match(line)
    if match:
        return (match[1].decode(), match[2].decode(), int(match[3]), match[4].decode())
    try:
        record = json.loads(line)
        return (str(record[TIME]), str(record[REQUEST_ID]), int(record[ROW]), str(record[MODEL_VERSION]))
    except (ValueError, KeyError, TypeError):
        return None


def _scan(handle: Any, wanted: set[bytes], stored: Any, found: dict[str, Labelled], joined: Joined) -> None:
    """Add the labelled records of one open log file to `found`."""
    for line in handle:
        joined.log_lines += 1
        start = line.find(_RID_KEY, 0, _RID_WITHIN)
        if start >= 0:
            start += len(_RID_KEY)
            end = line.find(b'"', start)
            if end > 0 and line[start:end] not in wanted and line.endswith(b"\n"):
                continue
        head = _head(line) if line.endswith(b"\n") else None
        if head is None:
            joined.bad_log_lines += line.strip() != b""
            continue
        when, request_id, row, version = head
        label_id = next((i for i in record_ids(request_id, row) if i in stored.labels), None)
        if label_id is None:
            continue
        try:
            output = json.loads(line)[OUTPUT]
        except (ValueError, KeyError, TypeError):
            joined.bad_log_lines += 1
            continue
        label = stored.labels[label_id]
        found[label_id] = Labelled(label_id, when, version, output, label["label"], label.get("time"))


def join(log_path: Path, labels_path: Path) -> Joined:
    """The labelled predictions of the log whose current file is `log_path`, with the counts the report shows.

    The service may rotate the log while it is read: a file gone between the listing and the open was renamed
    (or pruned), so the files are listed again until a listing shows no file not yet read (files are told
    apart by inode, so a renamed file already read is not read twice)."""
    stored = read_labels(labels_path)
    joined = Joined(labels=len(stored.labels), duplicates=stored.duplicates, bad_label_lines=stored.bad_lines)
    found: dict[str, Labelled] = {}
    # The request ids the labels can name (a batch id's request id is before its last '-'): most lines are
    # dismissed by one bytes lookup on their request id, without decoding them.
    wanted = {i.encode() for i in stored.labels} | {i.rsplit("-", 1)[0].encode() for i in stored.labels if "-" in i}
    read: set[tuple[int, int]] = set()
    for _ in range(LISTINGS if stored.labels else 0):
        fresh = False
        for path in log_files(log_path):
            try:
                handle = open_regular(path)
            except FileNotFoundError:
                fresh = True  # rotated or pruned since listed: the next listing shows where it went
                continue
            with handle:
                info = os.fstat(handle.fileno())
                if (info.st_dev, info.st_ino) in read:
                    continue
                read.add((info.st_dev, info.st_ino))
                fresh = True
                joined.files.append(str(path))
                _scan(handle, wanted, stored, found, joined)
        if not fresh:
            break
    joined.labelled = sorted(found.values(), key=lambda item: item.time)
    unknown = [i for i in stored.labels if i not in found]
    joined.unknown_ids, joined.unknown_examples = len(unknown), unknown[:10]
    return joined


def bucket_of(when: str, bucket: str) -> str:
    """The start of the hour or day `when` (ISO) falls in, as ISO UTC."""
    moment = datetime.fromisoformat(when)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime(BUCKET_FORMATS[bucket])


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def metrics_of(items: Sequence[Labelled], task: str, classes: Sequence[Any] | None = None) -> dict[str, float | None]:
    """The metrics of labelled predictions (NaN-free: a metric the group cannot define is None)."""
    if task != "classification":
        y_true = np.array([float(i.label) for i in items])
        y_pred = np.array([float(i.output[PREDICTION]) for i in items])
        scores = regression_metrics(y_true, y_pred)
        scores["mse"] = float(np.mean((y_pred - y_true) ** 2))
        return {k: _finite(v) for k, v in scores.items()}
    accuracy = float(np.mean([i.output.get(PREDICTION) == i.label for i in items]))
    scores: dict[str, float | None] = {"accuracy": accuracy}
    first = items[0].output
    if PROBABILITIES in first:  # multiclass: the class names are the probabilities' keys
        names = sorted({k for i in items for k in i.output.get(PROBABILITIES, {})})
        index = {name: n for n, name in enumerate(names)}
        usable = [i for i in items if str(i.label) in index and set(i.output.get(PROBABILITIES, {})) == set(names)]
        if usable and len(names) > 1:
            proba = np.array([[i.output[PROBABILITIES][n] for n in names] for i in usable], dtype=np.float64)
            y_true = np.array([index[str(i.label)] for i in usable])
            multi = multiclass_metrics(y_true, proba)
            scores.update({k: _finite(v) for k, v in multi.items() if k != "accuracy"})
    elif PROBABILITY in first:
        # sklearn's order: the classes sorted, the positive one last (mlgraph.training.labels.target_classes).
        positive = _positive_class(
            {*(classes or ()), *(i.label for i in items), *(i.output.get(PREDICTION) for i in items)}
        )
        y_true = np.array([i.label == positive for i in items], dtype=int)
        decided = np.array([i.output.get(PREDICTION) == positive for i in items], dtype=float)
        binary = classification_metrics(y_true, decided, 0.5)  # precision, recall, f1 of the logged decisions
        probability = np.array([float(i.output.get(PROBABILITY, np.nan)) for i in items])
        ok = np.isfinite(probability)
        binary["roc_auc"] = (
            classification_metrics(y_true[ok], probability[ok], 0.5)["roc_auc"] if ok.any() else float("nan")
        )
        scores.update({k: _finite(v) for k, v in binary.items() if k != "accuracy"})
    return scores


def _positive_class(seen: set) -> Any:
    try:
        return sorted(seen)[-1]
    except TypeError:  # mixed types (a wrong label would have been refused; a foreign log may hold them)
        return sorted(seen, key=str)[-1]


@dataclass(frozen=True)
class Reference:
    """What the realized metric is held against: the champion's promoted test value."""

    metric: str
    test_value: float | None
    model_version: str | None
    run_id: str | None
    classes: tuple[Any, ...] | None = None

    @classmethod
    def from_pointer(cls, pointer: Mapping[str, Any] | None, config: ExperimentConfig) -> Reference:
        if not pointer:
            return cls(config.selection_metric, None, None, None)
        test = pointer.get("test_score")
        return cls(
            str(pointer.get("metric") or config.selection_metric),
            float(test) if isinstance(test, (int, float)) and math.isfinite(test) else None,
            str(pointer.get("model_version")) if pointer.get("model_version") is not None else None,
            pointer.get("run_id"),
            tuple(pointer["classes"]) if pointer.get("classes") else None,
        )


def metric_names(task: str, selection: str) -> list[str]:
    """The columns the report shows: accuracy and the selection metric (classification), else rmse/mae/r2/mse."""
    if task == "classification":
        return ["accuracy"] + ([selection] if selection != "accuracy" else [])
    return [*REGRESSION_LIKE, *([selection] if selection not in REGRESSION_LIKE else [])]


def score(joined: Joined, config: ExperimentConfig, reference: Reference) -> list[dict[str, Any]]:
    """One row per (bucket, model version), oldest first: bucket start, version, n_labelled and the metrics."""
    bucket = config.drift.live_bucket
    groups: dict[tuple[str, str], list[Labelled]] = defaultdict(list)
    for item in joined.labelled:
        groups[(bucket_of(item.time, bucket), item.model_version)].append(item)
    names = metric_names(config.task, reference.metric)
    rows = []
    for (start, version), items in sorted(groups.items()):
        scores = metrics_of(items, config.task, reference.classes)
        rows.append(
            {
                "experiment": config.name,
                "bucket": bucket,
                "bucket_start": start,
                "model_version": version,
                "n_labelled": len(items),
                **{name: scores.get(name) for name in names},
            }
        )
    return rows


def performance_check(joined: Joined, config: ExperimentConfig, reference: Reference) -> dict[str, Any]:
    """The drop rule over the champion's last `min_labels` labelled predictions; `dropped` says whether it fired."""
    need, limit = config.drift.min_labels, config.drift.performance_drop
    mine = [i for i in joined.labelled if reference.model_version is None or i.model_version == reference.model_version]
    window = mine[-need:]
    check: dict[str, Any] = {
        "metric": reference.metric,
        "champion_version": reference.model_version,
        "champion_test": reference.test_value,
        "min_labels": need,
        "threshold": limit,
        "n": len(window),
        "realized": None,
        "drop": None,
        "checked": False,
        "dropped": False,
        "window": {
            "first_time": window[0].time if window else None,
            "last_time": window[-1].time if window else None,
            "rows": len(window),
        },
    }
    if reference.test_value is None:
        check["reason"] = "no champion test value to compare with (no champion promoted yet)"
        return check
    if len(window) < need:
        check["reason"] = (
            f"{len(window)} labelled predictions of v{reference.model_version}, fewer than min_labels={need}"
        )
        return check
    realized = metrics_of(window, config.task, reference.classes).get(reference.metric)
    if realized is None:
        check["reason"] = f"{reference.metric} cannot be computed from the logged predictions and labels"
        return check
    drop = realized - reference.test_value if lower_is_better(reference.metric) else reference.test_value - realized
    check.update(realized=realized, drop=drop, checked=True, dropped=drop > limit)
    check["reason"] = (
        f"performance drop: {reference.metric} {realized:.4f} over the last {len(window)} labelled predictions vs "
        f"the champion's test {reference.test_value:.4f} (worse by {drop:.4f}, more than {limit:g})"
        if drop > limit
        else f"{reference.metric} {realized:.4f} vs test {reference.test_value:.4f}: within {limit:g}"
    )
    return check


def build_live_report(
    log_path: Path, labels_path: Path, config: ExperimentConfig, pointer: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The whole report: the join's counts, the rows per bucket and version, the drop check, the trend."""
    reference = Reference.from_pointer(pointer, config)
    joined = join(log_path, labels_path)
    rows = score(joined, config, reference)
    check = performance_check(joined, config, reference)
    return {
        "experiment": config.name,
        "computed_at": datetime.now(UTC).isoformat(),
        "task": config.task,
        "metric": reference.metric,
        "bucket": config.drift.live_bucket,
        "champion": {
            "model_version": reference.model_version,
            "run_id": reference.run_id,
            "test": reference.test_value,
        },
        "join": joined.summary(),
        "rows": rows,
        "performance": check,
        "trend": trend(rows, reference.metric),
    }


def trend(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[str, Any]:
    """The metric's last value and its change from the bucket before (what the dashboard shows)."""
    values = [(r["bucket_start"], r.get(metric), r["n_labelled"]) for r in rows if r.get(metric) is not None]
    by_bucket: dict[str, tuple[float, int]] = {}
    for start, value, n in values:  # several versions in one bucket: weighted by their labelled predictions
        total, count = by_bucket.get(start, (0.0, 0))
        by_bucket[start] = (total + value * n, count + n)
    series = [(start, total / count) for start, (total, count) in sorted(by_bucket.items()) if count]
    last = series[-1][1] if series else None
    change = series[-1][1] - series[-2][1] if len(series) > 1 else None
    return {"metric": metric, "last": last, "change": change, "series": [v for _, v in series[-24:]]}


REPORT_MAX_BYTES = 16 << 20


def current_drop(drive: Any, config: ExperimentConfig) -> dict[str, Any] | None:
    """The last live_performance report's drop check when it fired against the champion serving now, else None.

    What drift_sensor adds to its retraining reasons: the check is made by the asset (a join over the whole
    log is too slow for every tick); a report about an earlier champion is no reason to retrain the new one.
    """
    from mlgraph.core.untrusted import Unusable, read_regular_file
    from mlgraph.training.promotion import PromotionStore

    path = drive.live_performance_json(config.name)
    if not path.exists():
        return None
    try:
        report = json.loads(read_regular_file(path, REPORT_MAX_BYTES, drive.root_path))
        check = report["performance"]
    except (Unusable, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a live_performance report ({exc}). Fix: materialize live_performance") from None
    if not check.get("dropped"):
        return None
    pointer = PromotionStore(drive.promotion_dir(config.config_hash)).current() or {}
    if str(pointer.get("model_version")) != str(check.get("champion_version")):
        return None
    return check
