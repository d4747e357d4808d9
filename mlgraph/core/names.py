"""The name rule for experiments and model specs: partition keys, YAML stems, directories, file names."""

from __future__ import annotations

import re

# The experiment-name rule, the one home: partition keys, YAML stems, directories and signal fields.
# It also rules out '..', '/' and absolute paths.
EXPERIMENT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
EXPERIMENT_NAME_RULE = "1-64 characters of a-z, 0-9, '_' or '-', starting with a letter or digit"


def is_experiment_name(value: str) -> bool:
    # fullmatch: a '$' anchor would also accept a trailing newline.
    return EXPERIMENT_NAME_RE.fullmatch(value) is not None
