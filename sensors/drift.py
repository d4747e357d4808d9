"""drift_sensor: the closed loop from the prediction log back to training (design document 001, stage 5).

Each tick, for every registered experiment: report a `prediction_log` observation when the log
changed, compute the drift report (the same `build_report` the `drift_report` asset and the service
use; computed here rather than read from the asset's file, so the decision is always about the
newest window and needs no run to refresh a file first) and, on drift, request one `retraining_job`
run tagged with the reasons and the window (not while the baseline describes an earlier champion:
drift_baseline follows a new champion first).

At most one retraining per experiment per `drift.retrain_cooldown_hours`, across daemon restarts:
- the cursor keeps the last trigger per experiment (time and run key);
- before requesting, the instance is asked for a drift-triggered run of the experiment inside the
  cooldown, so a lost or cleared cursor (or a crash after the request, before the cursor was saved)
  cannot start a second one;
- the run key is the experiment and its window (first and last logged time): re-requesting the same
  window after a crash is dropped by Dagster itself.

A performance drop is a retraining reason too (issue 22): when the last live_performance report says the
realized metric over the champion's last `drift.min_labels` labelled predictions fell more than
`drift.performance_drop` below its test value (mlgraph.monitoring.live.current_drop, read from the report,
not recomputed: the join spans the whole log), its reason joins the drift reasons under the same cooldown
and tags; the window is then that of the labelled predictions.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from mlgraph.core.cursor import JsonCursor
from mlgraph.core.experiment import ConfigError
from mlgraph.core.tags import (
    DAGSTER_PARTITION_TAG,
    DAGSTER_RUN_KEY_TAG,
    TAG_CONFIG_HASH,
    TAG_DRIFT_WINDOW,
    TAG_DRIFT_WINDOW_ROWS,
    TAG_EXPERIMENT,
    TAG_RETRAIN_REASON,
    TAG_TRIGGER,
    TRIGGER_DRIFT,
)
from pipeline_assets.jobs import retraining_job
from pipeline_assets.monitoring.assets import prediction_log_observation
from pipeline_assets.partitions import experiment_partitions_def
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive

# A tick reads the newest `drift.window` lines of each log (milliseconds for the default 5,000).
MIN_INTERVAL_SECONDS = 15
MAX_TAG_CHARS = 1000


@dataclass
class DriftCursor(JsonCursor):
    """Last drift-triggered request per experiment ({"at": epoch seconds, "run_key": ...}) and last log version."""

    KIND = "a drift cursor"
    SENSOR = "drift_sensor"
    AFTER_RESET = "the cooldown then comes from the runs the instance holds."

    triggers: dict[str, dict] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> DriftCursor:
        return cls(triggers=dict(data["triggers"]), logs=dict(data["logs"]))

    def to_json(self) -> dict:
        return {"triggers": self.triggers, "logs": self.logs}


def run_key(experiment: str, window: dict) -> str:
    """One key per experiment and window: the same window never starts two runs."""
    return f"drift:{experiment}:{window.get('first_time')}/{window.get('last_time')}:{window.get('rows')}"


def recent_drift_run(instance: dg.DagsterInstance, experiment: str, since: float) -> dg.RunRecord | None:
    """The newest drift-triggered run of `experiment` created after `since` (epoch seconds), if the instance holds one."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            tags={TAG_TRIGGER: TRIGGER_DRIFT, DAGSTER_PARTITION_TAG: experiment},
            created_after=dt.datetime.fromtimestamp(since, dt.UTC),
        ),
        limit=1,
    )
    return records[0] if records else None


def retraining_request(experiment: str, config_hash: str, report: dict) -> dg.RunRequest:
    window = report["window"]
    return dg.RunRequest(
        run_key=run_key(experiment, window),
        partition_key=experiment,
        tags={
            TAG_TRIGGER: TRIGGER_DRIFT,
            TAG_RETRAIN_REASON: "; ".join(report["reasons"])[:MAX_TAG_CHARS],
            TAG_DRIFT_WINDOW: f"{window['first_time']}/{window['last_time']}",
            TAG_DRIFT_WINDOW_ROWS: str(window["rows"]),
            TAG_EXPERIMENT: experiment,
            TAG_CONFIG_HASH: config_hash,
        },
    )


