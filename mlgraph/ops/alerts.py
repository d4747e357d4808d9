"""Alerts: one JSON line per event in `logs/alerts.jsonl` on the drive, optionally POSTed to a webhook.

Plain Python (no Dagster): the daemon's sensors (sensors/alerts.py, the signal sensors) and the
`mlgraph alerts check` / `mlgraph doctor` commands call in with what they observed (a failed run, a
heartbeat timestamp, a path to measure) and this module decides whether it is news.

Record contract (the dashboard reads it through `read_open_alerts`): one object per line with `time`
(ISO 8601 UTC), `kind` (one of KINDS), `key` (stable per condition), `message`, `severity`
("warning" | "critical"), `resolved` (bool) and optionally `experiment`, `run_id`, `job`, `slurm_state`.
An alert is open while the latest line of its key is not resolved; conditions that can clear (heartbeat,
disk, consecutive failures) write a resolved line when they do. Event alerts (a failed run, a rejected
signal) have nothing to clear, so they count as open for EVENT_OPEN_HOURS after they fired.

Dedupe: a key that is open fires again only after the cooldown (default 1 h), so a check that runs
every minute alerts once per hour, not sixty times. The state is the file itself, read and appended
under an exclusive `flock` on a lock file beside it, so the daemon and cron-run CLI never interleave lines
or both fire the same alert.

Batches: `record` takes every change a sensor tick found (Raise / Resolve) and writes them under one
lock, after one read of the log's tail, with one write and one fsync; the functions for one alert
(`raise_alert`, `resolve_alert`, ...) are batches of one. Webhooks go out after the lock, through
mlgraph.ops.webhook's background sender: a slow or dead receiver never delays the caller.

The log is on the shared drive, where anyone may have put a FIFO or a symlink at its path: it is read
only as a regular file inside the drive, tail-bounded (read_regular_tail), and appended through
open_append (no symlink followed, no FIFO opened); either refusal is an `Unusable` naming the path.

Rotation (docs/operations.md): a batch that would take the log past `$MLGRAPH_ALERT_LOG_MAX_BYTES`
(default 8 MiB, the size every reader reads whole) starts a new log instead, under the same lock: the
latest line of every key still open (unresolved; an event only while it is open or in its cooldown) is
carried, verbatim with its original time, into `alerts.jsonl.rotating` followed by the batch, fsynced;
then the log becomes `alerts.jsonl.1` (replacing the one before) and the new file becomes the log, two
renames. The open alerts and their cooldowns are in whichever file a reader opens: a reader that finds no
`alerts.jsonl` (between the renames, or after a crash there) reads `alerts.jsonl.1`, and the next writer
finishes the rotation from it.

Why this module is long: dedupe, batching and rotation are one protocol over one file under one lock (what
is open decides what a rotation carries and whether a raise is news), and the alert kinds' change builders
are a few lines each; split apart, each half would need the other's private state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mlgraph.core.atomic import fsync_dir
from mlgraph.core.drive import DriveLayout
from mlgraph.core.untrusted import Unusable, open_append, printable, read_regular_tail
from mlgraph.ops import webhook

RUN_FAILED = "run_failed"
CONSECUTIVE_FAILURES = "consecutive_failures"
HEARTBEAT_STALE = "daemon_heartbeat_stale"
DISK_SPACE_LOW = "disk_space_low"
SIGNAL_REJECTED = "signal_rejected"
PERFORMANCE_DROP = "performance_drop"  # live_performance: realized metric below the champion's test (clears)
LABELS_REJECTED = "labels_rejected"  # the labels sensor refused a dropped labels file (an event)
KINDS = (
    RUN_FAILED,
    CONSECUTIVE_FAILURES,
    HEARTBEAT_STALE,
    DISK_SPACE_LOW,
    SIGNAL_REJECTED,
    PERFORMANCE_DROP,
    LABELS_REJECTED,
)
EVENT_KINDS = (RUN_FAILED, SIGNAL_REJECTED, LABELS_REJECTED)
SEVERITIES = ("warning", "critical")
# Display order: an open critical alert is never pushed off a page by a flood of warnings.
SEVERITY_RANK = {"critical": 0, "warning": 1}

COOLDOWN_ENV = "MLGRAPH_ALERT_COOLDOWN_SECONDS"
HEARTBEAT_MAX_AGE_ENV = "MLGRAPH_HEARTBEAT_MAX_AGE_SECONDS"
DISK_MIN_FREE_ENV = "MLGRAPH_DISK_MIN_FREE_PERCENT"
LOG_MAX_BYTES_ENV = "MLGRAPH_ALERT_LOG_MAX_BYTES"
DEFAULT_COOLDOWN_SECONDS = 3600.0
DEFAULT_HEARTBEAT_MAX_AGE_SECONDS = 300.0  # seed 004: "watcher daemon down for >5 minutes"
DEFAULT_DISK_MIN_FREE_PERCENT = 10.0  # seed 004: "disk space <10% on shared drive"
DEFAULT_LOG_MAX_BYTES = 8 * 1024 * 1024  # = TAIL_BYTES: every reader reads the whole log
CONSECUTIVE_FAILURE_LIMIT = 3
EVENT_OPEN_HOURS = 24
MESSAGE_LIMIT = 2000
# user:password@ in a URL an error message happens to quote (a database URL, a webhook). The password
# may hold '/', ':' or an unescaped '@' (SQLAlchemy reads up to the last '@'): everything up to the last
# '@' of the word is masked; masking too much is harmless.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]*:\S*@")
# ?password=... / &password=... (libpq and SQLAlchemy accept the password as a query parameter).
_PASSWORD_PARAMETER = re.compile(r"(?P<name>[?&;]password=)[^&;\s]*", re.IGNORECASE)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"${name}={raw!r} is not a number. Fix: set it to a number or unset it") from None


def cooldown_seconds() -> float:
    return _env_float(COOLDOWN_ENV, DEFAULT_COOLDOWN_SECONDS)


def heartbeat_max_age_seconds() -> float:
    return _env_float(HEARTBEAT_MAX_AGE_ENV, DEFAULT_HEARTBEAT_MAX_AGE_SECONDS)


def disk_min_free_percent() -> float:
    return _env_float(DISK_MIN_FREE_ENV, DEFAULT_DISK_MIN_FREE_PERCENT)


def log_max_bytes() -> int:
    """The size past which the alert log rotates (`$MLGRAPH_ALERT_LOG_MAX_BYTES`, default 8 MiB)."""
    value = _env_float(LOG_MAX_BYTES_ENV, DEFAULT_LOG_MAX_BYTES)
    if value < 1 or value != int(value):
        raise ValueError(
            f"${LOG_MAX_BYTES_ENV}={value!r} is not a positive whole number of bytes. Fix: set it or unset it"
        )
    return int(value)


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def scrub(text: str) -> str:
    """Single-line-safe, bounded, and without credentials embedded in URLs."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    text = _PASSWORD_PARAMETER.sub(r"\g<name>***", text)
    text = printable(text, multiline=True)
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _unusable(path: Path, exc: Unusable) -> Unusable:
    return Unusable(f"alert log {path}: {exc.reason}", exc.fix)


