"""Reading bytes that anyone with write access to the drive may have written, with every cost bounded.

Three guards, each a class of hostile input rather than a list of cases:
- files: only a regular file is opened (a FIFO, device, socket or directory at the path is refused
  from its stat, never opened, so it can neither block the reader nor trigger a device's side
  effects), symlinks resolve to a real path that must stay inside an allowed root, and the read is
  bounded in bytes and in time;
- JSON: nesting depth is measured without recursion before the recursive decoder runs, integers and
  other numbers are bounded in length, NaN/Infinity and duplicate keys are refused, and lone
  surrogates (not text) are refused;
- text: control characters (C0, DEL, C1) and lone surrogates are found, described, or escaped.
Every refusal is an `Unusable` with a reason and a fix; callers add the file name.
"""

import errno
import json
import os
import re
import stat
import time
from itertools import accumulate
from pathlib import Path
from typing import BinaryIO

# Deep enough for any schema here, far from the recursive decoder's limit (RecursionError near 1000).
MAX_JSON_DEPTH = 16
# Counts, epochs and job ids fit in 20 digits; Python refuses int strings over 4300 digits with a ValueError.
MAX_INT_DIGITS = 20
MAX_NUMBER_CHARS = 64
# A regular file of at most a few MiB reads in milliseconds; slower means a sick network mount. A read
# blocked inside the kernel (a hard-mounted NFS server that is gone) cannot be interrupted by the
# process at all: mount the drive `soft` or with a timeout; the daemon's sensor timeout is the last bound.
READ_SECONDS = 5.0
_READ_CHUNK = 1 << 16

# C0 controls, DEL, C1 controls (Unicode category Cc) and lone surrogates (which are not text and
# cannot be encoded as UTF-8). Postgres refuses NUL in text; the others corrupt logs and terminals.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Free text (error messages, tracebacks) may hold tabs and line breaks, nothing else from that set.
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_NAMES = {0x00: "NUL", 0x09: "TAB", 0x0A: "LF", 0x0D: "CR", 0x1B: "ESC", 0x7F: "DEL"}


class Unusable(ValueError):
    """Input refused: `reason` says what is wrong (escaped, single-line), `fix` what to do."""

    def __init__(self, reason: str, fix: str):
        self.reason = printable(reason)
        self.fix = fix
        super().__init__(f"{self.reason}. Fix: {fix}")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, multiline: bool = False) -> str:
    r"""`text` with control characters and lone surrogates written as escapes (\x1b, \ud800): safe for
    logs, run tags, Postgres and UTF-8. `multiline` keeps tabs and line breaks."""
    return (_TEXT_CONTROL if multiline else _CONTROL).sub(_escape, text)


def control_character(value: object, multiline: bool = False) -> str | None:
    """What is wrong with the first control character in `value` (a string, or a list or map of them,
    keys included), or None when there is none."""
    if isinstance(value, str):
        found = (_TEXT_CONTROL if multiline else _CONTROL).search(value)
        if found is None:
            return None
        code = ord(found.group())
        kind = "lone surrogate" if 0xD800 <= code <= 0xDFFF else "control character"
        name = _CONTROL_NAMES.get(code)
        return f"holds {kind} U+{code:04X}{f' ({name})' if name else ''} at position {found.start()}"
    if isinstance(value, dict):
        for key, item in value.items():
            if problem := control_character(key, multiline):
                return f"key '{printable(str(key))[:80]}' {problem}"
            if problem := control_character(item, multiline):
                return f"value of '{printable(str(key))[:80]}' {problem}"
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if problem := control_character(item, multiline):
                return f"item {index} {problem}"
    return None


# ---- JSON -------------------------------------------------------------------------------------

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting outside strings, counted without recursion (regex and accumulate run in C)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return 0  # too few brackets to nest deeply: the common case costs two counts
    skeleton = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_BRACKET_STEP.__getitem__, skeleton)), default=0)


