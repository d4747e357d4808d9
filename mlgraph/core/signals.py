"""Signal-file schemas (.training_complete, .eval_complete, .eval_failed) and their strict, bounded reading.

Signal files are small JSON objects (UTF-8, ISO 8601 timestamps with an offset) that one machine
drops on the shared drive for another. Anyone who can write the drive can write one, so reading goes
through `mlgraph.core.untrusted`: only regular files are opened, reads are bounded in bytes and time, the
JSON decoder in depth and number size; every string field refuses control characters, and every id
that can become part of a path (checkpoint, run and job ids, dataset names, config hashes) follows the
checkpoint-id rule, so no value in a signal can point a reader outside its directory. Each
failure is a SignalError naming the file, the problem and the fix. This module imports neither
dagster nor anything heavy: trainers load it through `mlgraph.trainer.hook`.
"""

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from mlgraph.core.drive import (
    EVAL_COMPLETE,
    EVAL_FAILED,
    TRAINING_COMPLETE,
)

# The experiment-name rule; it also rules out '..', '/' and absolute paths.
from mlgraph.core.experiment import EXPERIMENT_NAME_RULE, is_experiment_name
from mlgraph.core.names import CHECKPOINT_ID_RE, CHECKPOINT_ID_RULE, is_checkpoint_id  # noqa: F401 - re-exported
from mlgraph.core.untrusted import Unusable, control_character, decode_json, printable, read_regular_file

# A signal carries metadata, never payload; anything larger is a mistake or an attack.
MAX_SIGNAL_BYTES = 1 << 20
_TEXT_LIMIT = 20_000
# Identifiers and paths become run tags; Postgres indexes tag values (a B-tree row holds ~2.7 kB).
_ID_LIMIT = 256
_PATH_LIMIT = 1024
# Fields of free text (may span lines); every other string field is an identifier or a path, single-line.
FREE_TEXT_FIELDS = frozenset({"error_message", "traceback"})


class SignalError(ValueError):
    """A signal file cannot be used; the message names the file, the problem and the fix."""

    def __init__(self, path: str | Path, reason: str, fix: str):
        self.path = str(path)
        # Escaped: the message goes to logs, tick records and Postgres, whatever bytes the file held.
        self.reason = printable(reason)
        self.fix = fix
        super().__init__(f"{printable(self.path)}: {self.reason}. Fix: {fix}")


def _safe_id(value: str) -> str:
    # Control characters first, so a NUL is reported as one (the message every other field gives).
    problem = control_character(value)
    if problem:
        raise PydanticCustomError("control_character", "{problem}", {"problem": problem})
    if not is_checkpoint_id(value):
        raise PydanticCustomError(
            "unsafe_id",
            "'{value}' is not a valid id ({rule}); ids become file names on the drive, so no '/' or '..'",
            {"value": printable(value[:80]), "rule": CHECKPOINT_ID_RULE},
        )
    return value


# Identifiers (host, user, names) and paths: one line, bounded (they become run tags).
Identifier = Annotated[str, Field(max_length=_ID_LIMIT)]
PathText = Annotated[str, Field(max_length=_PATH_LIMIT)]
# Ids that may become part of a path (checkpoint, run and job ids, dataset names, config hashes): the
# checkpoint-id rule, checked here, at the schema, so no reader has to remember to.
SafeId = Annotated[str, AfterValidator(_safe_id)]


