"""Synthetic yellow-taxi trips in the TLC's 2021 parquet schema, for people without our data.

The trips are made up but shaped like the real ones, so the pipeline has something to
learn: 265 zones on a plane (Manhattan a north-south strip, the airports far out), zone
popularity heavy-tailed with the real hubs on top, durations that follow the pair's
distance and the hour's traffic with lognormal noise, ~2% outlier durations (zero,
negative, over an hour), the real data's block of rows without passenger count or rate
code, and a few missing zones.

The file is streamed one row group at a time, so memory does not grow with ``rows``;
each row group has its own random stream derived from (seed, month, index), so a given
seed and month always give the same file.
"""

from __future__ import annotations

import calendar
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from job import volume

logger = logging.getLogger(__name__)

#: The columns and types of the TLC's yellow-taxi 2021 files as published today.
SCHEMA = pa.schema(
    [
        ("VendorID", pa.int64()),
        ("tpep_pickup_datetime", pa.timestamp("us")),
        ("tpep_dropoff_datetime", pa.timestamp("us")),
        ("passenger_count", pa.float64()),
        ("trip_distance", pa.float64()),
        ("RatecodeID", pa.float64()),
        ("store_and_fwd_flag", pa.string()),
        ("PULocationID", pa.int64()),
        ("DOLocationID", pa.int64()),
        ("payment_type", pa.int64()),
        ("fare_amount", pa.float64()),
        ("extra", pa.float64()),
        ("mta_tax", pa.float64()),
        ("tip_amount", pa.float64()),
        ("tolls_amount", pa.float64()),
        ("improvement_surcharge", pa.float64()),
        ("total_amount", pa.float64()),
        ("congestion_surcharge", pa.float64()),
        ("airport_fee", pa.float64()),
    ]
)

#: Rows per row group, as in a big real file.
ROW_GROUP_ROWS = 1_048_576
#: Rows generated at a time; each batch has its own random stream, so this fixes the data.
BATCH_ROWS = 131_072

N_ZONES = 265
EWR, JFK, LGA = 1, 132, 138
UNKNOWN_ZONES = (264, 265)

# Fractions of rows; the outliers are what a duration model must filter out.
ZERO_DURATION = 0.004
NEGATIVE_DURATION = 0.002
LONG_DURATION = 0.014
NULL_BLOCK = 0.05  # passenger_count, RatecodeID, flag and surcharges null, payment_type 0
NULL_ZONE = 0.001  # per column, PULocationID and DOLocationID

_MONTH = re.compile(r"(\d{4})-(\d{2})")
# Fixed: the map is the same every month, so a model trained on one month fits the next.
_WORLD_SEED = 20210101
_US_PER_S = 1_000_000