def _bounded_int(literal: str) -> int:
    digits = len(literal.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise Unusable(
            f"an integer with {digits} digits (at most {MAX_INT_DIGITS})",
            "write counts and ids as ordinary numbers, or long ids as strings",
        )
    return int(literal)


def _bounded_float(literal: str) -> float:
    value = float(literal) if len(literal) <= MAX_NUMBER_CHARS else None
    if value is None or value in (float("inf"), float("-inf")):
        shown = literal if len(literal) <= 40 else literal[:40] + "…"
        raise Unusable(f"the number {shown} is out of range", "write a finite number of ordinary size")
    return value


def _no_constant(literal: str) -> object:
    raise Unusable(f"{literal} is not a JSON value", "write a finite number, or leave the field out")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        # Readers disagree on which copy wins; the file must say one thing.
        raise Unusable(f"key '{printable(duplicate)[:80]}' appears more than once in one object", "write each key once")
    return result


def decode_json(data: bytes) -> object:
    """UTF-8 JSON bytes → Python value, or Unusable: bad encoding, a byte-order mark, bad syntax, nesting
    over MAX_JSON_DEPTH, oversized numbers, NaN/Infinity, duplicate keys or lone surrogates."""
    if data.startswith(b"\xef\xbb\xbf"):
        # JSON forbids a byte-order mark (RFC 8259 §8.1); other readers of the drive would choke on it.
        raise Unusable("starts with a UTF-8 byte-order mark", "save the file as UTF-8 without a BOM")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unusable(f"not UTF-8 ({exc.reason} at byte {exc.start})", "save the file as UTF-8") from None
    depth = nesting_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise Unusable(
            f"JSON nested {depth} levels deep (at most {MAX_JSON_DEPTH})",
            "write a flat object of fields, as the schema shows",
        )
    try:
        payload = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_int=_bounded_int,
            parse_float=_bounded_float,
            parse_constant=_no_constant,
        )
    except Unusable:
        raise
    except json.JSONDecodeError as exc:
        raise Unusable(
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}; truncated or half-written?)",
            "write the complete JSON object to a temporary file and rename it into place",
        ) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        # Any other refusal of the decoder is still the input's fault, never the caller's.
        raise Unusable(
            f"cannot be decoded ({type(exc).__name__}: {str(exc)[:200]})", "write a small, flat JSON object"
        ) from None
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise Unusable(
            r"a string holds a lone UTF-16 surrogate escape (\ud800-\udfff without its pair)",
            "write real characters, or a complete surrogate pair",
        ) from None
    return payload


# ---- files ------------------------------------------------------------------------------------

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symlink"),
)
# Non-blocking in case the stat was raced; no following a symlink swapped in after the check.
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
)
REGULAR_FIX = "replace it with a regular file written by an atomic rename"


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")


