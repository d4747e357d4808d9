"""Deterministic demo-data generators: the same name, rows and seed always give the same bytes.

Rows are produced in fixed blocks, each block seeded from (seed, block index), so the first
N rows of a 5M-row benchmark file are the same rows as an N-row demo dataset, and files far
larger than memory are written block by block.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlgraph.core.atomic import atomic_path

BLOCK_ROWS = 100_000

_CITIES = np.array(["Berlin", "London", "Madrid", "Paris", "Warsaw", "Lisbon"])
_CITY_FACTOR = np.array([1.05, 1.20, 0.92, 1.10, 0.78, 0.85])
_EDUCATION = np.array(["high_school", "bachelor", "master", "phd"])
_EDU_BONUS = np.array([0.0, 9_000.0, 16_000.0, 24_000.0])
_JOBS = np.array(["analyst", "engineer", "scientist", "manager", "director"])
_JOB_BASE = np.array([38_000.0, 52_000.0, 56_000.0, 64_000.0, 88_000.0])

_COUNTRIES = np.array(["US", "IN", "GB", "DE", "NG", "PK", "CA", "EG", "BR", "FR", "KE", "PH", "AU", "ZA", "MX"])
_COUNTRY_P = np.array([22, 18, 9, 6, 6, 5, 5, 4, 4, 4, 4, 4, 3, 3, 3], dtype=float)
_COUNTRY_P /= _COUNTRY_P.sum()


def _salary_block(rng: np.random.Generator, n: int, offset: int) -> pa.Table:
    age = rng.integers(21, 66, n)
    years = np.clip(rng.gamma(2.2, 3.5, n), 0, age - 18).round(1)
    edu = rng.choice(4, n, p=[0.2, 0.45, 0.27, 0.08])
    job = rng.choice(5, n, p=[0.25, 0.35, 0.15, 0.18, 0.07])
    city = rng.integers(0, len(_CITIES), n)
    hours = rng.normal(40, 5, n).clip(15, 70).round(1)
    rating = rng.integers(1, 6, n)
    remote = rng.random(n) < 0.3
    certs = rng.poisson(1.2, n).astype(float)
    salary = (
        (_JOB_BASE[job] + _EDU_BONUS[edu] + 2_100 * years + 900 * (rating - 3) + 1_500 * certs) * _CITY_FACTOR[city]
        + 150 * (hours - 40)
        + rng.normal(0, 6_000, n)
    ).round(2)
    # Real HR exports have gaps; the engine and the model pipelines must impute them.
    hours[rng.random(n) < 0.01] = np.nan
    certs[rng.random(n) < 0.02] = np.nan
    return pa.table(
        {
            "age": pa.array(age, pa.int64()),
            "years_experience": years,
            "education": _EDUCATION[edu],
            "job_title": _JOBS[job],
            "city": _CITIES[city],
            "hours_per_week": pa.array(hours, from_pandas=True),
            "performance_rating": pa.array(rating, pa.int64()),
            "remote": remote,
            "certifications": pa.array(certs, from_pandas=True),
            "salary": salary,
        }
    )


def _student_block(rng: np.random.Generator, n: int, offset: int) -> pa.Table:
    country = rng.choice(len(_COUNTRIES), n, p=_COUNTRY_P)
    days = rng.integers(0, 366, n)
    engaged = rng.random(n) < 0.35
    minutes = np.where(engaged, rng.lognormal(6.0, 1.0, n), rng.lognormal(3.5, 1.2, n)).round(1)
    courses = rng.poisson(np.where(engaged, 3.0, 0.8))
    exams_started = rng.poisson(np.where(engaged, 2.5, 0.3))
    exams_passed = rng.binomial(exams_started, 0.6)
    exam_minutes = (exams_started * rng.gamma(2.0, 12.0, n)).round(1)
    logit = (
        -5.3
        + 0.9 * np.log1p(minutes) / 3
        + 0.35 * courses
        + 0.45 * exams_passed
        + 0.002 * days
        + np.where(np.isin(country, [0, 2, 3, 6]), 0.4, 0.0)
    )
    purchased = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return pa.table(
        {
            "student_country": _COUNTRIES[country],
            "days_on_platform": pa.array(days, pa.int64()),
            "minutes_watched": minutes,
            "courses_started": pa.array(courses, pa.int64()),
            "practice_exams_started": pa.array(exams_started, pa.int64()),
            "practice_exams_passed": pa.array(exams_passed, pa.int64()),
            "minutes_spent_on_exams": exam_minutes,
            "purchased": purchased,
        }
    )


_FORECAST_START = dt.datetime(2023, 1, 1)
# Fixed public holidays (month, day) so the calendar is the same every year.
_HOLIDAYS = {(1, 1), (5, 1), (7, 4), (10, 3), (12, 25), (12, 26)}


def _demand_block(rng: np.random.Generator, n: int, offset: int) -> pa.Table:
    t = np.arange(offset, offset + n)
    ts = np.datetime64(_FORECAST_START, "h") + t.astype("timedelta64[h]")
    hour = t % 24
    day_of_week = ((t // 24) + _FORECAST_START.weekday()) % 7
    day_of_year = (ts.astype("datetime64[D]") - ts.astype("datetime64[Y]")).astype(int)
    month = ts.astype("datetime64[M]").astype(int) % 12 + 1
    day_of_month = (ts.astype("datetime64[D]") - ts.astype("datetime64[M]")).astype(int) + 1
    is_weekend = day_of_week >= 5
    is_holiday = np.array([(m, d) in _HOLIDAYS for m, d in zip(month, day_of_month, strict=True)])
    season = np.sin(2 * np.pi * (day_of_year - 100) / 365.25)
    temperature = (12 + 10 * season + 5 * np.sin(2 * np.pi * (hour - 9) / 24) + rng.normal(0, 2, n)).round(2)
    humidity = np.clip(65 - 0.8 * (temperature - 12) + rng.normal(0, 8, n), 10, 100).round(1)
    wind_speed = np.abs(rng.normal(4, 2, n)).round(2)
    precipitation = np.where(rng.random(n) < 0.12, rng.exponential(1.5, n), 0.0).round(2)
    cloud_cover = np.clip(40 + 30 * (precipitation > 0) + rng.normal(0, 20, n), 0, 100).round(1)
    pressure = (1013 + rng.normal(0, 6, n)).round(1)
    daylight = np.clip(np.sin(np.pi * (hour - 6) / 12), 0, None)
    solar = (daylight * (600 + 250 * season) * (1 - cloud_cover / 150)).round(1)
    price = (1.0 + 0.05 * np.sin(2 * np.pi * t / (24 * 30)) + rng.normal(0, 0.01, n)).round(3)
    promotion = rng.random(n) < 0.05
    daily = 18 * np.sin(2 * np.pi * (hour - 14) / 24) + 8 * np.sin(4 * np.pi * (hour - 10) / 24)
    weekly = np.where(is_weekend, -22.0, 6.0)
    trend = 0.004 * t
    demand = (
        200
        + trend
        + daily
        + weekly
        - 30 * is_holiday
        + 1.2 * np.abs(temperature - 18)
        - 25 * (price - 1)
        + 15 * promotion
        + rng.normal(0, 5, n)
    ).round(3)
    traffic = np.clip(demand * 3.1 + rng.normal(0, 25, n), 0, None).round(0)
    return pa.table(
        {
            "timestamp": pa.array(ts.astype("datetime64[s]"), pa.timestamp("s")),
            "demand": demand,
            "temperature": temperature,
            "humidity": humidity,
            "wind_speed": wind_speed,
            "precipitation": precipitation,
            "cloud_cover": cloud_cover,
            "pressure": pressure,
            "solar_radiation": solar,
            "hour": pa.array(hour, pa.int64()),
            "day_of_week": pa.array(day_of_week, pa.int64()),
            "month": pa.array(month, pa.int64()),
            "is_weekend": is_weekend,
            "is_holiday": is_holiday,
            "price": price,
            "promotion": promotion,
            "store_traffic": traffic,
        }
    )


GENERATORS: dict[str, Callable[[np.random.Generator, int, int], pa.Table]] = {
    "salary": _salary_block,
    "student_engagement": _student_block,
    "demand_forecast": _demand_block,
}
DEFAULT_ROWS = {"salary": 20_000, "student_engagement": 12_000, "demand_forecast": 16_000}


def iter_blocks(name: str, rows: int, seed: int) -> Iterator[pa.Table]:
    """Yield the dataset in blocks of at most BLOCK_ROWS rows."""
    try:
        block_fn = GENERATORS[name]
    except KeyError:
        raise ValueError(f"unknown generator {name!r}; choose from {', '.join(GENERATORS)}") from None
    if rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    for index, offset in enumerate(range(0, rows, BLOCK_ROWS)):
        n = min(BLOCK_ROWS, rows - offset)
        rng = np.random.default_rng([seed, index])
        yield block_fn(rng, BLOCK_ROWS, offset).slice(0, n)


def generate(name: str, rows: int | None = None, seed: int = 0) -> pa.Table:
    """The whole dataset in memory (demo sizes)."""
    return pa.concat_tables(iter_blocks(name, rows or DEFAULT_ROWS[name], seed))


def write_dataset(name: str, path: str | Path, rows: int | None = None, seed: int = 0) -> Path:
    """Write a generated dataset as CSV or parquet (by suffix), block by block, atomically."""
    path = Path(path)
    blocks = iter_blocks(name, rows or DEFAULT_ROWS[name], seed)
    first = next(blocks)
    with atomic_path(path) as tmp:
        if path.suffix == ".csv":
            with pacsv.CSVWriter(tmp, first.schema) as writer:
                writer.write_table(first)
                for block in blocks:
                    writer.write_table(block)
        elif path.suffix in {".parquet", ".pq"}:
            with pq.ParquetWriter(tmp, first.schema) as writer:
                writer.write_table(first)
                for block in blocks:
                    writer.write_table(block)
        else:
            raise ValueError(f"{path}: use a .csv or .parquet suffix")
    return path
