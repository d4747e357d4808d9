"""Slurm job records: states, the `SlurmJob` value, and parsing of scontrol / jobcomp / sacct fields.

Plain parsing, no commands run here (mlgraph.slurm.client runs them); the launcher and any viewer of
the queue share these definitions.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

# Base job states; scontrol/sacct may append qualifiers ("CANCELLED by 0", "COMPLETING+").
PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
ACTIVE_STATES = frozenset(
    {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT", "POWER_UP_NODE"}
)
FAILED_STATES = frozenset(
    {
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)
TERMINAL_STATES = FAILED_STATES | {"COMPLETED"}

# key=value pairs of scontrol/jobcomp lines; values may contain spaces (job names, paths),
# so a pair ends where the next " Key=" begins.
_PAIR_SPLIT = re.compile(r" +(?=[A-Za-z][A-Za-z0-9_:/]*=)")


@dataclass(frozen=True)
class SlurmJob:
    """What Slurm knows about one job; `source` says which command or record answered."""

    job_id: str
    state: str
    source: str
    reason: str | None = None
    exit_code: str | None = None
    elapsed: str | None = None
    time_limit: str | None = None
    cpus: int | None = None
    mem: str | None = None
    max_rss: str | None = None
    node: str | None = None
    partition: str | None = None
    name: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    raw: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def is_failed(self) -> bool:
        return self.state in FAILED_STATES

    def describe(self) -> str:
        """One line for run logs: `Slurm job 12 TIMEOUT (reason TimeLimit, exit 0:15, ...)`."""
        details = [
            f"{label} {value}"
            for label, value in (
                ("reason", self.reason if self.reason not in (None, "None") else None),
                ("exit", self.exit_code),
                ("elapsed", self.elapsed),
                ("time limit", self.time_limit),
                ("cpus", self.cpus),
                ("mem", self.mem),
                ("node", self.node),
            )
            if value not in (None, "")
        ]
        return f"Slurm job {self.job_id} {self.state}" + (f" ({', '.join(details)})" if details else "")


def base_state(state: str) -> str:
    """`CANCELLED by 0` / `COMPLETING+` / `cancelled` -> `CANCELLED` / `COMPLETING`."""
    return state.strip().split(" ")[0].rstrip("+").upper()


def parse_key_values(line: str) -> dict[str, str]:
    """Parse `Key=value Key2=value with spaces ...` as printed by `scontrol -o` and jobcomp/filetxt."""
    pairs: dict[str, str] = {}
    for chunk in _PAIR_SPLIT.split(line.strip()):
        key, sep, value = chunk.partition("=")
        if sep:
            pairs[key] = value.strip()
    return pairs


def _tres_value(tres: str | None, key: str) -> str | None:
    for item in (tres or "").split(","):
        name, _, value = item.partition("=")
        if name == key:
            return value
    return None


def int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def format_seconds(seconds: float) -> str:
    """Slurm's elapsed format: `[D-]HH:MM:SS`."""
    seconds = max(int(round(seconds)), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def _elapsed_between(start: str | None, end: str | None) -> str | None:
    try:
        return format_seconds((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())
    except (TypeError, ValueError):
        return None


def job_from_scontrol(fields: Mapping[str, str]) -> SlurmJob:
    return SlurmJob(
        job_id=fields.get("JobId", ""),
        state=base_state(fields.get("JobState", "UNKNOWN")),
        source="scontrol",
        reason=fields.get("Reason"),
        exit_code=fields.get("ExitCode"),
        elapsed=fields.get("RunTime"),
        time_limit=fields.get("TimeLimit"),
        cpus=int_or_none(fields.get("NumCPUs")),
        mem=_tres_value(fields.get("TRES") or fields.get("ReqTRES"), "mem") or fields.get("MinMemoryNode"),
        node=fields.get("NodeList") if fields.get("NodeList") not in (None, "(null)") else None,
        partition=fields.get("Partition"),
        name=fields.get("JobName"),
        stdout=fields.get("StdOut"),
        stderr=fields.get("StdErr"),
        raw=dict(fields),
    )


def job_from_jobcomp(fields: Mapping[str, str]) -> SlurmJob:
    limit = fields.get("TimeLimit")
    return SlurmJob(
        job_id=fields.get("JobId", ""),
        state=base_state(fields.get("JobState", "UNKNOWN")),
        source="jobcomp",
        exit_code=fields.get("ExitCode"),
        elapsed=_elapsed_between(fields.get("StartTime"), fields.get("EndTime")),
        # jobcomp/filetxt writes the limit in minutes.
        time_limit=format_seconds(int(limit) * 60) if limit and limit.isdigit() else limit,
        cpus=int_or_none(fields.get("ProcCnt")) or int_or_none(_tres_value(fields.get("Tres"), "cpu")),
        mem=_tres_value(fields.get("Tres"), "mem"),
        node=fields.get("NodeList") or None,
        partition=fields.get("Partition"),
        name=fields.get("Name"),
        raw=dict(fields),
    )


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGTP]?)$", re.IGNORECASE)
_UNIT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def size_bytes(value: str) -> float | None:
    """`183M` -> bytes (Slurm's binary units; a bare number is bytes)."""
    match = _SIZE.match(value.strip())
    if not match:
        return None
    number, unit = match.groups()
    return float(number) * _UNIT[unit.upper()]


def larger_size(current: str | None, candidate: str) -> str:
    if current is None:
        return candidate
    a, b = size_bytes(current), size_bytes(candidate)
    return candidate if a is not None and b is not None and b > a else current
