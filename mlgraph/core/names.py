"""The name rules: experiments and model specs (partition keys, YAML stems, directories, file names) and
ids that become parts of paths (checkpoints, runs, jobs, datasets, config hashes)."""

from __future__ import annotations

import re

# The experiment-name rule, the one home: partition keys, YAML stems, directories and signal fields.
# It also rules out '..', '/' and absolute paths.
EXPERIMENT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
EXPERIMENT_NAME_RULE = "1-64 characters of a-z, 0-9, '_' or '-', starting with a letter or digit"


def is_experiment_name(value: str) -> bool:
    # fullmatch: a '$' anchor would also accept a trailing newline.
    return EXPERIMENT_NAME_RE.fullmatch(value) is not None


# The checkpoint-id rule, its one home. Every string `checkpoint_id` returns follows it, and so must every id a
# signal carries, because ids end up in paths: the report reads predictions/{dataset}-checkpoint-{id}.parquet,
# dataset names name predictions/ files and metrics/dataset={d}/ directories, a config hash names
# model-promotion/global/{hash}/, run and job ids name log files and MLflow run directories. The rule admits
# no '/' or '\\', never '.' or '..' as a whole name, and no leading '-' (read as an option by a command).
CHECKPOINT_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")
CHECKPOINT_ID_RULE = "1-96 characters of A-Z, a-z, 0-9, '_', '.' or '-', starting with a letter, digit or '_'"


def is_checkpoint_id(value: str) -> bool:
    # fullmatch: a '$' anchor would also accept a trailing newline.
    return CHECKPOINT_ID_RE.fullmatch(value) is not None
