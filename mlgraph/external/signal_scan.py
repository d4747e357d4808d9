"""Finding and vetting signal files: the scan, the cursor and one tick's plan (plain Python, no Dagster).

A tick lists `models/*/` (or `evaluation/*/`) with os.scandir and stats only the signal names, so a
drive with thousands of experiments costs milliseconds. A file is taken once it passes its schema and,
for training, names a checkpoint inside the drive: at once when it does, and otherwise judged (rejected,
with the reason) only once it has settled (unchanged for `settle_seconds`), since it may still be written.

Order and cursor: files are handled in the total order (ctime in ns, path relative to the drive), and
the cursor is the position of the last file handled, so a tick can stop after any file and the next
one resumes right after it. Change time is the ctime alone: every write, rename or touch sets it to the
file server's clock, so a signal moved into place (keeping its temporary file's older mtime) still
comes after everything handled, and nobody who can write the drive can date a file into the future or
the past. The mtime is not used: `os.utime` sets it to anything, and files given one future mtime used
to share one change time, which a tick could not stop inside. Only settled files move the cursor, and a
settled file's ctime is before the tick started, so a file that appears during a scan is never skipped.
The cursor also keeps the run keys of the files read lately (one per path, at most MAX_CURSOR_KEYS), so
a file touched or copied over itself with the same content is not handled twice. Run keys are
`<path relative to the drive>:<sha256 of the content>`: a rewrite with new content runs again (Dagster
also refuses a run key twice per sensor, which covers a daemon killed between launching a run and
saving the cursor).

Bounded work: a file whose directory is not an experiment name, or names no experiment the catalog
knows (`experiment_problem`), is rejected from its name alone, without being read, so a hundred
thousand junk files planted in junk directories cost one stat and one set lookup each, once: the
cursor moves past them and they are not looked at again until they change. Only files that are read
count against `max_files`; a tick also stops after `MAX_TICK_SECONDS`, and always handles at least one
file, so a backlog drains and a real signal written after a flood of junk runs within a tick or two.

One file never breaks a tick: reading goes through `mlgraph.core.signals.read_signal_bytes` (regular files
only, bounded in bytes and time), every decode failure is a rejection with its reason, and
`inspect_signal` turns any unexpected error into a rejection of that file carrying its traceback.
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

# Bounds one tick's reads (each file read is validated and may become a run) well inside the daemon's
# 60 s sensor timeout; a backlog, e.g. after the cursor was reset, drains over several ticks.
MAX_SIGNALS_PER_TICK = 300
# Wall time after which a tick takes no further files (slow reads, a flood of hostile files).
MAX_TICK_SECONDS = 20.0
SKIP_MESSAGE_LIMIT = 2000
# Run keys a cursor remembers (about 100 bytes each): the cursor is stored on every tick (Postgres, the UI),
# so it stays under about 30 kB whatever the drive holds. Older keys only spare a touched file a second look.
MAX_CURSOR_KEYS = 256


def key_path(run_key: str) -> str:
    """The path part of a run key (`<path>:<sha256>`, `<path>:unread-...`); a path may hold ':' itself."""
    return run_key.rsplit(":", 1)[0]


@dataclass
class SignalCursor(JsonCursor):
    """A signal sensor's position in the (ctime, path) order of signal files, and the run keys it read lately."""

    KIND = "a signal cursor"
    AFTER_RESET = "every signal is then re-checked and runs that exist are not repeated."

    # The last file handled: its ctime and its path relative to the drive ("" is before every path).
    ctime_ns: int = 0
    path: str = ""
    keys: set[str] = field(default_factory=set)

    @classmethod
    def from_json(cls, data: Any) -> "SignalCursor":
        if not isinstance(data["keys"], list):
            raise TypeError(f"'keys' is a {type(data['keys']).__name__}, not a list")
        keys = {str(k) for k in data["keys"]}
        if "high_water_ns" in data:
            # The format before the (ctime, path) order: every file whose max(mtime, ctime) was below
            # high_water_ns had been handled, and those at it are in keys. Resuming after that ctime skips
            # only files whose mtime was set ahead of their ctime (forged or skewed), none of them a signal
            # the hook or an atomic rename wrote; the keys keep the files at exactly that time from running
            # twice, and the next tick trims them to MAX_CURSOR_KEYS.
            return cls(ctime_ns=int(data["high_water_ns"]), keys=keys)
        return cls(ctime_ns=int(data["ctime_ns"]), path=str(data["path"]), keys=keys)

    def to_json(self) -> dict:
        return {"ctime_ns": self.ctime_ns, "keys": sorted(self.keys), "path": self.path}

    def passed(self, ctime_ns: int, rel: str) -> bool:
        """Whether the file at (ctime_ns, rel) is at or before this position, i.e. was handled already."""
        return ctime_ns < self.ctime_ns or (ctime_ns == self.ctime_ns and rel <= self.path)


