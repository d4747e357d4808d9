"""Files on the drive that anyone may have replaced: a FIFO, a link to /dev/zero or out of the drive, a huge
file. Each reader here is bounded and reads only regular files, so none of them blocks or exhausts memory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlgraph.core.atomic import atomic_append_line
from mlgraph.core.untrusted import Unusable, read_regular_tail
from mlgraph.slurm.figures import stderr_hints

STEPD = "slurmstepd: error: Detected 1 oom_kill event in StepId=12.batch. Some of the step tasks have been OOM Killed."


@pytest.mark.timeout(60)
def test_stderr_hints_read_only_the_tail_of_a_regular_file(tmp_path: Path):
    log = tmp_path / "slurm-12.err"
    log.write_text("x" * 1_000_000 + "\n" + STEPD + "\n")
    assert stderr_hints(log) == [STEPD]
    zero = tmp_path / "zero.err"
    zero.symlink_to("/dev/zero")  # before: seek(0, END) is 0 on a device, then read() never ends
    assert stderr_hints(zero) == []
    fifo = tmp_path / "fifo.err"
    os.mkfifo(fifo)  # before: open() blocked until a writer came
    assert stderr_hints(fifo) == []
    assert stderr_hints(tmp_path / "missing.err") == []


@pytest.mark.timeout(60)
def test_read_regular_tail_bounds_and_refusals(tmp_path: Path):
    path = tmp_path / "log"
    path.write_bytes(b"a" * 100 + b"\n" + b"tail")
    assert read_regular_tail(path, 10) == (b"aaaaa\ntail", True)
    assert read_regular_tail(path, 1000) == (b"a" * 100 + b"\ntail", False)
    with pytest.raises(FileNotFoundError):
        read_regular_tail(tmp_path / "missing", 10)
    link = tmp_path / "zero"
    link.symlink_to("/dev/zero")
    with pytest.raises(Unusable, match="character device"):
        read_regular_tail(link, 10)
    outside = tmp_path / "outside"
    outside.write_text("secret")
    inside = tmp_path / "drive"
    inside.mkdir()
    (inside / "log").symlink_to(outside)
    with pytest.raises(Unusable, match="outside the shared drive"):
        read_regular_tail(inside / "log", 10, within=inside)


@pytest.mark.timeout(60)
def test_atomic_append_line_refuses_what_is_not_a_small_regular_file(tmp_path: Path):
    history = tmp_path / "history.jsonl"
    atomic_append_line(history, '{"event": "promote"}')
    atomic_append_line(history, '{"event": "rollback"}\n')
    assert history.read_text() == '{"event": "promote"}\n{"event": "rollback"}\n'

    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)  # before: read_bytes() blocked for ever
    with pytest.raises(Unusable, match=r"fifo\.jsonl: is a named pipe"):
        atomic_append_line(fifo, "{}")
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(secret)  # before: the link's target was copied into the rewritten file
    with pytest.raises(Unusable, match=r"link\.jsonl: is a symlink"):
        atomic_append_line(link, "{}")
    assert link.is_symlink() and secret.read_text() == "password=hunter2\n"
    big = tmp_path / "big.jsonl"
    big.write_bytes(b"{}\n" * 400)
    with pytest.raises(Unusable, match=r"big\.jsonl: 1200 bytes, over the 1000-byte limit"):
        atomic_append_line(big, "{}", max_bytes=1000)
