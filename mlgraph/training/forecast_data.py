"""The series a forecaster sees: observed rows reindexed to a regular grid, gaps filled causally and reported.

Every forecasting family counts in steps (window, horizon, seasonal period), so a series whose rows skip
time would silently misalign them: seasonal naive would compare different hours of the day, a window of 24
rows would span more than a day. The series is therefore reindexed to its frequency first:

- frequency: `forecast.frequency` when set, else inferred from the training timestamps (pandas' inference
  when the series is regular; otherwise the median spacing, or a calendar month/quarter/year when most
  timestamps fall on one). Evaluation reuses the frequency of the training stretch.
- grid: from the first to the last timestamp at that frequency. A timestamp between grid points moves to
  the nearest one; rows landing on the same point are averaged.
- gaps (grid points without an observation, including rows whose target is missing) are filled causally,
  from earlier values only, so no filled value peeks at a later observation: with a seasonal period p > 1
  the value one season earlier shifted by the change over the season before the last observation
  (v[k-p] + v[a] - v[a-p], a = the last observed step), else the last observed value.
- masks: filled points are never training targets, never scored (CV or test) and not given to Prophet;
  they only appear inside input windows and as seasonal naive's lookup.

The report (`RegularSeries.report`) says how many points were missing and what was done; it goes into
candidates.json, the model metadata and the assets' metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlgraph.core.experiment import ExperimentConfig

# Reindexing that leaves more than this share of the grid empty means the frequency is wrong, not the data.
MAX_MISSING_SHARE = 0.5
CALENDAR_FREQUENCIES = ("MS", "ME", "QS", "QE", "YS", "YE")
CALENDAR_MIN_STEP = pd.Timedelta(days=27)
CALENDAR_MATCH_SHARE = 0.9
FILL_SEASONAL = (
    "seasonal: one season earlier, shifted by the change over the season before the last observation (past values only)"
)
FILL_PREVIOUS = "previous: the last observed value carried forward"
MASKED = "filled points are not training targets, not scored and not given to Prophet"


@dataclass(frozen=True)
class Frequency:
    """A grid spacing: a fixed step (in the timestamps' own integer unit) or a calendar offset."""

    label: str
    source: str  # "config" or "inferred"
    step: int | None = None  # fixed step
    offset: Any = None  # pandas DateOffset (calendar)


@dataclass(frozen=True)
class RegularSeries:
    values: np.ndarray  # float64 on the grid, gaps filled
    timestamps: np.ndarray  # the grid
    observed: np.ndarray  # bool: False where the value was filled
    report: dict[str, Any]

    @property
    def scale(self) -> float:
        """Standard deviation of the observed values (the composite score's unit)."""
        return float(np.std(self.values[self.observed])) or 1.0


def window_inputs(series: np.ndarray, positions: np.ndarray, window: int, horizon: int) -> np.ndarray:
    """Input windows (len(positions), window): for target position p, series[p-horizon-window+1 : p-horizon+1]."""
    positions = np.asarray(positions, dtype=np.int64)
    first = positions - horizon - window + 1
    if positions.size and first.min() < 0:
        raise ValueError(
            f"position {int(positions[first.argmin()])} has fewer than {window + horizon - 1} steps of history"
        )
    return series[first[:, None] + np.arange(window)[None, :]]


@dataclass(frozen=True)
class _Times:
    """Timestamps as integers (their own unit) or floats, with the way back to the input's kind."""

    values: np.ndarray  # int64 (datetimes: ticks of `unit`; integer times) or float64
    present: np.ndarray  # bool: not NaT / NaN
    unit: str | None  # datetime unit ('s', 'ns', ...); None for numeric times
    tz: Any = None

    @classmethod
    def of(cls, timestamps: Any, where: str) -> _Times:
        raw = np.asarray(timestamps)
        present = ~pd.isna(pd.Series(raw)).to_numpy()
        if raw.dtype.kind in "iuf":
            return cls(raw.astype(np.float64 if raw.dtype.kind == "f" else np.int64), present, None)
        try:
            index = pd.DatetimeIndex(raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{where}: the time column holds neither timestamps nor numbers ({exc}). Fix: declare it "
                "'datetime' in 'columns' or point 'time_column' at a timestamp column."
            ) from None
        naive = index.tz_convert(None) if index.tz is not None else index
        return cls(naive.asi8.astype(np.int64), present, index.unit, index.tz)

    @property
    def tick_ns(self) -> int:
        return pd.Timedelta(1, unit=self.unit).value if self.unit else 1

    def timestamp(self, value: float) -> pd.Timestamp:
        return pd.Timestamp(int(value), unit=self.unit)

    def back(self, grid: np.ndarray) -> np.ndarray:
        """Grid integers as timestamps of the input's kind (unit and time zone)."""
        if self.unit is None:
            return grid
        out = pd.DatetimeIndex(grid.astype(np.int64).astype(f"datetime64[{self.unit}]"))
        return (out.tz_localize("UTC").tz_convert(self.tz) if self.tz is not None else out).to_numpy()


def _fixed(step: float, label: str, source: str) -> Frequency:
    if not step > 0:
        raise ValueError(f"frequency {label!r} is not a positive step")
    return Frequency(label, source, step=int(step) if float(step).is_integer() else step)


def _from_offset(offset: Any, tick_ns: int, source: str) -> Frequency:
    try:
        return _fixed(offset.nanos / tick_ns, offset.freqstr, source)
    except ValueError:  # months, quarters, years, anchored weeks: no fixed length
        return Frequency(offset.freqstr, source, offset=offset)


def resolve_frequency(timestamps: Any, configured: str | None, where: str) -> Frequency:
    """The grid spacing: `forecast.frequency` when set, else inferred from `timestamps` (see the module doc)."""
    from pandas.tseries.frequencies import to_offset

    times = _Times.of(timestamps, where)
    unique = np.unique(times.values[times.present])
    if configured is not None:
        if times.unit is not None:
            try:
                return _from_offset(to_offset(configured), times.tick_ns, "config")
            except ValueError:  # a bare number passes the schema (numeric time columns) but is no pandas alias
                raise ValueError(
                    f"{where}: forecast.frequency {configured!r} is not a pandas frequency, and the "
                    "time column holds timestamps. Fix: use an alias such as '1h', 'D', 'W-SUN', "
                    "'MS'."
                ) from None
        try:
            return _fixed(float(configured), configured, "config")
        except ValueError:
            raise ValueError(
                f"{where}: forecast.frequency {configured!r} is not a positive number, but the time "
                "column is numeric. Fix: give the step as a number, e.g. frequency: '1'."
            ) from None
    if unique.size < 3:
        raise ValueError(
            f"{where}: {unique.size} distinct timestamps are too few to infer the series' frequency. "
            "Fix: use more data, or set forecast.frequency."
        )
    step = float(np.median(np.diff(unique)))
    if times.unit is None:
        return _fixed(step, f"{step:g}", "inferred")
    index = pd.DatetimeIndex(unique.astype(f"datetime64[{times.unit}]"))
    inferred = pd.infer_freq(index)
    if inferred is not None:
        return _from_offset(to_offset(inferred), times.tick_ns, "inferred")
    if step * times.tick_ns >= CALENDAR_MIN_STEP.value:
        # Months, quarters and years have no fixed length: a median step would drift off the calendar.
        shares = {alias: _calendar_share(index, alias) for alias in CALENDAR_FREQUENCIES}
        best = max(shares, key=shares.__getitem__)
        if shares[best] >= CALENDAR_MATCH_SHARE:
            return Frequency(to_offset(best).freqstr, "inferred", offset=to_offset(best))
    label = to_offset(pd.Timedelta(round(step * times.tick_ns), unit="ns")).freqstr
    return _fixed(round(step), label, "inferred")


def _calendar_share(index: pd.DatetimeIndex, alias: str) -> float:
    grid = pd.date_range(index[0].normalize(), index[-1], freq=alias)
    return float(np.isin(index, grid).mean()) if len(grid) else 0.0


def _grid(times: _Times, observed: np.ndarray, freq: Frequency, where: str) -> np.ndarray:
    """Grid integers from the first to the last observed time; refuses a grid that would be mostly empty."""
    first, last = observed.min(), observed.max()
    if freq.step is not None:
        size = int(round((last - first) / freq.step)) + 1
        grid = None
    else:
        start, end = freq.offset.rollback(times.timestamp(first)), freq.offset.rollforward(times.timestamp(last))
        grid = pd.date_range(start, end, freq=freq.offset).as_unit(times.unit).asi8.astype(np.int64)
        size = grid.size
    count = np.unique(observed).size
    if size < 2:
        raise ValueError(
            f"{where}: the {freq.source} frequency {freq.label!r} is coarser than the whole series. "
            "Fix: set forecast.frequency to the series' real spacing (e.g. '1h', 'W-SUN', 'MS')."
        )
    if size > count / (1 - MAX_MISSING_SHARE):
        raise ValueError(
            f"{where}: reindexing to the {freq.source} frequency {freq.label!r} makes {size} grid points for "
            f"{count} observed timestamps: more than {MAX_MISSING_SHARE:.0%} would be missing. "
            "Fix: set forecast.frequency to the series' real spacing (e.g. '1h', 'W-SUN', 'MS')."
        )
    return first + np.arange(size) * freq.step if grid is None else grid


def _fill_causal(values: np.ndarray, observed: np.ndarray, period: int) -> None:
    """Fill the gaps of `values` in place from earlier values only (the module docstring's rule)."""
    last = -1
    for k in np.flatnonzero(~observed):
        last = k - 1 if observed[k - 1] else last  # the grid starts at an observation: k >= 1
        if period > 1 and last - period >= 0:
            values[k] = values[k - period] + values[last] - values[last - period]
        else:
            values[k] = values[last]


def regular_series(timestamps: Any, values: Any, freq: Frequency, seasonal_period: int, where: str) -> RegularSeries:
    """`values` at `timestamps` reindexed to the `freq` grid, gaps filled and masked (see the module doc)."""
    values = np.asarray(values, dtype=np.float64)
    times = _Times.of(timestamps, where)
    valid = times.present & np.isfinite(values)
    kept_times, kept = times.values[valid], values[valid]
    if np.unique(kept_times).size < 2:
        raise ValueError(f"{where}: fewer than 2 time steps with a value; a series needs at least 2.")
    grid = _grid(times, kept_times, freq, where)
    right = np.clip(np.searchsorted(grid, kept_times), 1, grid.size - 1)
    left = right - 1
    slot = np.where(np.abs(kept_times - grid[left]) <= np.abs(grid[right] - kept_times), left, right)
    # A calendar grid is rolled out to whole periods: it starts and ends at the first and last observed point.
    grid, slot = grid[slot.min() : slot.max() + 1], slot - slot.min()
    counts = np.bincount(slot, minlength=grid.size)
    observed = counts > 0
    filled = np.bincount(slot, weights=kept, minlength=grid.size) / np.maximum(counts, 1)
    _fill_causal(filled, observed, int(seasonal_period))
    missing = ~observed
    edges = np.diff(np.concatenate([[0], missing.astype(np.int8), [0]]))
    lengths = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    report = {
        "frequency": freq.label,
        "frequency_source": freq.source,
        "rows": int(values.size),
        "rows_without_value_or_time": int((~valid).sum()),
        "grid_points": int(grid.size),
        "observed_points": int(observed.sum()),
        "missing_points": int(missing.sum()),
        "missing_share": round(float(missing.mean()), 6),
        "gaps": int(lengths.size),
        "longest_gap": int(lengths.max()) if lengths.size else 0,
        "off_grid_rows": int((kept_times != grid[slot]).sum()),
        "merged_rows": int(kept_times.size - observed.sum()),
        "fill": (FILL_SEASONAL if seasonal_period > 1 else FILL_PREVIOUS) if missing.any() else "none needed",
        "masked": MASKED if missing.any() else "none",
    }
    if valid.all() and not (missing.any() or report["off_grid_rows"] or report["merged_rows"]):
        # Already regular: the caller's arrays (their dtype and bytes), in time order.
        order = np.argsort(times.values, kind="stable")
        return RegularSeries(values[order], np.asarray(timestamps)[order], observed, report)
    return RegularSeries(filled, times.back(grid), observed, report)


def _frame_columns(frame: pd.DataFrame, config: ExperimentConfig, where: str) -> tuple[np.ndarray, np.ndarray]:
    for field, column in (("time_column", config.time_column), ("target", config.target)):
        if column not in frame.columns:
            raise ValueError(
                f"{where}: {field} column {column!r} is missing. Fix: check '{field}' in the experiment YAML."
            )
    frame = frame.sort_values(config.time_column, kind="stable")
    return frame[config.time_column].to_numpy(), frame[config.target].to_numpy(dtype=np.float64)


def training_series(train: pd.DataFrame, config: ExperimentConfig, where: str = "train.parquet") -> RegularSeries:
    """The training split on its regular grid."""
    ts, y = _frame_columns(train, config, where)
    freq = resolve_frequency(ts, config.forecast.frequency, where)
    return regular_series(ts, y, freq, config.forecast.seasonal_period, where)


def evaluation_series(
    config: ExperimentConfig, train: pd.DataFrame, test: pd.DataFrame, where: str = "test.parquet"
) -> tuple[RegularSeries, np.ndarray]:
    """Train + test on the training stretch's grid, and the grid positions of the observed test points."""
    train_ts, _ = _frame_columns(train, config, "train.parquet")
    freq = resolve_frequency(train_ts, config.forecast.frequency, "train.parquet")
    ts, y = _frame_columns(pd.concat([train, test], ignore_index=True), config, where)
    series = regular_series(ts, y, freq, config.forecast.seasonal_period, where)
    train_times = _Times.of(train_ts, "train.parquet")
    grid = _Times.of(series.timestamps, where).values
    train_end = int(np.searchsorted(grid, train_times.values[train_times.present].max(), side="right"))
    positions = train_end + np.flatnonzero(series.observed[train_end:])
    return series, positions
