"""Trip data for tests: tables and files in the real TLC yellow-taxi 2021 schema."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

#: The 19 columns and types of the TLC's published 2021 yellow-taxi files.
TLC_SCHEMA = pa.schema(
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

START = datetime(2021, 1, 1)


def trips_table(
    pu: Sequence[int | None],
    do: Sequence[int | None],
    minutes: Sequence[float | None],
    *,
    seed: int = 0,
) -> pa.Table:
    """A TLC-schema table whose trips have these zones and durations (None: a null)."""
    n = len(pu)
    rng = np.random.default_rng(seed)
    pickup_us = (
        np.datetime64(START, "us").astype(np.int64) + rng.integers(0, 28 * 86400, n) * 1_000_000
    )
    dur = np.array([0.0 if m is None else m for m in minutes])
    dropoff_us = pickup_us + np.round(dur * 60e6).astype(np.int64)
    dropoff_mask = np.array([m is None for m in minutes])
    columns: dict[str, Any] = {
        name: pa.nulls(n, field.type)
        for name, field in zip(TLC_SCHEMA.names, TLC_SCHEMA, strict=True)
    }
    columns.update(
        VendorID=pa.array(rng.integers(1, 3, n), pa.int64()),
        tpep_pickup_datetime=pa.array(pickup_us, pa.timestamp("us")),
        tpep_dropoff_datetime=pa.array(dropoff_us, pa.timestamp("us"), mask=dropoff_mask),
        passenger_count=pa.array(rng.integers(1, 4, n).astype(float)),
        trip_distance=pa.array(rng.random(n) * 5),
        PULocationID=pa.array(list(pu), pa.int64()),
        DOLocationID=pa.array(list(do), pa.int64()),
        payment_type=pa.array(np.ones(n, np.int64)),
        fare_amount=pa.array(rng.random(n) * 30),
        total_amount=pa.array(rng.random(n) * 40),
    )
    return pa.table(columns, schema=TLC_SCHEMA)


def random_trips(
    rows: int, seed: int = 0, zones: int = 30
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zones with popularity skew and pair-dependent durations, with some outliers."""
    rng = np.random.default_rng(seed)
    popularity = rng.zipf(1.6, zones).astype(float)
    popularity /= popularity.sum()
    pu = rng.choice(np.arange(1, zones + 1), rows, p=popularity)
    do = rng.choice(np.arange(1, zones + 1), rows, p=popularity)
    where = np.random.default_rng(12345).random((zones + 1, 2)) * 10  # same map every month
    dist = np.hypot(*(where[pu] - where[do]).T)
    minutes = 3 + dist * 3 + rng.lognormal(0, 0.5, rows)
    minutes[rng.random(rows) < 0.03] = rng.choice([-5.0, 0.0, 0.5, 90.0, 200.0])
    return pu, do, minutes