# Manhattan zones and how far north of the Battery they lie, in miles.
_MANHATTAN_Y = {
    12: 0.0,
    13: 0.4,
    88: 0.3,
    87: 0.7,
    261: 0.8,
    209: 0.9,
    231: 1.3,
    45: 1.4,
    232: 1.5,
    144: 1.8,
    211: 1.9,
    148: 1.8,
    125: 2.0,
    114: 2.3,
    4: 2.4,
    79: 2.6,
    113: 2.6,
    249: 2.5,
    158: 2.8,
    224: 2.9,
    234: 3.0,
    90: 3.3,
    68: 3.4,
    107: 3.3,
    246: 3.5,
    137: 3.8,
    170: 4.0,
    164: 3.8,
    186: 3.9,
    100: 4.2,
    233: 4.4,
    162: 4.7,
    161: 4.8,
    230: 4.6,
    48: 4.9,
    50: 5.0,
    163: 5.1,
    229: 5.0,
    140: 5.6,
    141: 5.7,
    237: 5.8,
    142: 5.4,
    143: 5.6,
    43: 6.5,
    239: 6.2,
    236: 6.6,
    263: 6.6,
    262: 6.9,
    238: 7.0,
    24: 7.6,
    151: 7.3,
    75: 7.7,
    166: 8.1,
    41: 8.4,
    74: 8.5,
    42: 8.9,
    152: 8.7,
    116: 9.4,
    244: 10.2,
    243: 11.2,
    120: 10.6,
    127: 12.2,
    128: 12.6,
    153: 12.8,
    194: 8.9,
    202: 5.6,
    103: -0.8,
    104: -0.6,
    105: -0.9,
}
# Extra pull of the busiest zones, on top of Manhattan's.
_HUBS = {
    237: 9.0,
    236: 8.0,
    161: 8.0,
    162: 6.0,
    186: 6.0,
    230: 5.0,
    170: 5.0,
    142: 5.0,
    48: 5.0,
    234: 4.5,
    141: 4.0,
    263: 4.0,
    239: 4.0,
    163: 3.5,
    68: 3.5,
    107: 3.5,
    79: 3.0,
    238: 3.0,
    140: 3.0,
    164: 3.0,
    90: 3.0,
    113: 2.5,
    249: 2.5,
    43: 2.0,
    229: 2.0,
    246: 2.0,
    100: 2.0,
}
# Relative traffic by hour of the day, for pickups, and the mean speed then (mph).
_HOUR_WEIGHT = np.array(
    [
        2.0,
        1.3,
        0.8,
        0.5,
        0.5,
        0.8,
        2.0,
        3.5,
        4.5,
        4.5,
        4.3,
        4.5,
        4.8,
        5.0,
        5.3,
        5.5,
        5.6,
        5.9,
        6.0,
        5.4,
        4.5,
        4.0,
        3.6,
        2.8,
    ]
)
_HOUR_SPEED = np.array(
    [
        18.0,
        19.0,
        20.0,
        21.0,
        21.0,
        19.0,
        16.0,
        13.0,
        11.0,
        10.5,
        10.5,
        10.5,
        10.5,
        10.5,
        10.0,
        9.5,
        9.5,
        10.0,
        11.0,
        12.5,
        14.0,
        15.0,
        16.0,
        17.0,
    ]
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class SampleResult:
    """What ``write_sample`` wrote."""

    path: Path
    """The parquet file."""
    rows: int
    """Rows written."""
    month: str
    """The month, ``YYYY-MM``."""
    seed: int
    """The seed used (the month's default when none was given)."""


@dataclass(frozen=True)
class _World:
    """The fixed map: zone positions, popularity, speed and where the congestion zone is."""

    x: FloatArray
    y: FloatArray
    pickup_p: FloatArray
    dropoff_p: FloatArray
    neighbours: IntArray  # [zone, k]: the nearest zones, for short local trips
    speed_factor: FloatArray
    congestion: BoolArray  # Manhattan below 96th Street pays the congestion surcharge
    manhattan: BoolArray


def parse_month(month: str) -> tuple[int, int]:
    """``"2021-01"`` -> ``(2021, 1)``; ValueError for anything but a real ``YYYY-MM``."""
    match = _MONTH.fullmatch(month)
    if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
        raise ValueError(f"{month!r} is not a month written YYYY-MM, like 2021-01")
    return int(match.group(1)), int(match.group(2))


def month_range(spec: str) -> list[str]:
    """``"2021-01"`` -> ``["2021-01"]``; ``"2021-11..2022-02"`` -> the four months from the
    first to the last, inclusive. ValueError for anything else."""
    first, sep, last = spec.partition("..")
    year, mon = parse_month(first)
    end = parse_month(last) if sep else (year, mon)
    if end < (year, mon):
        raise ValueError(f"{spec!r}: the last month is before the first")
    months = []
    while (year, mon) <= end:
        months.append(f"{year:04d}-{mon:02d}")
        year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
    return months


def default_seed(month: str) -> int:
    """The seed used when none is given: ``2021-01`` -> ``202101``, so months differ."""
    year, mon = parse_month(month)
    return year * 100 + mon


def file_name(month: str) -> str:
    """The TLC's name for a month's yellow-taxi file."""
    return f"yellow_tripdata_{month}.parquet"


def _world() -> _World:
    rng = np.random.default_rng(_WORLD_SEED)
    zones = np.arange(1, N_ZONES + 1)
    x = np.empty(N_ZONES + 1)
    y = np.empty(N_ZONES + 1)
    manhattan = np.zeros(N_ZONES + 1, dtype=bool)
    # The outer boroughs as loose clouds around Manhattan (Brooklyn, Queens, Bronx, SI).
    centres = np.array([[3.0, -4.0], [7.0, 4.0], [3.0, 12.0], [-8.0, -8.0]])
    spread = np.array([3.0, 3.5, 2.5, 2.5])
    borough = rng.choice(4, size=N_ZONES + 1, p=[0.36, 0.38, 0.18, 0.08])
    x[:] = centres[borough, 0] + rng.normal(0.0, 1.0, N_ZONES + 1) * spread[borough]
    y[:] = centres[borough, 1] + rng.normal(0.0, 1.0, N_ZONES + 1) * spread[borough]
    for zone, north in _MANHATTAN_Y.items():
        x[zone] = rng.uniform(-0.6, 0.6)
        y[zone] = north
        manhattan[zone] = True
    x[194], x[202] = 1.5, 1.0  # Randalls Island, Roosevelt Island
    x[[103, 104, 105]] = -1.0  # the harbour islands
    x[EWR], y[EWR] = -10.0, -2.0
    x[JFK], y[JFK] = 10.0, -4.0
    x[LGA], y[LGA] = 6.5, 7.0
    for zone in UNKNOWN_ZONES:  # no location: put them midtown
        x[zone], y[zone] = 0.0, 4.5

    weight = np.zeros(N_ZONES + 1)
    weight[zones] = rng.lognormal(0.0, 1.5, N_ZONES)  # heavy tail outside the hubs too
    weight[manhattan] = 30.0 * rng.lognormal(0.0, 0.7, int(manhattan.sum()))
    for zone, pull in _HUBS.items():
        weight[zone] += pull * 40.0
    weight[list(UNKNOWN_ZONES)] = [3.0, 0.3]
    weight[[EWR, JFK, LGA]] = 0.0
    pickup_p = _with_airports(weight, {JFK: 0.025, LGA: 0.015, EWR: 0.0001})
    # Drop-offs spread further out than pick-ups.
    dropoff_p = _with_airports(weight**0.9, {JFK: 0.012, LGA: 0.012, EWR: 0.002})

    pos = np.stack([x, y], axis=1)
    dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=2)
    dist[0, :] = dist[:, 0] = np.inf
    neighbours = np.argsort(dist, axis=1)[:, :12].astype(np.int64)  # includes the zone itself

    speed_factor = np.where(manhattan, 1.0, 1.6)
    speed_factor[[JFK, LGA, EWR]] = 1.9
    congestion = manhattan & (y < 8.0)
    return _World(x, y, pickup_p, dropoff_p, neighbours, speed_factor, congestion, manhattan)


