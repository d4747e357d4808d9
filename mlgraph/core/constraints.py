"""The resource-constraint grid (config/constraints.yaml): one `Constraint` per partition key.

Plain Python, no Dagster: the partitions, the streaming engine and the probe model read it.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlgraph.core.experiment import DEFAULT_CONFIG_DIR, ConfigError, Strict, format_validation_error

CONSTRAINT_KEY_RE = re.compile(r"^c(?P<chunk>\d+)-m(?P<mem>\d+)-p(?P<pct>\d+)$")


class Constraint(BaseModel):
    """One resource constraint: rows per chunk, a memory limit and a share of the CPU cores."""

    model_config = ConfigDict(frozen=True)
    chunk_size: int = Field(gt=0)
    memory_limit_mb: int = Field(gt=0)
    compute_limit: float = Field(gt=0, le=1)

    @property
    def key(self) -> str:
        return f"c{self.chunk_size}-m{self.memory_limit_mb}-p{round(self.compute_limit * 100)}"

    @classmethod
    def parse(cls, key: str) -> Constraint:
        match = CONSTRAINT_KEY_RE.match(key)
        if not match:
            raise ValueError(f"constraint key {key!r} is not of the form c<chunk>-m<MB>-p<percent>")
        return cls(
            chunk_size=int(match["chunk"]),
            memory_limit_mb=int(match["mem"]),
            compute_limit=int(match["pct"]) / 100,
        )


class ConstraintGrid(Strict):
    """config/constraints.yaml: the cross product of these lists is the constraint partition set."""

    chunk_sizes: list[int] = Field(min_length=1)
    memory_limits_mb: list[int] = Field(min_length=1)
    compute_limits: list[float] = Field(min_length=1)

    def constraints(self) -> list[Constraint]:
        return [
            Constraint(chunk_size=c, memory_limit_mb=m, compute_limit=p)
            for c in self.chunk_sizes
            for m in self.memory_limits_mb
            for p in self.compute_limits
        ]


def load_constraint_grid(path: str | Path | None = None) -> ConstraintGrid:
    path = Path(path or DEFAULT_CONFIG_DIR / "constraints.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return ConstraintGrid.model_validate(data)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: missing. Fix: create it with chunk_sizes, memory_limits_mb, compute_limits."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}. Fix: correct the YAML syntax.") from None
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc).replace("experiment config", "constraint grid")) from None
