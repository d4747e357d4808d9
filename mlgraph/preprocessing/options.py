"""What a preprocessing run is told (EngineOptions) and the two ways it refuses (bad input, impossible limit)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

MB = 1024 * 1024  # the unit of every `*_mb` option and record field


class EngineInputError(ValueError):
    """The input cannot be processed; the message names the file, the row/column and the fix."""


class MemoryLimitError(RuntimeError):
    """A chunk at the minimum size still needs more working memory than the limit allows."""


@dataclass(frozen=True)
class EngineOptions:
    """What the operators need to know about the data, and their knobs."""

    target: str
    task: str = "regression"
    time_column: str | None = None
    column_types: Mapping[str, str] = field(default_factory=dict)  # the experiment's `columns:`
    correlation_threshold: float = 0.95
    outlier_z: float = 4.0
    max_categories: int = 30
    max_ratio_columns: int = 4
    skew_threshold: float = 1.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["column_types"] = dict(sorted(self.column_types.items()))
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineOptions:
        return cls(**data)

    @classmethod
    def from_config(cls, config: Any) -> EngineOptions:
        """From a mlgraph.core.experiment.ExperimentConfig."""
        return cls(
            target=config.target,
            task=config.task,
            time_column=config.time_column,
            column_types=dict(config.columns),
            correlation_threshold=config.preprocessing.correlation_threshold,
            outlier_z=config.preprocessing.outlier_z,
        )
