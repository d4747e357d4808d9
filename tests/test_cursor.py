"""mlgraph.core.cursor: one JSON-cursor type; no cursor is the empty one, a damaged one names the fix."""

from dataclasses import dataclass, field
from typing import Any

import pytest

from mlgraph.core.cursor import CursorError, JsonCursor
from mlgraph.external.signal_scan import MAX_CURSOR_KEYS, SignalCursor, remembered
from sensors.drift import DriftCursor
from sensors.sources import SourceCursor


@dataclass
class SeenCursor(JsonCursor):
    KIND = "a seen cursor"
    SENSOR = "seen_sensor"
    AFTER_RESET = "everything is then seen again."

    seen: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "SeenCursor":
        return cls({str(k): int(v) for k, v in data["seen"].items()})

    def to_json(self) -> dict:
        return {"seen": self.seen}


@pytest.mark.parametrize("raw", [None, ""])
def test_no_cursor_is_the_empty_cursor(raw):
    assert SeenCursor.load(raw) == SeenCursor()


def test_dump_is_canonical_and_compact_and_loads_back():
    cursor = SeenCursor({"b": 2, "a": 1})
    assert cursor.dump() == '{"seen":{"a":1,"b":2}}'
    assert SeenCursor({"a": 1, "b": 2}).dump() == cursor.dump()
    assert SeenCursor.load(cursor.dump()) == cursor
    # A cursor written with spaces (json.dumps' default) reads the same.
    assert SeenCursor.load('{"seen": {"a": 1, "b": 2}}') == cursor


@pytest.mark.parametrize(
    "raw",
    [
        "not json {",  # not JSON
        "[1, 2]",  # JSON, foreign shape (TypeError)
        '{"other": 1}',  # missing key (KeyError)
        '{"seen": [1]}',  # wrong type (AttributeError)
        '{"seen": {"a": "x"}}',  # wrong value (ValueError)
        "null",
        "[" * 100_000,  # nested past the parser's recursion limit
    ],
)
def test_a_damaged_cursor_names_the_sensor_and_the_fix(raw):
    with pytest.raises(CursorError) as caught:
        SeenCursor.load(raw)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert message.startswith(f"sensor cursor {raw[:200]!r} is not a seen cursor (")
    assert message.endswith(
        "Fix: clear the cursor in the Dagster UI (Sensors → seen_sensor → cursor); everything is then seen again."
    )


def test_load_or_reset_warns_and_starts_empty():
    warnings: list[str] = []
    assert SeenCursor.load_or_reset("not json {", warnings.append) == SeenCursor()
    [warning] = warnings
    assert "clear the cursor" in warning and warning.endswith("Starting from an empty cursor.")
    assert SeenCursor.load_or_reset('{"seen":{"a":1}}', warnings.append) == SeenCursor({"a": 1}) and len(warnings) == 1


@pytest.mark.parametrize(
    ("cursor", "text"),
    [
        (
            SignalCursor(12, "models/x/.training_complete", {"b", "a"}),
            '{"ctime_ns":12,"keys":["a","b"],"path":"models/x/.training_complete"}',
        ),
        (
            DriftCursor(triggers={"x": {"at": 1.0, "run_key": "k"}}),
            '{"logs":{},"triggers":{"x":{"at":1.0,"run_key":"k"}}}',
        ),
        (SourceCursor(), "{}"),
    ],
)
def test_the_sensor_cursors_round_trip(cursor, text):
    assert cursor.dump() == text
    assert type(cursor).load(text).dump() == text


def test_the_sensors_name_where_their_cursor_is_cleared():
    with pytest.raises(CursorError, match=r"\(Sensors → cursor\); every signal is then re-checked"):
        SignalCursor.load("{}")
    with pytest.raises(CursorError, match=r"\(Sensors → drift_sensor → cursor\); the cooldown then comes"):
        DriftCursor.load("{}")
    with pytest.raises(CursorError, match=r"\(Sensors → experiment_source_sensor → cursor\); every experiment"):
        SourceCursor.load("[]")


def test_a_signal_cursor_of_the_old_format_loads_as_a_position():
    """{"high_water_ns", "keys"} (before the (ctime, path) order): resumes after that time, keys kept."""
    old = SignalCursor.load('{"high_water_ns":12,"keys":["b","a","b"]}')
    assert old == SignalCursor(12, "", {"a", "b"})
    assert old.dump() == '{"ctime_ns":12,"keys":["a","b"],"path":""}'


@pytest.mark.parametrize(
    "raw",
    [
        '{"ctime_ns":1,"path":"p"}',
        '{"ctime_ns":1,"path":"p","keys":"abc"}',
        '{"keys":[]}',
        '{"high_water_ns":"x","keys":[]}',
    ],
)
def test_a_damaged_signal_cursor_is_refused(raw):
    with pytest.raises(CursorError, match="is not a signal cursor"):
        SignalCursor.load(raw)


def test_a_signal_cursor_orders_files_by_ctime_then_path():
    cursor = SignalCursor(10, "models/b/.training_complete")
    assert cursor.passed(9, "models/z/.training_complete")
    assert cursor.passed(10, "models/a/.training_complete") and cursor.passed(10, "models/b/.training_complete")
    assert not cursor.passed(10, "models/c/.training_complete") and not cursor.passed(11, "models/a/.training_complete")
    assert not SignalCursor().passed(0, "models/a/.training_complete")


def test_remembered_keys_are_one_per_path_and_bounded():
    earlier = {"models/a/.t:old", "models/b/.t:1", "models/c/.t:1"}
    # a's new content replaces its old key; the others stay.
    assert remembered(["models/a/.t:new"], earlier) == {"models/a/.t:new", "models/b/.t:1", "models/c/.t:1"}
    # Over the limit: every key read now, then as many earlier ones as fit.
    assert remembered(["models/a/.t:new", "models/d/.t:1"], earlier, limit=3) == {
        "models/a/.t:new",
        "models/d/.t:1",
        "models/b/.t:1",
    }
    many = {f"models/x{i}/.t:1" for i in range(5000)}
    assert len(remembered([], many)) == MAX_CURSOR_KEYS
    # A path may hold ':' itself; the key's last part is the content's.
    assert remembered(["models/a:b/.t:2"], {"models/a:b/.t:1"}) == {"models/a:b/.t:2"}