def remembered(read_now: list[str], earlier: set[str], limit: int = MAX_CURSOR_KEYS) -> set[str]:
    """The keys a cursor keeps: those read now, then earlier ones of other paths (a path's newer content
    replaces its old key, so a file rewritten with old content is read again), at most `limit`."""
    keys = set(read_now[-limit:])
    paths = {key_path(k) for k in keys}
    for key in sorted(earlier):
        if len(keys) >= limit:
            break
        if key_path(key) not in paths:
            keys.add(key)
    return keys


@dataclass(frozen=True)
class SignalFile:
    """A signal file found by the scan: where it is and when it last changed (its ctime)."""

    location: str  # the path as the scan found it; a string, since most files found are never opened
    rel: str  # relative to the drive, POSIX separators: the cursor's order and the run key's prefix
    experiment: str
    name: str
    ctime_ns: int
    size: int

    @property
    def path(self) -> Path:
        return Path(self.location)

    @property
    def unread_key(self) -> str:
        """The run key of a rejection decided without reading the file: changes when the file does."""
        return f"{self.rel}:unread-{self.ctime_ns}-{self.size}"


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


def scan(base: Path, names: tuple[str, ...]) -> Iterator[tuple[str, str, str, int, int]]:
    """(directory name, signal name, path, ctime_ns, size) of every `base/*/name` that exists; one lstat
    each, nothing read, and plain tuples: most of what a tick scans is behind its cursor."""
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
                # Plain strings: this loop runs once per experiment directory on every tick.
                path = os.path.join(entry.path, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                yield entry.name, name, path, st.st_ctime_ns, st.st_size


def relative_name(drive: Path, path: Path) -> str:
    return path.relative_to(drive).as_posix()


def run_key(drive: Path, path: Path, sha256: str) -> str:
    return f"{relative_name(drive, path)}:{sha256}"


def precheck(file: SignalFile, experiment_problem: Callable[[str], str | None] | None = None) -> Rejected | None:
    """The rejection a file earns from its directory's name alone, None if it must be read to tell.
    `experiment_problem(name)` says why `name` is no usable experiment (e.g. it has no config), else None."""
    if not is_experiment_name(file.experiment):
        return Rejected(
            file,
            f"directory name '{printable(file.experiment)[:80]}' is not an experiment name. Fix: "
            "name the directory after its experiment (the stem of config/experiments/*.yaml)",
            file.unread_key,
        )
    problem = experiment_problem(file.experiment) if experiment_problem is not None else None
    return Rejected(file, problem, file.unread_key) if problem else None


def inspect_signal(drive: Path, file: SignalFile) -> Accepted | Rejected:
    """Read and validate one settled signal file that passed `precheck`; never raises (an unexpected error
    rejects the file)."""
    try:
        return _inspect(drive, file)
    except Exception as exc:
        return Rejected(
            file,
            f"unexpected error while checking it ({type(exc).__name__}: {str(exc)[:300]}). Fix: report this "
            "mlgraph bug with the traceback from the sensor log; the file is re-checked when it changes",
            f"{file.rel}:error-{file.ctime_ns}-{file.size}",
            traceback=traceback.format_exc(),
        )


def _inspect(drive: Path, file: SignalFile) -> Accepted | Rejected:
    try:
        # A regular file only, never opened if it is a FIFO or device; symlinks only to inside the drive.
        data = read_signal_bytes(file.path, within=drive)
    except SignalError as exc:
        return Rejected(file, f"{exc.reason}. Fix: {exc.fix}", file.unread_key)
    sha = sha256_bytes(data)
    key = f"{file.rel}:{sha}"
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
    # Files that were read come first (they are few, and name a known experiment); then those rejected
    # from their directory's name alone, of which a flooded drive may hold any number.
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
    experiment_problem: Callable[[str], str | None] | None = None,
) -> TickPlan:
    """Scan `base` (a directory of experiment directories on `drive`), keep the settled files after the
    cursor in (ctime, path) order, handle them until `max_files` have been read or about `max_seconds`
    have passed (at least one), and move the cursor to the last one handled. Files `precheck` rejects
    (with `experiment_problem`) are not read and do not count against `max_files`. Never raises for a
    file: each becomes accepted or rejected."""
    deadline = monotonic() + max_seconds
    now_ns = time.time_ns() if now_ns is None else now_ns
    settle_ns = int(settle_seconds * 1e9)
    plan = TickPlan(base=base)
    prefix = f"{relative_name(drive, base)}/"
    fresh: list[SignalFile] = []
    for directory, name, path, ctime_ns, size in scan(base, names):
        plan.scanned += 1
        if ctime_ns < cursor.ctime_ns:
            continue  # the common case, decided before any string is built
        rel = f"{prefix}{directory}/{name}"
        if cursor.passed(ctime_ns, rel):
            continue
        file = SignalFile(path, rel, directory, name, ctime_ns, size)
        if now_ns - ctime_ns < settle_ns:
            # Possibly still being written; a later tick takes it once it stops changing. Its ctime is
            # after every settled file's, so the cursor never passes it.
            plan.settling.append(file)
            continue
        fresh.append(file)
    fresh.sort(key=lambda f: (f.ctime_ns, f.rel))
    read_now: list[str] = []
    unread: list[Rejected] = []
    last: SignalFile | None = None
    reads = 0
    for position, file in enumerate(fresh):
        # Any file is a place to stop: the cursor is a position in a total order. The first is always
        # handled, so even a tick whose scan used up its time makes progress.
        if monotonic() > deadline and position:
            plan.backlog = len(fresh) - position
            break
        rejected = precheck(file, experiment_problem)
        if rejected is not None:
            last = file
            unread.append(rejected)
            continue
        if reads >= max_files and position:
            # Files rejected unread still go by until the next one that must be read.
            plan.backlog = len(fresh) - position
            break
        last = file
        reads += 1
        outcome = inspect_signal(drive, file)
        read_now.append(outcome.run_key)
        if outcome.run_key in cursor.keys:
            # Read lately with this content: touched or copied over itself since.
            continue
        (plan.accepted if isinstance(outcome, Accepted) else plan.rejected).append(outcome)
    plan.rejected.extend(unread)
    if monotonic() <= deadline:  # a tick out of time leaves settling files to the next one
        read_now += _take_complete(drive, plan, cursor, max_files - reads, experiment_problem, deadline, monotonic)
    keys = remembered(read_now, cursor.keys)
    plan.cursor = (
        SignalCursor(last.ctime_ns, last.rel, keys) if last else SignalCursor(cursor.ctime_ns, cursor.path, keys)
    )
    return plan