@contextlib.contextmanager
def _locked(path: Path, within: Path | None) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = open_append(lock_path, within=within)
    except Unusable as exc:
        raise Unusable(f"alert lock file {lock_path}: {exc.reason}", exc.fix) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# Only the newest part of a log is read: a log that grew before rotation existed (or one rotated at a size
# set above this) must not slow every sensor tick and page view. Rotation keeps the log within
# max(TAIL_BYTES, log_max_bytes()), and readers read that much, so they read the whole log.
TAIL_BYTES = 8 * 1024 * 1024


def previous_log(path: Path) -> Path:
    """Where the log goes when it rotates (one generation is kept)."""
    return path.with_name(path.name + ".1")


def read_records(path: Path, tail_bytes: int = TAIL_BYTES, within: str | os.PathLike[str] | None = None) -> list[dict]:
    """The well-formed records of the file's last `tail_bytes`, in order (a torn or foreign line is skipped).

    Only a regular file is read (inside `within` when given); anything else raises `Unusable` naming it."""
    records = _read_file(Path(path), tail_bytes, within)
    return [] if records is None else records


def read_log(
    path: Path, tail_bytes: int | None = None, within: str | os.PathLike[str] | None = None
) -> tuple[list[dict], bool]:
    """(the alert log's records, whether they came from the previous log `alerts.jsonl.1`).

    The previous log is read only when there is no log: between rotation's two renames, or after a crash
    between them, it holds every open alert."""
    tail_bytes = max(TAIL_BYTES, log_max_bytes()) if tail_bytes is None else tail_bytes
    records = _read_file(Path(path), tail_bytes, within)
    if records is not None:
        return records, False
    if not os.path.lexists(previous_log(Path(path))):  # no log yet: nothing more to read
        return [], False
    previous = _read_file(previous_log(Path(path)), tail_bytes, within)
    return ([], False) if previous is None else (previous, True)


