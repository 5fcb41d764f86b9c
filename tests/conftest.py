"""Shared fixtures: small trip files in the real TLC yellow-taxi 2021 schema."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from trips import random_trips, trips_table

MakeTrips = Callable[..., Path]


@pytest.fixture
def make_trips(tmp_path: Path) -> MakeTrips:
    """Write a TLC-schema parquet file and return its path.

    ``make_trips("jan.parquet", pu=[...], do=[...], minutes=[...])`` or
    ``make_trips("jan.parquet", rows=1000, seed=1)`` for random realistic trips.
    """

    def make(
        name: str,
        *,
        pu: Sequence[int | None] | None = None,
        do: Sequence[int | None] | None = None,
        minutes: Sequence[float | None] | None = None,
        rows: int = 0,
        seed: int = 0,
        row_group_size: int | None = None,
        folder: Path | None = None,
        zones: int = 30,
    ) -> Path:
        if pu is None:
            rpu, rdo, rmin = random_trips(rows, seed, zones)
            pu, do, minutes = rpu.tolist(), rdo.tolist(), rmin.tolist()
        assert do is not None and minutes is not None
        path = (folder or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(trips_table(pu, do, minutes, seed=seed), path, row_group_size=row_group_size)
        return path

    return make


@pytest.fixture(autouse=True)
def settled_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests write their queue's files a moment before `infer` lists them: take them as
    copied in (the waiting rule for files still being copied has tests of its own, which
    set TAXI_JOB_SETTLE_SECONDS themselves)."""
    monkeypatch.setenv("TAXI_JOB_SETTLE_SECONDS", "0")