class _Signal(BaseModel):
    # Strict: "10" is not an int and unknown keys are typos; a signal that guesses is worse than none.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    timestamp: AwareDatetime = Field(description="ISO 8601 time with a UTC offset, e.g. 2025-09-30T14:32:15Z")
    experiment: str = Field(description="Experiment name; also the directory the signal sits in")

    @field_validator("*")
    @classmethod
    def _no_control_characters(cls, value: object, info: ValidationInfo) -> object:
        # Every field, present and future: a string field is single-line unless named free text.
        problem = control_character(value, multiline=info.field_name in FREE_TEXT_FIELDS)
        if problem:
            raise PydanticCustomError("control_character", "{problem}", {"problem": problem})
        return value

    @field_validator("experiment")
    @classmethod
    def _experiment(cls, value: str) -> str:
        if not is_experiment_name(value):
            raise ValueError(
                f"'{printable(value[:80])}' is not an experiment name ({EXPERIMENT_NAME_RULE}; "
                "no '/', '..' or absolute paths)"
            )
        return value

    def to_json(self) -> str:
        """Pretty, key-sorted JSON without unset optional fields (what the writers put on the drive)."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True, indent=2) + "\n"


def _job_id(value: object) -> object:
    # Slurm job ids are numbers; a hand-written `"job_id": 12345` is the same id, not a type error.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class TrainingComplete(_Signal):
    """models/{experiment}/.training_complete: a trainer finished and its checkpoint is on the drive."""

    checkpoint_path: PathText = Field(
        min_length=1, description="Checkpoint directory, absolute or relative to the drive"
    )
    hostname: str = Field(min_length=1, max_length=255)
    user: str = Field(min_length=1, max_length=255)
    config_path: PathText | None = None
    num_epochs: int | None = Field(default=None, ge=0)
    final_loss: float | None = Field(default=None, allow_inf_nan=False)
    total_steps: int | None = Field(default=None, ge=0)
    git_commit: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{4,64}$")
    mlflow_run_id: SafeId | None = None
    # Finite: JSON has no NaN, so a NaN written here would come back as null and fail the reader.
    metrics: dict[Identifier, FiniteFloat] | None = Field(default=None, description="Other final training metrics")


class EvalComplete(_Signal):
    """evaluation/{experiment}/.eval_complete: an evaluation finished (status complete or failed)."""

    job_id: SafeId = Field(description="Slurm job id, else the Dagster run id")
    status: Literal["complete", "failed"]
    datasets_evaluated: list[SafeId] | None = None
    metrics_summary: dict[Identifier, float] | None = None
    eval_duration_seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    error_message: str | None = Field(default=None, max_length=_TEXT_LIMIT)
    checkpoint_id: SafeId | None = None
    checkpoint_path: PathText | None = None
    model: Identifier | None = None
    dagster_run_id: SafeId | None = None
    mlflow_run_id: SafeId | None = None
    config_hash: SafeId | None = None

    _coerce_job_id = field_validator("job_id", mode="before")(_job_id)


class EvalFailed(_Signal):
    """evaluation/{experiment}/.eval_failed: the evaluation hit a critical failure and wrote nothing usable."""

    job_id: SafeId
    status: Literal["failed"] = "failed"
    error_type: str | None = Field(default=None, max_length=256)
    error_message: str = Field(min_length=1, max_length=_TEXT_LIMIT)
    traceback: str | None = Field(default=None, max_length=_TEXT_LIMIT)
    checkpoint_id: SafeId | None = None
    checkpoint_path: PathText | None = None
    dagster_run_id: SafeId | None = None

    _coerce_job_id = field_validator("job_id", mode="before")(_job_id)


SIGNAL_MODELS: dict[str, type[_Signal]] = {
    TRAINING_COMPLETE: TrainingComplete,
    EVAL_COMPLETE: EvalComplete,
    EVAL_FAILED: EvalFailed,
}
S = TypeVar("S", bound=_Signal)

_FIXES = {
    "missing": "add this required field",
    "extra_forbidden": "remove this key or fix its spelling",
    "timezone_aware": "add a UTC offset, e.g. 2025-09-30T14:32:15Z",
    "datetime_parsing": "write an ISO 8601 time such as 2025-09-30T14:32:15Z",
    "datetime_type": "write an ISO 8601 time string such as 2025-09-30T14:32:15Z",
    "literal_error": "use one of the allowed values",
    "string_pattern_mismatch": "use the hexadecimal commit hash (git rev-parse HEAD)",
    "control_character": "write plain text: no NUL, escape sequences or other control characters "
    "(line breaks only in error_message and traceback)",
    "string_too_long": "shorten the value (identifiers and paths become run tags)",
    "unsafe_id": "write an id that follows that rule (mlgraph.core.signals.checkpoint_id makes one from a "
    "checkpoint's path)",
    "finite_number": "write a finite number (JSON has no NaN or Infinity)",
}


_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def checkpoint_id(checkpoint_path: str | Path) -> str:
    """A file-name-safe id (CHECKPOINT_ID_RULE): models/x/checkpoints/<id>/final → <id>; otherwise the
    directory's own name."""
    path = Path(checkpoint_path)
    name = path.parent.name if path.name == "final" and path.parent.name else path.name
    return _UNSAFE_ID_CHARS.sub("-", name).strip("-.")[:96] or "checkpoint"