def _read_file(path: Path, tail_bytes: int, within: str | os.PathLike[str] | None) -> list[dict] | None:
    try:
        data, cut = read_regular_tail(path, tail_bytes, within=within)
    except FileNotFoundError:
        return None
    except Unusable as exc:
        raise _unusable(path, exc) from None
    if cut:
        data = data.split(b"\n", 1)[-1]  # the first line is cut in the middle
    records = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("key"), str):
            records.append(record)
    return records


def _latest_by_key(records: Iterable[dict]) -> dict[str, dict]:
    latest: dict[str, dict] = {}
    for record in records:
        latest[record["key"]] = record
    return latest


def _encode(records: Iterable[dict]) -> bytes:
    return b"".join((json.dumps(record, sort_keys=True) + "\n").encode("utf-8") for record in records)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _open_append(path: Path, within: Path | None) -> int:
    try:
        return open_append(path, within=within)
    except Unusable as exc:
        raise _unusable(path, exc) from None


def _carried(records: Iterable[dict], now: datetime, cooldown: float) -> list[dict]:
    """The latest line of every key a new log must keep, in the order they were written: every unresolved
    condition, and an event while it is open (EVENT_OPEN_HOURS) or in its cooldown. A key left out
    behaves as a resolved one does: a Raise fires, a Resolve writes nothing."""
    latest: dict[str, dict] = {}
    for line in records:
        latest.pop(line["key"], None)
        latest[line["key"]] = line
    keep_events = max(EVENT_OPEN_HOURS * 3600.0, cooldown)
    carried = []
    for line in latest.values():
        if line.get("resolved"):
            continue
        fired = _parse_time(line.get("time"))
        if line.get("kind") in EVENT_KINDS and fired is not None and (now - fired).total_seconds() > keep_events:
            continue
        carried.append(line)
    return carried


def _rotate(path: Path, data: bytes, within: Path | None, *, keep_current: bool) -> None:
    """Make `data` the new log, the log (when `keep_current`) the previous one; the lock is held. The
    new log is complete and fsynced before it is renamed into place, so a reader opens either the old
    log, or (between the renames) none and then reads the previous one, or the new log."""
    staged = path.with_name(path.name + ".rotating")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)  # left by a writer that died mid-rotation: its content is in the logs
    except OSError as exc:
        raise Unusable(
            f"alert log {staged}: cannot remove it ({exc.strerror or exc})", "remove it by hand (it holds nothing)"
        ) from None
    fd = _open_append(staged, within)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    try:
        if keep_current:
            os.replace(path, previous_log(path))
        os.replace(staged, path)
    except OSError as exc:
        raise Unusable(
            f"alert log {path}: cannot rotate it ({exc.strerror or exc})",
            f"make {previous_log(path).name} a regular file (or remove it) and check the drive's permissions",
        ) from None
    fsync_dir(path.parent)