def _open_regular(path: str | Path, within: str | Path | None) -> tuple[int, os.stat_result]:
    """An O_NOFOLLOW, non-blocking read descriptor on the regular file `path` resolves to, and its stat."""
    real = Path(os.path.realpath(path))
    if within is not None and not real.is_relative_to(os.path.realpath(within)):
        raise Unusable(
            f"symlink leads outside the shared drive (to {real})",
            "write the file itself on the drive, not a link to elsewhere",
        )
    before = os.stat(real, follow_symlinks=False)
    if kind := _not_regular(before.st_mode):
        raise Unusable(f"is {kind}, not a regular file; it was not opened", REGULAR_FIX)
    fd = os.open(real, _OPEN_FLAGS)
    opened = os.fstat(fd)
    if _not_regular(opened.st_mode) or (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise Unusable("was replaced while being opened", "write it by one atomic rename")
    return fd, opened


def open_regular(path: str | Path) -> BinaryIO:
    """`path` opened for reading when it is itself a regular file: a symlink there is not followed (ELOOP), a
    FIFO, device or directory is refused from the open descriptor without blocking; both raise OSError. For
    readers that stream a file they bound themselves (the prediction log's readers)."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        if kind := _not_regular(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is {kind}, not a regular file; it was not read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_bounded(fd: int, max_bytes: int, timeout: float) -> bytes:
    # Bounded by bytes (the file may have grown since the stat) and by time.
    deadline = time.monotonic() + timeout
    chunks, size = [], 0
    while size < max_bytes and (chunk := os.read(fd, min(_READ_CHUNK, max_bytes - size))):
        chunks.append(chunk)
        size += len(chunk)
        if time.monotonic() > deadline:
            raise Unusable(
                f"reading it took over {timeout:g} s (a slow or failing network mount?)", "check the drive's mount"
            )
    return b"".join(chunks)


def _os_error(exc: Exception) -> Unusable:
    if isinstance(exc, OSError):
        return Unusable(f"cannot read it ({exc.strerror or exc})", "check that it exists and is readable")
    # A NUL in a path handed in by a caller.
    return Unusable(f"cannot read it ({exc})", "give the file's path")


def read_regular_file(
    path: str | Path, max_bytes: int, within: str | Path | None = None, timeout: float = READ_SECONDS
) -> bytes:
    """The bytes of the regular file at `path` (at most `max_bytes`), or Unusable saying why not.

    A symlink is followed to its real path, which must be a regular file and, when `within` is given,
    lie inside `within` (a link into the drive is legitimate, a link out of it is not). Only after the
    stat says "regular file" is the real path opened, with O_NOFOLLOW and O_NONBLOCK, and the open
    descriptor re-checked to be that same regular file, so a file swapped in between is refused, not
    read. The read stops after `max_bytes` + 1 bytes or `timeout` seconds.
    """
    try:
        fd, opened = _open_regular(path, within)
        try:
            if opened.st_size > max_bytes:
                raise Unusable(
                    f"{opened.st_size} bytes, over the {max_bytes}-byte limit",
                    "write metadata only; keep large payloads beside it and give their path",
                )
            return _read_bounded(fd, max_bytes + 1, timeout)
        finally:
            os.close(fd)
    except Unusable:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise _os_error(exc) from None


def read_regular_tail(
    path: str | Path, max_bytes: int, within: str | Path | None = None, timeout: float = READ_SECONDS
) -> tuple[bytes, bool]:
    """(the last `max_bytes` of the regular file at `path`, whether the file holds more before them).

    `read_regular_file`'s guards, for logs that grow without bound: a file over `max_bytes` is read from
    its end instead of refused. A missing file raises FileNotFoundError; anything else unusable raises
    `Unusable` (callers add the file name).
    """
    try:
        fd, opened = _open_regular(path, within)
        try:
            start = max(0, opened.st_size - max_bytes)
            os.lseek(fd, start, os.SEEK_SET)
            return _read_bounded(fd, max_bytes, timeout), start > 0
        finally:
            os.close(fd)
    except (Unusable, FileNotFoundError):
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise _os_error(exc) from None


_APPEND_FLAGS = (
    os.O_WRONLY
    | os.O_APPEND
    | os.O_CREAT
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
)


def open_append(path: str | Path, within: str | Path | None = None, mode: int = 0o644) -> int:
    """A descriptor appending to the regular file at `path` (created when missing), or Unusable.

    The write-side twin of `read_regular_file`, for files on the drive that anyone may have replaced:
    a symlink at `path` is refused, never followed (O_NOFOLLOW), so client-chosen bytes cannot land in
    the link's target; a FIFO, device or socket is refused from the open descriptor's stat, and the
    open itself cannot block on a FIFO with no reader (O_NONBLOCK, cleared once the file is known to be
    regular). With `within`, the directory's real path must lie inside it: a parent directory swapped
    for a link out of the drive is refused too. The caller closes the descriptor.
    """
    path = Path(path)
    try:
        if within is not None and not Path(os.path.realpath(path.parent)).is_relative_to(os.path.realpath(within)):
            raise Unusable(
                f"its directory leads outside the shared drive (to {os.path.realpath(path.parent)})",
                "make the directory a real directory on the drive, not a link to elsewhere",
            )
        fd = os.open(path, _APPEND_FLAGS, mode)
    except Unusable:
        raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise Unusable("is a symlink; it was not followed", REGULAR_FIX) from None
        if exc.errno == errno.ENXIO:
            raise Unusable("is a named pipe (FIFO); it was not opened", REGULAR_FIX) from None
        raise Unusable(
            f"cannot open it for writing ({exc.strerror or exc})", "check the drive's permissions and free space"
        ) from None
    except (ValueError, TypeError) as exc:
        raise Unusable(f"cannot open it for writing ({exc})", "give the file's path") from None
    try:
        if kind := _not_regular(os.fstat(fd).st_mode):
            raise Unusable(f"is {kind}, not a regular file; nothing was written", REGULAR_FIX)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
