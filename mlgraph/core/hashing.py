"""Content hashing, one implementation: files, bytes, text and canonical JSON."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

_BLOCK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def sha256_file(path: str | os.PathLike[str], block: int = _BLOCK) -> str:
    """SHA-256 of a file, read in blocks so multi-GB datasets never load whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(obj: Any) -> str:
    """Sorted keys, fixed separators: the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, default=str) + "\n"
