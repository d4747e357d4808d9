"""Finding and vetting signal files: the scan, the cursor and one tick's plan (plain Python, no Dagster).

A tick lists `models/*/` (or `evaluation/*/`) with os.scandir and stats only the signal names, so a
drive with thousands of experiments costs milliseconds. A file is taken once it has settled
(unchanged for `settle_seconds`) and passes its schema and, for training, names a checkpoint inside
the drive.

Cursor: the highest change time handled (`high_water_ns`) and the run keys handled at exactly that
time. Change time is max(mtime, ctime): a signal moved into place keeps the mtime of its temporary
file, which can be older than signals already handled, but its ctime is the moment it appeared, so
it still runs. Only settled files raise the high-water mark, and a settled file's change time is
before the tick started, so a file that appears during a scan is never skipped. Run keys are
`<path relative to the drive>:<sha256 of the content>`: a rewrite with new content runs again, and
the same content never runs twice (Dagster also refuses a run key twice per sensor, which covers a
daemon killed between launching a run and saving the cursor).

One file never breaks a tick: reading goes through `mlgraph.core.signals.read_signal_bytes` (regular files
only, bounded in bytes and time), every decode failure is a rejection with its reason, and
`inspect_signal` turns any unexpected error into a rejection of that file carrying its traceback.
A tick also stops taking new files after `MAX_TICK_SECONDS`, leaving the rest for the next one.
"""

import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlgraph.core.cursor import JsonCursor
from mlgraph.core.experiment import is_experiment_name
from mlgraph.core.hashing import sha256_bytes
from mlgraph.core.signals import (
    SIGNAL_MODELS,
    EvalComplete,
    EvalFailed,
    SignalError,
    TrainingComplete,
    parse_signal,
    read_signal_bytes,
    resolve_checkpoint,
)
from mlgraph.core.untrusted import printable

# Bounds one tick's work (each new file is read, validated and turned into a run) well inside the
# daemon's 60 s sensor timeout; a backlog, e.g. after the cursor was reset, drains over several ticks.
MAX_SIGNALS_PER_TICK = 300
# Wall time after which a tick takes no further files (slow reads, a flood of hostile files).
MAX_TICK_SECONDS = 20.0
SKIP_MESSAGE_LIMIT = 2000


@dataclass
class SignalCursor(JsonCursor):
    """The newest change time a signal sensor has acted on, and the run keys of the files changed at that time."""

    KIND = "a signal cursor"
    AFTER_RESET = "every signal is then re-checked and runs that exist are not repeated."

    high_water_ns: int = 0
    keys: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Any) -> "SignalCursor":
        return cls(high_water_ns=int(data["high_water_ns"]), keys=sorted(str(k) for k in data["keys"]))

    def to_json(self) -> dict:
        return {"high_water_ns": self.high_water_ns, "keys": sorted(set(self.keys))}


@dataclass(frozen=True)
class SignalFile:
    """A signal file found by the scan: where it is and when it last changed."""

    path: Path
    experiment: str
    name: str
    changed_ns: int
    size: int


@dataclass
class Accepted:
    file: SignalFile
    signal: TrainingComplete | EvalComplete | EvalFailed
    sha256: str
    run_key: str
    checkpoint: Path | None = None


@dataclass
class Rejected:
    file: SignalFile
    reason: str
    run_key: str
    # Set when the rejection is an unexpected error (a bug to report), not a problem of the file.
    traceback: str | None = None