def resolve_checkpoint(drive: str | Path, raw: str, source: str | Path = "<signal>") -> Path:
    """The checkpoint a signal names (absolute, or relative to the drive), which must exist inside the drive."""
    drive = Path(drive).resolve()
    candidate = Path(raw)
    try:
        # resolve() follows symlinks, so a link that leaves the drive is caught here too.
        path = (candidate if candidate.is_absolute() else drive / candidate).resolve()
        inside = path.is_relative_to(drive)
        exists = inside and path.exists()
    except (OSError, ValueError) as exc:
        # A name too long for the file system, a symlink loop, a NUL: the path names nothing usable.
        raise SignalError(
            source,
            f"field 'checkpoint_path': {raw[:200]!r} is not a usable path ({getattr(exc, 'strerror', None) or exc})",
            "give the checkpoint directory's path on the drive",
        ) from None
    if not inside:
        raise SignalError(
            source,
            f"field 'checkpoint_path': {raw!r} resolves to {path}, outside the shared drive {drive}",
            "save the checkpoint under the drive (models/{experiment}/checkpoints/...) and give that path",
        )
    if not exists:
        raise SignalError(
            source,
            f"field 'checkpoint_path': {path} does not exist",
            "write the checkpoint completely before the signal, or correct the path",
        )
    return path


def utc_now() -> datetime:
    return datetime.now(UTC)


def describe_invalid(exc: ValidationError) -> tuple[str, str]:
    """(what is wrong, field by field; how to fix it) for a schema ValidationError, input escaped."""
    problems, fixes = [], []
    for err in exc.errors():
        # A location may be a map key from the file: escaped and cut, like every other echo of input.
        loc = ".".join(printable(str(p))[:80] for p in err["loc"]) or "(top level)"
        problems.append(f"field '{loc}': {err['msg']}")
        fix = _FIXES.get(err["type"], "correct the value")
        if fix not in fixes:
            fixes.append(fix)
    return "; ".join(problems), "; ".join(fixes)


def parse_signal(data: bytes, model: type[S], source: str | Path = "<signal>") -> S:
    """Decode and validate one signal's bytes; every failure is a SignalError naming `source`."""
    if len(data) > MAX_SIGNAL_BYTES:
        raise SignalError(
            source,
            f"{len(data)} bytes, over the {MAX_SIGNAL_BYTES}-byte limit",
            "write metadata only; keep large payloads beside the checkpoint and give their path",
        )
    if not data.strip():
        raise SignalError(
            source, "empty file", "write the JSON object in one atomic rename (mlgraph.trainer.hook does)"
        )
    try:
        payload = decode_json(data)
    except Unusable as exc:
        raise SignalError(source, exc.reason, exc.fix) from None
    if not isinstance(payload, dict):
        raise SignalError(
            source,
            f"must hold a JSON object, got {type(payload).__name__}",
            f"write an object with the {model.__name__} fields",
        )
    try:
        # From the text, not the dict: strict JSON mode reads ISO timestamps, strict Python mode would not.
        return model.model_validate_json(data)
    except ValidationError as exc:
        reason, fix = describe_invalid(exc)
        raise SignalError(source, f"invalid {model.__name__} signal: {reason}", fix) from None


def read_signal_bytes(path: str | Path, within: str | Path | None = None) -> bytes:
    """A signal file's bytes: a regular file only (a FIFO or device is refused unopened), at most
    MAX_SIGNAL_BYTES + 1 bytes, symlinks only to inside `within` (the drive) when given."""
    try:
        return read_regular_file(path, MAX_SIGNAL_BYTES, within=within)
    except Unusable as exc:
        raise SignalError(path, exc.reason, exc.fix) from None


def read_signal(path: str | Path, model: type[S] | None = None, within: str | Path | None = None) -> tuple[S, bytes]:
    """Read a signal file (see read_signal_bytes) and return the signal with its raw bytes."""
    path = Path(path)
    model = model or SIGNAL_MODELS.get(path.name)
    if model is None:
        raise SignalError(path, "unknown signal file name", f"name it one of {', '.join(SIGNAL_MODELS)}")
    data = read_signal_bytes(path, within=within)
    return parse_signal(data, model, source=path), data
