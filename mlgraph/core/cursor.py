"""A sensor's cursor kept as JSON, written once: tolerant loading that names the fix, canonical compact dumping.

    @dataclass
    class DriftCursor(JsonCursor):
        KIND = "a drift cursor"
        SENSOR = "drift_sensor"
        AFTER_RESET = "the cooldown then comes from the runs the instance holds."
        triggers: dict[str, dict] = field(default_factory=dict)

        @classmethod
        def from_json(cls, data): return cls(triggers=dict(data["triggers"]))
        def to_json(self): return {"triggers": self.triggers}

    cursor = DriftCursor.load(context.cursor)                            # damaged: CursorError naming the fix
    cursor = DriftCursor.load_or_reset(context.cursor, context.log.warning)  # damaged: warned, then empty
    return dg.SensorResult(..., cursor=cursor.dump())

No cursor (None, "") is the empty cursor, `cls()`. Anything `from_json` cannot read (not JSON, a foreign
shape, a wrong type) is damaged: `load` raises `CursorError` (a ValueError) whose message quotes the
start of the cursor, says what is wrong and ends with the fix; `load_or_reset` reports that message and
starts from the empty cursor, for a sensor whose other state makes a reset safe. `dump` writes sorted
keys without spaces, so one value always has one text. Plain Python (no Dagster).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar, Self


class CursorError(ValueError):
    """A sensor cursor that cannot be read; the message names the sensor and the fix."""


class JsonCursor:
    """Base of a sensor cursor (a dataclass whose fields all have defaults) stored as one JSON text."""

    KIND: ClassVar[str] = "a sensor cursor"  # "is not {KIND}"
    SENSOR: ClassVar[str | None] = None  # where the UI shows it: Sensors → {SENSOR} → cursor
    AFTER_RESET: ClassVar[str] = ""  # what clearing it costs, said after the fix

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The cursor from parsed JSON; raises ValueError, TypeError, KeyError or AttributeError on a foreign shape."""
        raise NotImplementedError

    def to_json(self) -> Any:
        """The cursor as JSON-able data (dicts, lists, str, int, float, bool, None)."""
        raise NotImplementedError

    @classmethod
    def load(cls, raw: str | None) -> Self:
        """The cursor in `raw`: the empty one for None or "", a `CursorError` naming the fix when it is damaged."""
        if not raw:
            return cls()
        try:
            return cls.from_json(json.loads(raw))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            where = f"Sensors → {cls.SENSOR} → cursor" if cls.SENSOR else "Sensors → cursor"
            raise CursorError(
                f"sensor cursor {raw[:200]!r} is not {cls.KIND} ({exc}). Fix: clear the cursor in the Dagster UI "
                f"({where}); {cls.AFTER_RESET}".rstrip()
            ) from None

    @classmethod
    def load_or_reset(cls, raw: str | None, warn: Callable[[str], Any]) -> Self:
        """As `load`, but a damaged cursor is reported through `warn` and the empty cursor is returned."""
        try:
            return cls.load(raw)
        except CursorError as exc:
            warn(f"{exc} Starting from an empty cursor.")
            return cls()

    def dump(self) -> str:
        """The canonical text: sorted keys, no spaces."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