def _performance_drop(storage: SharedDrive, config: Any, context: Any, notes: list[str]) -> dict | None:
    """The live performance drop against the serving champion, if any; a damaged report is noted, never fatal
    (drift is still checked)."""
    from mlgraph.monitoring.live import current_drop

    try:
        return current_drop(storage, config)
    except (OSError, ValueError) as exc:
        context.log.warning(f"{config.name}: {exc}")
        notes.append(f"{config.name}: live_performance report unreadable")
        return None


def _ago(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


@dg.sensor(
    job=retraining_job, minimum_interval_seconds=MIN_INTERVAL_SECONDS, default_status=dg.DefaultSensorStatus.RUNNING
)
def drift_sensor(
    context: dg.SensorEvaluationContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.SensorResult:
    """Requests one retraining run per experiment whose prediction log drifted or whose live performance dropped,
    at most once per cooldown."""
    from mlgraph.monitoring.drift import DRIFT, build_report
    from mlgraph.monitoring.log_status import log_status

    # A damaged cursor must not stop the loop: the instance's drift runs still enforce the cooldown.
    cursor = DriftCursor.load_or_reset(context.cursor, context.log.warning)
    now = time.time()
    requests, observations, notes = [], [], []
    for name in sorted(context.instance.get_dynamic_partitions(experiment_partitions_def.name)):
        try:
            config = catalog.load(name).config
            status = log_status(storage.prediction_log_path(name))
            if status.files and cursor.logs.get(name) != status.version:
                observations.append(prediction_log_observation(name, status))
                cursor.logs[name] = status.version
            if not status.rows:
                notes.append(f"{name}: no predictions logged")
                continue
            drop = _performance_drop(storage, config, context, notes)
            try:
                report = build_report(storage.layout, config)
            except (OSError, ValueError) as exc:
                if drop is None:
                    raise
                # No baseline yet (or a damaged one): the measured performance drop is reason enough.
                context.log.warning(f"{name}: {exc}")
                report = {"status": f"drift not measured ({type(exc).__name__})", "window": None}
        except (ConfigError, OSError, ValueError) as exc:
            # One broken experiment (config, baseline, unreadable log) is reported every tick, never hides the others.
            context.log.warning(f"{name}: {exc}")
            notes.append(f"{name}: error ({type(exc).__name__})")
            continue
        reasons, window = [], report.get("window")
        if report["status"] != DRIFT:
            notes.append(f"{name}: {report['status']}")
        elif report["baseline"]["stale"]:
            # A new champion whose drift_baseline has not run yet: its drift is not measured against this one.
            notes.append(
                f"{name}: drift against a stale baseline (champion v{report['baseline']['champion_version']}, "
                f"now v{report['baseline']['current_champion_version']}); waiting for drift_baseline"
            )
        else:
            reasons = list(report["reasons"])
        if drop is not None:
            reasons.append(drop["reason"])
            if len(reasons) == 1:  # the drop alone: the run names the labelled predictions' window
                window = drop["window"]
        if not reasons:
            continue
        report = {"reasons": reasons, "window": window}
        cooldown = config.drift.retrain_cooldown_hours * 3600
        last = cursor.triggers.get(name)
        if last and now - last["at"] < cooldown:
            notes.append(
                f"{name}: drift, but retraining was requested {_ago(now - last['at'])} ago "
                f"(cooldown {config.drift.retrain_cooldown_hours:g} h)"
            )
            continue
        earlier = recent_drift_run(context.instance, name, now - cooldown) if cooldown else None
        if earlier is not None:
            run = earlier.dagster_run
            cursor.triggers[name] = {
                "at": earlier.create_timestamp.timestamp(),
                "run_key": run.tags.get(DAGSTER_RUN_KEY_TAG),
            }
            notes.append(f"{name}: drift, but run {run.run_id[:8]} retrained it inside the cooldown")
            continue
        request = retraining_request(name, config.config_hash, report)
        context.log.info(f"{name}: retraining ({'; '.join(report['reasons'])})")
        requests.append(request)
        cursor.triggers[name] = {"at": now, "run_key": request.run_key}
    skip = None if requests else ("; ".join(notes) or "no experiment registered")
    return dg.SensorResult(run_requests=requests, asset_events=observations, cursor=cursor.dump(), skip_reason=skip)