def _with_airports(weight: FloatArray, shares: dict[int, float]) -> FloatArray:
    """Probabilities from ``weight``, with the airports' shares set outright."""
    p: FloatArray = weight / weight.sum() * (1.0 - sum(shares.values()))
    for zone, share in shares.items():
        p[zone] = share
    return p


def _month_bounds(month: str) -> tuple[int, int, int]:
    """Start of the month in µs since the epoch, its length in days, and the start weekday."""
    year, mon = parse_month(month)
    start = np.datetime64(f"{year:04d}-{mon:02d}-01T00:00:00", "us").astype(np.int64)
    first_weekday, days = calendar.monthrange(year, mon)
    return int(start), days, first_weekday


def _chunk(world: _World, rng: np.random.Generator, n: int, month: str) -> pa.Table:
    """``n`` trips of ``month``, as an arrow table in ``SCHEMA``."""
    start, days, first_weekday = _month_bounds(month)
    end = start + days * 86_400 * _US_PER_S

    # When: a day of the month (weekends a little quieter), an hour by the daily profile.
    day = rng.integers(0, days, n)
    weekday = (first_weekday + day) % 7
    weekend = weekday >= 5
    keep = ~weekend | (rng.random(n) < 0.85)
    day = np.where(keep, day, rng.integers(0, days, n))
    weekday = (first_weekday + day) % 7
    weekend = weekday >= 5
    hour = rng.choice(24, size=n, p=_HOUR_WEIGHT / _HOUR_WEIGHT.sum())
    second = rng.integers(0, 3600, n)
    pickup = start + ((day * 24 + hour) * 3600 + second) * _US_PER_S

    # Where: pick-ups by popularity; a third of drop-offs near the pick-up.
    pu = rng.choice(N_ZONES, size=n, p=world.pickup_p[1:]) + 1
    do = rng.choice(N_ZONES, size=n, p=world.dropoff_p[1:]) + 1
    local = rng.random(n) < 0.35
    do = np.where(local, world.neighbours[pu, rng.integers(0, 12, n)], do)

    # How far and how long: points scattered inside each zone, streets 25% longer than
    # the straight line, faster outside Manhattan, at night and on longer trips.
    dx = world.x[do] - world.x[pu] + rng.normal(0.0, 0.3, n)
    dy = world.y[do] - world.y[pu] + rng.normal(0.0, 0.3, n)
    road = 1.25 * np.hypot(dx, dy) + 0.2
    speed = (
        _HOUR_SPEED[hour]
        * np.sqrt(world.speed_factor[pu] * world.speed_factor[do])
        * (1.0 + 0.25 * np.log1p(road))
        * np.where(weekend, 1.15, 1.0)
        * rng.lognormal(0.0, 0.2, n)
    )
    minutes = (1.5 + road / speed * 60.0) * rng.lognormal(0.0, 0.1, n)
    distance = np.round(road * rng.lognormal(0.0, 0.08, n), 2)
    distance[rng.random(n) < 0.005] = 0.0  # the meter was not run; the real data has these
    duration_s = np.round(minutes * 60.0).astype(np.int64)

    # Outliers: the meter stopped at once, clocks wrong, or left running.
    u = rng.random(n)
    zero = u < ZERO_DURATION
    negative = (u >= ZERO_DURATION) & (u < ZERO_DURATION + NEGATIVE_DURATION)
    long = (u >= ZERO_DURATION + NEGATIVE_DURATION) & (
        u < ZERO_DURATION + NEGATIVE_DURATION + LONG_DURATION
    )
    duration_s[zero] = 0
    duration_s[negative] = -rng.integers(60, 3600, int(negative.sum()))
    duration_s[long] = 3660 + np.round(rng.exponential(3 * 3600.0, int(long.sum()))).astype(
        np.int64
    )
    duration_s = np.minimum(duration_s, 86_399)
    dropoff = pickup + duration_s * _US_PER_S
    # Keep both ends inside the month: shift a trip that would cross its edge.
    shift = np.maximum(np.maximum(pickup, dropoff) - (end - _US_PER_S), 0)
    shift -= np.maximum(start - np.minimum(pickup, dropoff), 0)
    pickup -= shift
    dropoff -= shift

    # Who and how they paid.
    vendor = np.where(rng.random(n) < 0.3, 1, 2).astype(np.int64)
    null_block = rng.random(n) < NULL_BLOCK
    passengers = rng.choice(7, size=n, p=[0.02, 0.70, 0.14, 0.04, 0.02, 0.05, 0.03]).astype(
        np.float64
    )
    payment = rng.choice([1, 2, 3, 4], size=n, p=[0.72, 0.26, 0.012, 0.008]).astype(np.int64)
    payment[null_block] = 0

    pu_m = world.manhattan[pu]
    do_m = world.manhattan[do]
    ratecode = np.ones(n)
    ratecode[((pu == JFK) & do_m) | ((do == JFK) & pu_m)] = 2.0
    ratecode[(do == EWR) | (pu == EWR)] = 3.0
    r = rng.random(n)
    ratecode[r < 0.001] = 4.0
    ratecode[(r >= 0.001) & (r < 0.004)] = 5.0

    metered_min = np.clip(duration_s / 60.0, 0.0, 60.0)
    fare = np.round((2.5 + 1.75 * distance + 0.35 * metered_min) * 2.0) / 2.0
    fare = np.where(ratecode == 2.0, 52.0, fare)
    fare = np.where(ratecode == 3.0, np.round(20.0 + 2.5 * distance, 1), fare)
    fare = np.where(ratecode == 5.0, np.round(rng.uniform(20.0, 100.0, n)), fare)
    pickup_hour = (pickup // (3600 * _US_PER_S)) % 24
    extra = np.where((pickup_hour >= 20) | (pickup_hour < 6), 0.5, 0.0)
    extra += np.where(~weekend & (pickup_hour >= 16) & (pickup_hour < 20), 1.0, 0.0)
    mta_tax = np.full(n, 0.5)
    improvement = np.full(n, 0.3)
    airport = np.isin(pu, (JFK, LGA)) | np.isin(do, (JFK, LGA, EWR))
    tolls = np.where((airport | (distance > 12.0)) & (rng.random(n) < 0.5), 6.12, 0.0)
    congestion = np.where(world.congestion[pu] | world.congestion[do], 2.5, 0.0)
    airport_fee = np.where(np.isin(pu, (JFK, LGA)), 1.25, 0.0)
    tips = np.where(rng.random(n) < 0.85, rng.uniform(0.12, 0.3, n), 0.0)
    tip = np.round(np.where((payment == 1) | null_block, fare * tips, 0.0), 2)

    # Disputed and refunded trips show up with every amount negated.
    refund = np.isin(payment, (3, 4)) & (rng.random(n) < 0.5)
    for amount in (fare, extra, mta_tax, tip, tolls, improvement, congestion, airport_fee):
        np.negative(amount, out=amount, where=refund)
    congestion_paid = np.where(null_block, 0.0, congestion)
    airport_paid = np.where(null_block, 0.0, airport_fee)
    total = np.round(
        fare + extra + mta_tax + tip + tolls + improvement + congestion_paid + airport_paid, 2
    )

    flag_index = np.where(rng.random(n) < 0.01, 1, 0)
    flags = pa.array(["N", "Y"], pa.string()).take(pa.array(flag_index, mask=null_block))
    pu_null = rng.random(n) < NULL_ZONE
    do_null = rng.random(n) < NULL_ZONE

    columns: dict[str, Any] = {
        "VendorID": pa.array(vendor, pa.int64()),
        "tpep_pickup_datetime": pa.array(pickup.view("datetime64[us]"), pa.timestamp("us")),
        "tpep_dropoff_datetime": pa.array(dropoff.view("datetime64[us]"), pa.timestamp("us")),
        "passenger_count": pa.array(passengers, pa.float64(), mask=null_block),
        "trip_distance": pa.array(distance, pa.float64()),
        "RatecodeID": pa.array(ratecode, pa.float64(), mask=null_block),
        "store_and_fwd_flag": flags,
        "PULocationID": pa.array(pu.astype(np.int64), pa.int64(), mask=pu_null),
        "DOLocationID": pa.array(do.astype(np.int64), pa.int64(), mask=do_null),
        "payment_type": pa.array(payment, pa.int64()),
        "fare_amount": pa.array(fare, pa.float64()),
        "extra": pa.array(extra, pa.float64()),
        "mta_tax": pa.array(mta_tax, pa.float64()),
        "tip_amount": pa.array(tip, pa.float64()),
        "tolls_amount": pa.array(tolls, pa.float64()),
        "improvement_surcharge": pa.array(improvement, pa.float64()),
        "total_amount": pa.array(total, pa.float64()),
        "congestion_surcharge": pa.array(congestion, pa.float64(), mask=null_block),
        "airport_fee": pa.array(airport_fee, pa.float64(), mask=null_block),
    }
    return pa.Table.from_arrays([columns[f.name] for f in SCHEMA], schema=SCHEMA)


def generate(
    month: str, rows: int, seed: int | None = None, batch_rows: int = BATCH_ROWS
) -> Iterator[pa.Table]:
    """Yield the trips of ``month`` as arrow tables of at most ``batch_rows`` rows each.

    Arguments are checked now, not at the first ``next()``.
    """
    parse_month(month)
    if rows < 0:
        raise ValueError(f"rows must be zero or more, not {rows}")
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be positive, not {batch_rows}")
    seed = default_seed(month) if seed is None else seed
    if seed < 0:
        raise ValueError(f"the seed must be zero or more, not {seed}")
    return _batches(month, rows, seed, batch_rows)


def _batches(month: str, rows: int, seed: int, batch_rows: int) -> Iterator[pa.Table]:
    year, mon = parse_month(month)
    world = _world()
    for index, offset in enumerate(range(0, rows, batch_rows)):
        # One stream per batch, mixed with the month so one seed gives different months.
        rng = np.random.default_rng(np.random.SeedSequence([seed, year * 100 + mon, index]))
        yield _chunk(world, rng, min(batch_rows, rows - offset), month)


def write_sample(
    month: str,
    rows: int,
    out_dir: Path,
    seed: int | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> SampleResult:
    """Write ``rows`` synthetic trips of ``month`` to ``out_dir/yellow_tripdata_<month>.parquet``.

    The file appears whole or not at all: it is written under a temporary name of its own
    in the same directory, synced, then renamed over the destination.
    """
    seed = default_seed(month) if seed is None else seed
    if row_group_rows < 1:
        raise ValueError(f"row_group_rows must be positive, not {row_group_rows}")
    batches = generate(month, rows, seed)  # validates before anything touches the disk
    path = out_dir / file_name(month)
    with volume.writing("synthetic trips", out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        volume.sweep(None, data=out_dir)  # what a killed sample-data or fetch left here
        with volume.replacing(path) as tmp:
            # snappy, like the TLC's own files.
            with pq.ParquetWriter(tmp, SCHEMA, compression="snappy") as writer:
                pending: list[pa.Table] = []
                pending_rows = 0
                # Batches are generated small to keep the temporaries small, and written
                # a row group at a time (each write is at least one row group).
                for batch in batches:
                    pending.append(batch)
                    pending_rows += batch.num_rows
                    if pending_rows >= row_group_rows:
                        writer.write_table(pa.concat_tables(pending), row_group_rows)
                        pending, pending_rows = [], 0
                if pending or rows == 0:
                    writer.write_table(
                        pa.concat_tables(pending) if pending else SCHEMA.empty_table(),
                        row_group_rows,
                    )
    logger.info("wrote %d synthetic trips of %s to %s (seed %d)", rows, month, path, seed)
    return SampleResult(path=path, rows=rows, month=month, seed=seed)