def scan(base: Path, names: tuple[str, ...]) -> Iterator[SignalFile]:
    """Every `base/*/name` that exists; one lstat per name and directory, nothing is read."""
    try:
        entries = os.scandir(base)
    except FileNotFoundError:
        return
    with entries:
        for entry in entries:
            try:
                if not entry.is_dir():
                    continue
            except OSError:
                continue
            for name in names:
                # Plain string joins: this loop runs once per experiment directory on every tick.
                path = os.path.join(entry.path, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                yield SignalFile(
                    path=Path(path),
                    experiment=entry.name,
                    name=name,
                    changed_ns=max(st.st_mtime_ns, st.st_ctime_ns),
                    size=st.st_size,
                )


def relative_name(drive: Path, path: Path) -> str:
    return path.relative_to(drive).as_posix()


def run_key(drive: Path, path: Path, sha256: str) -> str:
    return f"{relative_name(drive, path)}:{sha256}"


def inspect_signal(drive: Path, file: SignalFile) -> Accepted | Rejected:
    """Read and validate one settled signal file; never raises (an unexpected error rejects the file)."""
    try:
        return _inspect(drive, file)
    except Exception as exc:
        try:
            where = relative_name(drive, file.path)
        except ValueError:
            where = str(file.path)
        return Rejected(
            file,
            f"unexpected error while checking it ({type(exc).__name__}: {str(exc)[:300]}). Fix: report this "
            "mlgraph bug with the traceback from the sensor log; the file is re-checked when it changes",
            f"{where}:error-{file.changed_ns}-{file.size}",
            traceback=traceback.format_exc(),
        )


def _inspect(drive: Path, file: SignalFile) -> Accepted | Rejected:
    unread_key = f"{relative_name(drive, file.path)}:unread-{file.changed_ns}-{file.size}"
    if not is_experiment_name(file.experiment):
        return Rejected(
            file,
            f"directory name '{printable(file.experiment)[:80]}' is not an experiment name. Fix: "
            "name the directory after its experiment (the stem of config/experiments/*.yaml)",
            unread_key,
        )
    try:
        # A regular file only, never opened if it is a FIFO or device; symlinks only to inside the drive.
        data = read_signal_bytes(file.path, within=drive)
    except SignalError as exc:
        return Rejected(file, f"{exc.reason}. Fix: {exc.fix}", unread_key)
    sha = sha256_bytes(data)
    key = run_key(drive, file.path, sha)
    try:
        signal = parse_signal(data, SIGNAL_MODELS[file.name], source=file.path)
    except SignalError as exc:
        return Rejected(file, f"{exc.reason}. Fix: {exc.fix}", key)
    if signal.experiment != file.experiment:
        return Rejected(
            file,
            f"field 'experiment' is {signal.experiment!r} but the file is in directory "
            f"{file.experiment!r}. Fix: write the signal into its experiment's directory",
            key,
        )
    checkpoint = None
    if isinstance(signal, TrainingComplete):
        try:
            checkpoint = resolve_checkpoint(drive, signal.checkpoint_path, source=file.path)
        except SignalError as exc:
            return Rejected(file, f"{exc.reason}. Fix: {exc.fix}", key)
    return Accepted(file, signal, sha, key, checkpoint)


@dataclass
class TickPlan:
    """What one tick decided: files to act on, files rejected, files left to settle, and the next cursor."""

    base: Path
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    settling: list[SignalFile] = field(default_factory=list)
    backlog: int = 0
    scanned: int = 0
    cursor: SignalCursor = field(default_factory=SignalCursor)


def plan_tick(
    drive: Path,
    base: Path,
    names: tuple[str, ...],
    cursor: SignalCursor,
    settle_seconds: float,
    max_files: int = MAX_SIGNALS_PER_TICK,
    now_ns: int | None = None,
    max_seconds: float = MAX_TICK_SECONDS,
    monotonic: Callable[[], float] = time.monotonic,
) -> TickPlan:
    """Scan `base` (a directory of experiment directories on `drive`), keep the settled files changed since
    the cursor (oldest first, at most about `max_files`, taken within about `max_seconds`), inspect them,
    and advance the cursor to the last one taken. Never raises for a file: each becomes accepted or rejected."""
    deadline = monotonic() + max_seconds
    now_ns = time.time_ns() if now_ns is None else now_ns
    settle_ns = int(settle_seconds * 1e9)
    plan = TickPlan(base=base, cursor=SignalCursor(cursor.high_water_ns, list(cursor.keys)))
    fresh = []
    for file in scan(base, names):
        plan.scanned += 1
        if file.changed_ns < cursor.high_water_ns:
            continue
        if now_ns - file.changed_ns < settle_ns:
            # Possibly still being written; a later tick takes it once it stops changing.
            plan.settling.append(file)
            continue
        fresh.append(file)
    fresh.sort(key=lambda f: (f.changed_ns, str(f.path)))
    taken = 0
    for position, file in enumerate(fresh):
        # Stop only between distinct change times, so the files left all lie above the new cursor.
        if (taken >= max_files or monotonic() > deadline) and file.changed_ns > plan.cursor.high_water_ns:
            plan.backlog = len(fresh) - position
            break
        outcome = inspect_signal(drive, file)
        if file.changed_ns > plan.cursor.high_water_ns:
            plan.cursor = SignalCursor(file.changed_ns, [])
        plan.cursor.keys.append(outcome.run_key)
        if outcome.run_key in cursor.keys:
            # Handled last time (same content; at most touched or copied over itself).
            continue
        taken += 1
        (plan.accepted if isinstance(outcome, Accepted) else plan.rejected).append(outcome)
    return plan


def rejection_reason(drive: Path, rejected: Rejected) -> str:
    # Escaped: a directory name may hold control characters or undecodable bytes, and this text goes to
    # the tick record (Postgres refuses NUL) and the logs.
    return printable(f"{relative_name(drive, rejected.file.path)}: {rejected.reason}")


def skip_message(plan: TickPlan, drive: Path, reasons: list[str], notes: list[str]) -> str:
    """Why a tick requested no run: rejections, notes, files still settling, the backlog, or nothing new."""
    parts = []
    if reasons:
        parts.append(f"rejected {len(reasons)}: " + " | ".join(reasons))
    parts.extend(notes)
    if plan.settling:
        parts.append(
            f"{len(plan.settling)} settling: " + ", ".join(relative_name(drive, f.path) for f in plan.settling[:5])
        )
    if plan.backlog:
        parts.append(f"{plan.backlog} more left for the next tick")
    if not parts:
        parts.append(f"no new signal files ({plan.scanned} seen under {plan.base})")
    message = printable("; ".join(parts))
    return message if len(message) <= SKIP_MESSAGE_LIMIT else message[: SKIP_MESSAGE_LIMIT - 1] + "…"