def _append(
    path: Path,
    before: list[dict],
    written: list[dict],
    within: Path | None,
    *,
    from_previous: bool,
    max_bytes: int,
    now: datetime,
    cooldown: float,
) -> None:
    """Every line in one write (the lock is held, so none interleaves) and one fsync; into a new log,
    after the lines carried from `before` (the records read before this batch), when the log would grow
    past `max_bytes` or when a rotation was left half done (`from_previous`: there is no log)."""
    data = _encode(written)
    if not from_previous:
        fd = _open_append(path, within)
        try:
            size = os.fstat(fd).st_size
            if size == 0 or size + len(data) <= max_bytes:
                _write_all(fd, data)
                return
        finally:
            os.close(fd)
    _rotate(path, _encode(_carried(before, now, cooldown)) + data, within, keep_current=not from_previous)


@dataclass(frozen=True)
class Raise:
    """A condition observed: recorded unless its key is open and fired within the cooldown."""

    kind: str
    key: str
    message: str
    severity: str
    experiment: str | None = None
    run_id: str | None = None
    job: str | None = None
    slurm_state: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.severity not in SEVERITIES:
            raise ValueError(
                f"alert kind {self.kind!r} / severity {self.severity!r}: expected one of {KINDS} / {SEVERITIES}"
            )

    def record(self, now: datetime) -> dict:
        record = {
            "time": iso(now),
            "kind": self.kind,
            "key": self.key,
            "message": scrub(self.message),
            "severity": self.severity,
            "resolved": False,
        }
        for name in ("experiment", "run_id", "job", "slurm_state"):
            if value := getattr(self, name):
                record[name] = scrub(str(value))
        return record


@dataclass(frozen=True)
class Resolve:
    """A condition cleared: a resolved line when its key is open, nothing otherwise."""

    key: str
    message: str


Change = Raise | Resolve


def record(
    drive: DriveLayout,
    changes: Iterable[Change | None],
    *,
    cooldown: float | None = None,
    now: datetime | None = None,
    max_bytes: int | None = None,
) -> list[dict]:
    """Write every change that is news, in order, under one lock, one read, one write and one fsync
    (rotating the log first when it would grow past `max_bytes`, default `log_max_bytes()`); queue each
    written record for the webhook (never waited for). The records written (None is skipped)."""
    changes = [change for change in changes if change is not None]
    if not changes:
        return []
    now = now or utc_now()
    cooldown = cooldown_seconds() if cooldown is None else cooldown
    max_bytes = log_max_bytes() if max_bytes is None else max_bytes
    path = drive.alerts_jsonl()
    within = drive.root_path
    written: list[dict] = []
    with _locked(path, within):
        before, from_previous = read_log(path, max(TAIL_BYTES, max_bytes), within)
        latest = _latest_by_key(before)
        for change in changes:
            last = latest.get(change.key)
            if isinstance(change, Raise):
                if last is not None and not last.get("resolved"):
                    fired = _parse_time(last.get("time"))
                    if fired is not None and (now - fired).total_seconds() < cooldown:
                        continue
                line = change.record(now)
            else:
                if last is None or last.get("resolved"):
                    continue
                line = {**last, "time": iso(now), "message": scrub(change.message), "resolved": True}
            latest[change.key] = line
            written.append(line)
        if written:
            _append(
                path,
                before,
                written,
                within,
                from_previous=from_previous,
                max_bytes=max_bytes,
                now=now,
                cooldown=cooldown,
            )
    for line in written:
        webhook.submit(line)
    return written


def raise_alert(
    drive: DriveLayout,
    kind: str,
    key: str,
    message: str,
    severity: str,
    *,
    experiment: str | None = None,
    run_id: str | None = None,
    job: str | None = None,
    slurm_state: str | None = None,
    cooldown: float | None = None,
    now: datetime | None = None,
) -> dict | None:
    """Record (and queue for the webhook) the alert unless its key is open and fired within the cooldown;
    the record or None. Several alerts at once: `record`."""
    change = Raise(kind, key, message, severity, experiment, run_id, job, slurm_state)
    written = record(drive, [change], cooldown=cooldown, now=now)
    return written[0] if written else None


