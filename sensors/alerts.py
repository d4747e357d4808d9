"""Alert sensors run by the daemon: failed runs (any job, any code location) and free disk space.

Thin wrappers over mlgraph.ops.alerts, which decides what is news and writes it: one batch per
evaluation (one lock, one read, one fsync), webhooks sent by a background thread, never in the tick.
The daemon cannot report its own death, so the stale-heartbeat check runs outside it (`mlgraph alerts
check`, every minute from cron or a systemd timer on the monitoring server).
"""

from __future__ import annotations

import re
import traceback

import dagster as dg

from mlgraph.core.drive import DriveLayout
from mlgraph.core.hashing import sha256_text
from mlgraph.core.tags import SLURM_STATE_TAG, experiment_tag
from mlgraph.ops import alerts, webhook
from mlgraph.slurm.jobs import FAILED_STATES
from resources.storage import SharedDrive

MIN_INTERVAL_SECONDS = 10
DISK_INTERVAL_SECONDS = 60
# The launcher's run-monitoring message names the job's state: "Slurm job 12 OUT_OF_MEMORY (reason ...)".
_SLURM_STATE_IN_MESSAGE = re.compile(r"Slurm job \d+ (?P<state>[A-Z_]+)")
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]


def slurm_state(run: dg.DagsterRun, message: str) -> str | None:
    """The Slurm state of a failed run: the footer's tag, else the state the failure message names."""
    if run.tags.get(SLURM_STATE_TAG):
        return run.tags[SLURM_STATE_TAG].split()[0]
    for match in _SLURM_STATE_IN_MESSAGE.finditer(message):
        if match.group("state") in FAILED_STATES:
            return match.group("state")
    return None


def latest_statuses(instance: dg.DagsterInstance, tag: str, experiment: str) -> list[str]:
    runs = instance.get_runs(
        filters=dg.RunsFilter(tags={tag: experiment}, statuses=FINISHED), limit=alerts.CONSECUTIVE_FAILURE_LIMIT
    )
    return [run.status.value for run in runs]


def build_alert_sensors(
    minimum_interval_seconds: int = MIN_INTERVAL_SECONDS,
    disk_interval_seconds: int = DISK_INTERVAL_SECONDS,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> list[dg.SensorDefinition]:
    """The run-failure, run-success (clears consecutive failures) and disk-space alert sensors."""

    @dg.run_failure_sensor(
        name="alert_run_failure_sensor",
        monitor_all_code_locations=True,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
    )
    def alert_run_failure_sensor(context: dg.RunFailureSensorContext, storage: SharedDrive):
        """Alerts on every failed run, and on an experiment's third failure in a row."""
        run = context.dagster_run
        message = context.failure_event.message or "no failure message"
        state = slurm_state(run, message)
        named = experiment_tag(run.tags)
        changes = [alerts.run_failed_change(run.run_id, run.job_name, message, named[1] if named else None, state)]
        if named:
            changes.append(alerts.consecutive_failures_change(named[1], latest_statuses(context.instance, *named)))
        alerts.record(storage.layout, changes)

    @dg.run_status_sensor(
        name="alert_run_success_sensor",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitor_all_code_locations=True,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
    )
    def alert_run_success_sensor(context: dg.RunStatusSensorContext, storage: SharedDrive):
        """Clears an experiment's consecutive-failures alert when one of its runs succeeds."""
        named = experiment_tag(context.dagster_run.tags)
        if named:
            alerts.consecutive_failures(storage.layout, named[1], latest_statuses(context.instance, *named))

    @dg.sensor(
        name="alert_disk_space_sensor", minimum_interval_seconds=disk_interval_seconds, default_status=default_status
    )
    def alert_disk_space_sensor(context: dg.SensorEvaluationContext, storage: SharedDrive):
        """Alerts when the drive's free space falls under $MLGRAPH_DISK_MIN_FREE_PERCENT (10 %)."""
        condition = alerts.check_disk(storage.layout)
        sent = webhook.stats()
        delivery = (
            f"; webhook since start: {sent['sent']} sent, {sent['failed']} failed, {sent['dropped']} dropped, "
            f"{sent['queued']} queued"
            if webhook.webhook_url()
            else ""
        )
        return dg.SkipReason(f"disk {condition.status}: {condition.message}{delivery}")

    return [alert_run_failure_sensor, alert_run_success_sensor, alert_disk_space_sensor]


def alert_rejected_signals(drive_root, reasons: list[str], log) -> None:
    """One alert per rejected signal (the reason names the file and why), all in one batch (one lock,
    one read, one fsync; webhooks in the background); never breaks the caller's tick."""
    if not reasons:
        return
    try:
        changes = [alerts.signal_rejected_change(sha256_text(reason)[:16], reason) for reason in reasons]
        alerts.record(DriveLayout(drive_root), changes)
    except Exception:
        log.error(f"could not record {len(reasons)} signal-rejection alert(s):\n{traceback.format_exc()}")


ALERT_SENSORS = build_alert_sensors()
