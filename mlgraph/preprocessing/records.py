"""One record per chunk attempt (streaming_chunks.jsonl) and the operator profile derived from them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from mlgraph.preprocessing.operators import OPERATORS
from mlgraph.preprocessing.options import MB

STAGES = ("statistics", "fit", "transform")  # the streaming passes; a batch run's one record is "batch"
PROFILE_COLUMNS = [
    "chunk_id",
    *(f"{op}_s" for op in OPERATORS),
    "estimated_input_bandwidth_mb_s",
    "input_bytes",
]


@dataclass
class ChunkRecord:
    """What happened to one chunk attempt of one pass: its rows, seconds per operator and working memory.

    A batch run writes the same record for its one "chunk" (the whole table). Serialized with
    sorted keys, so the field order here does not change the bytes on the drive.
    """

    stage: str
    chunk_id: int
    row_start: int
    rows: int
    input_bytes: int
    chunk_size_used: int
    read_s: float
    preprocess_s: float
    feature_engineering_s: float
    feature_selection_s: float
    encode_scale_s: float
    statistics_s: float
    memory_mb: float  # rounded to 4 decimals; predicted, not measured, when `predicted`
    memory_limit_mb: float | None  # as configured
    memory_budget_mb: float | None  # the limit less what the pass holds outside its chunks
    memory_exceeded: bool
    predicted: bool  # an attempt refused from the memory model before its rows were read
    retries: int  # halvings before this attempt
    spilled: bool

    @classmethod
    def of(
        cls,
        stage: str,
        chunk_id: int,
        row_start: int,
        rows: int,
        *,
        input_bytes: int,
        chunk_size_used: int,
        read_s: float,
        seconds: Mapping[str, float],
        memory_mb: float,
        memory_limit_mb: float | None,
        memory_budget_mb: float | None,
        memory_exceeded: bool,
        predicted: bool = False,
        retries: int = 0,
        spilled: bool = False,
    ) -> ChunkRecord:
        """`seconds` by operator name and "statistics" (missing ones are 0); memory rounded as recorded."""
        return cls(
            stage=stage,
            chunk_id=chunk_id,
            row_start=row_start,
            rows=rows,
            input_bytes=input_bytes,
            chunk_size_used=chunk_size_used,
            read_s=read_s,
            preprocess_s=seconds.get("preprocess", 0.0),
            feature_engineering_s=seconds.get("feature_engineering", 0.0),
            feature_selection_s=seconds.get("feature_selection", 0.0),
            encode_scale_s=seconds.get("encode_scale", 0.0),
            statistics_s=seconds.get("statistics", 0.0),
            memory_mb=round(memory_mb, 4),
            memory_limit_mb=memory_limit_mb,
            memory_budget_mb=memory_budget_mb,
            memory_exceeded=memory_exceeded,
            predicted=predicted,
            retries=retries,
            spilled=spilled,
        )

    def operator_seconds(self) -> dict[str, float]:
        return {op: getattr(self, f"{op}_s") for op in OPERATORS}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChunkRecord:
        """A record read back (a spill manifest); ValueError naming the keys when it is not one."""
        names = {f.name for f in fields(cls)}
        missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
        if missing or unknown:
            raise ValueError(f"not a chunk record (missing {missing}, unknown {unknown})")
        return cls(**data)


def operator_profile_rows(records: Iterable[ChunkRecord]) -> list[dict[str, Any]]:
    """operator_profile.csv rows: accepted transform chunks, seconds per operator, input bandwidth."""
    rows = []
    for r in records:
        if r.stage != "transform" or r.memory_exceeded:
            continue
        seconds = r.operator_seconds()
        busy = r.read_s + sum(seconds.values())
        rows.append(
            {
                "chunk_id": r.chunk_id,
                **{f"{op}_s": s for op, s in seconds.items()},
                # Input bytes over the chunk's read + operator time: the input rate this pipeline sustains.
                "estimated_input_bandwidth_mb_s": (r.input_bytes / MB) / busy if busy > 0 else 0.0,
                "input_bytes": r.input_bytes,
            }
        )
    return rows