def resolve_alert(drive: DriveLayout, key: str, message: str, now: datetime | None = None) -> dict | None:
    """Write a resolved line when the key is open (the condition cleared); the record or None."""
    written = record(drive, [Resolve(key, message)], now=now)
    return written[0] if written else None


def display_order(alerts: Iterable[dict]) -> list[dict]:
    """Critical first, then warning (then anything else), newest first within each severity."""
    newest_first = sorted(alerts, key=lambda r: str(r.get("time")), reverse=True)
    return sorted(newest_first, key=lambda r: SEVERITY_RANK.get(str(r.get("severity")), len(SEVERITY_RANK)))


def read_open_alerts(drive: DriveLayout | str | os.PathLike[str], now: datetime | None = None) -> list[dict]:
    """Open alerts, critical first and newest first within a severity: the latest line of each key,
    unless resolved (or an event over a day old)."""
    layout = drive if isinstance(drive, DriveLayout) else DriveLayout.at(drive)
    now = now or utc_now()
    open_alerts = []
    for line in _latest_by_key(read_log(layout.alerts_jsonl(), within=layout.root_path)[0]).values():
        if line.get("resolved"):
            continue
        fired = _parse_time(line.get("time"))
        if line.get("kind") in EVENT_KINDS and fired and (now - fired).total_seconds() > EVENT_OPEN_HOURS * 3600:
            continue
        open_alerts.append(line)
    return display_order(open_alerts)


@dataclass(frozen=True)
class Condition:
    """The outcome of one check: status "ok", "fail" or "skipped", and a line that says why."""

    status: str
    message: str

    @property
    def failed(self) -> bool:
        return self.status == "fail"


def heartbeat_condition(latest: float | None, now: datetime | None = None, max_age: float | None = None) -> Condition:
    """`latest`: the newest daemon heartbeat (epoch seconds) the caller read from the instance, or None."""
    if latest is None:
        return Condition("skipped", "no daemon heartbeat recorded (no daemon started on this instance yet)")
    max_age = heartbeat_max_age_seconds() if max_age is None else max_age
    age = (now or utc_now()).timestamp() - latest
    if age > max_age:
        return Condition(
            "fail",
            f"the daemon's last heartbeat is {age:.0f}s old (limit {max_age:.0f}s): "
            "dagster-daemon is down or hung. Fix: restart it on the Slurm head node",
        )
    return Condition("ok", f"daemon heartbeat {max(age, 0):.0f}s old (limit {max_age:.0f}s)")


def disk_condition(path: Path, min_free_percent: float | None = None) -> Condition:
    """Free space of the filesystem holding `path` against the threshold."""
    min_free_percent = disk_min_free_percent() if min_free_percent is None else min_free_percent
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free = 100.0 * usage.free / usage.total if usage.total else 0.0
    text = (
        f"{free:.1f}% free on the drive ({usage.free / 2**30:.1f} GiB of {usage.total / 2**30:.1f} GiB "
        f"at {path}; limit {min_free_percent:g}%)"
    )
    if free < min_free_percent:
        return Condition("fail", text + ". Fix: remove old artifacts/backups or grow the volume")
    return Condition("ok", text)


def condition_change(condition: Condition, kind: str, key: str) -> Change | None:
    """A failed check raises a critical alert, a passing one resolves it, a skipped one does neither."""
    if condition.failed:
        return Raise(kind, key, condition.message, "critical")
    if condition.status == "ok":
        return Resolve(key, f"resolved: {condition.message}")
    return None


def _apply(drive: DriveLayout, condition: Condition, kind: str, key: str, now: datetime | None) -> Condition:
    record(drive, [condition_change(condition, kind, key)], now=now)
    return condition