def _take_complete(
    drive: Path,
    plan: TickPlan,
    cursor: SignalCursor,
    budget: int,
    experiment_problem: Callable[[str], str | None] | None,
    deadline: float,
    monotonic: Callable[[], float],
) -> list[str]:
    """Settling files that already read as complete, valid signals: acted on now, not a settle time later.

    A writer still busy cannot pass — a JSON object is only valid once its closing brace is written, and
    a training signal's checkpoint must be there — so the settle time is only needed before *rejecting* a
    file. The cursor does not move over these files (one with an earlier ctime may still appear); their run
    keys are remembered instead, so once settled they are read again and skipped as read lately. Files that
    do not pass stay settling, and are judged (rejected, with the reason) once they have settled.
    """
    taken: list[str] = []  # run keys of complete files, taken now or by an earlier tick
    done: set[str] = set()
    # Bounded like the settled files: at most the tick's remaining reads, within its time (hostile writers
    # can keep any number of files settling).
    for file in sorted(plan.settling, key=lambda f: (f.ctime_ns, f.rel))[: max(budget, 0)]:
        if monotonic() > deadline:
            break
        if precheck(file, experiment_problem) is not None:
            continue
        outcome = inspect_signal(drive, file)
        if isinstance(outcome, Accepted):
            taken.append(outcome.run_key)
            done.add(file.rel)
            if outcome.run_key not in cursor.keys:
                plan.accepted.append(outcome)
    plan.settling = [f for f in plan.settling if f.rel not in done]
    return taken


def rejection_reason(rejected: Rejected) -> str:
    # Escaped: a directory name may hold control characters or undecodable bytes, and this text goes to
    # the tick record (Postgres refuses NUL) and the logs.
    return printable(f"{rejected.file.rel}: {rejected.reason}")


def skip_message(plan: TickPlan, reasons: list[str], notes: list[str], unlisted: int = 0) -> str:
    """Why a tick requested no run: rejections (`unlisted` more than `reasons` shows), notes, files still
    settling, the backlog, or nothing new."""
    parts = []
    if reasons or unlisted:
        listed = " | ".join(reasons) + (f" | and {unlisted} more" if unlisted else "")
        parts.append(f"rejected {len(reasons) + unlisted}: {listed}")
    parts.extend(notes)
    if plan.settling:
        parts.append(f"{len(plan.settling)} settling: " + ", ".join(f.rel for f in plan.settling[:5]))
    if plan.backlog:
        parts.append(f"{plan.backlog} more left for the next tick")
    if not parts:
        parts.append(f"no new signal files ({plan.scanned} seen under {plan.base})")
    message = printable("; ".join(parts))
    return message if len(message) <= SKIP_MESSAGE_LIMIT else message[: SKIP_MESSAGE_LIMIT - 1] + "…"