def check_heartbeat(drive: DriveLayout, latest: float | None, now: datetime | None = None) -> Condition:
    return _apply(drive, heartbeat_condition(latest, now), HEARTBEAT_STALE, HEARTBEAT_STALE, now)


def check_disk(drive: DriveLayout, now: datetime | None = None) -> Condition:
    return _apply(drive, disk_condition(drive.root_path), DISK_SPACE_LOW, DISK_SPACE_LOW, now)


def _one(drive: DriveLayout, change: Change | None, now: datetime | None) -> dict | None:
    written = record(drive, [change], now=now)
    return written[0] if written else None


def run_failed_change(
    run_id: str, job: str, message: str, experiment: str | None = None, slurm_state: str | None = None
) -> Raise:
    where = f" of {experiment}" if experiment else ""
    state = f" (Slurm {slurm_state})" if slurm_state else ""
    return Raise(
        RUN_FAILED,
        f"{RUN_FAILED}:{run_id}",
        f"run {run_id[:8]} of job {job}{where} failed{state}: {message}",
        "warning",
        experiment=experiment,
        run_id=run_id,
        job=job,
        slurm_state=slurm_state,
    )


def run_failed(
    drive: DriveLayout,
    run_id: str,
    job: str,
    message: str,
    experiment: str | None = None,
    slurm_state: str | None = None,
    now: datetime | None = None,
) -> dict | None:
    return _one(drive, run_failed_change(run_id, job, message, experiment, slurm_state), now)


def consecutive_failures_change(experiment: str, latest_statuses: list[str]) -> Change | None:
    """`latest_statuses`: the experiment's finished runs, newest first ("FAILURE", "SUCCESS", ...)."""
    key = f"{CONSECUTIVE_FAILURES}:{experiment}"
    recent = latest_statuses[:CONSECUTIVE_FAILURE_LIMIT]
    if len(recent) == CONSECUTIVE_FAILURE_LIMIT and all(s == "FAILURE" for s in recent):
        return Raise(
            CONSECUTIVE_FAILURES,
            key,
            f"the last {CONSECUTIVE_FAILURE_LIMIT} runs of experiment {experiment} failed",
            "critical",
            experiment=experiment,
        )
    if recent and recent[0] == "SUCCESS":
        return Resolve(key, f"resolved: a run of experiment {experiment} succeeded")
    return None


def consecutive_failures(
    drive: DriveLayout, experiment: str, latest_statuses: list[str], now: datetime | None = None
) -> dict | None:
    return _one(drive, consecutive_failures_change(experiment, latest_statuses), now)


def signal_rejected_change(key: str, reason: str, experiment: str | None = None) -> Raise:
    """`key`: the rejection's run key (path + content hash), so one file's content alerts once."""
    return Raise(
        SIGNAL_REJECTED, f"{SIGNAL_REJECTED}:{key}", f"rejected signal {reason}", "warning", experiment=experiment
    )


def signal_rejected(
    drive: DriveLayout, key: str, reason: str, experiment: str | None = None, now: datetime | None = None
) -> dict | None:
    return _one(drive, signal_rejected_change(key, reason, experiment), now)


def performance_drop_change(experiment: str, check: dict) -> Change | None:
    """The live_performance drop check (mlgraph.monitoring.live.performance_check) as an alert: raised while
    the realized metric is too far below the champion's test value, resolved once a check passes again;
    nothing while there are too few labels to check."""
    key = f"{PERFORMANCE_DROP}:{experiment}"
    if check.get("dropped"):
        return Raise(PERFORMANCE_DROP, key, f"{experiment}: {check['reason']}", "critical", experiment=experiment)
    if check.get("checked"):
        return Resolve(key, f"{experiment}: {check['reason']}")
    return None


def labels_rejected_change(key: str, reason: str, experiment: str | None = None) -> Raise:
    """`key`: the rejected file's name and size, so one file alerts once."""
    return Raise(
        LABELS_REJECTED, f"{LABELS_REJECTED}:{key}", f"rejected labels file {reason}", "warning", experiment=experiment
    )
