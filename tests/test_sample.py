"""sample-data: synthetic trips in the TLC's 2021 schema, deterministic, streamed, atomic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_volume import age
from trips import TLC_SCHEMA

from job import sample, volume
from job.cli import cli
from job.errors import TransientError

# Written out in tests/trips.py rather than taken from job.sample: what the TLC publishes.
TLC_2021_SCHEMA = list(zip(TLC_SCHEMA.names, TLC_SCHEMA.types, strict=True))
NULLABLE = {
    "passenger_count",
    "RatecodeID",
    "store_and_fwd_flag",
    "congestion_surcharge",
    "airport_fee",
    "PULocationID",
    "DOLocationID",
}

MakeSample = Callable[..., Path]


@pytest.fixture
def make_sample(tmp_path: Path) -> MakeSample:
    """``make_sample(rows=1000, month="2021-01", seed=None, out="name")`` -> the file."""

    def make(
        rows: int = 1000,
        month: str = "2021-01",
        seed: int | None = None,
        out: str = "out",
        **kwargs: int,
    ) -> Path:
        return sample.write_sample(month, rows, tmp_path / out, seed, **kwargs).path

    return make


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    """200,000 trips of January 2021, enough for the shares to settle."""
    out = tmp_path_factory.mktemp("big")
    return pq.read_table(sample.write_sample("2021-01", 200_000, out).path)


def minutes(table: pa.Table) -> np.ndarray:
    delta = pc.subtract(table["tpep_dropoff_datetime"], table["tpep_pickup_datetime"])
    result: np.ndarray = delta.cast(pa.int64()).to_numpy() / 60e6
    return result


def test_schema_is_the_tlc_2021_schema_exactly(make_sample: MakeSample) -> None:
    schema = pq.read_schema(make_sample(rows=100))
    assert [(f.name, f.type) for f in schema] == TLC_2021_SCHEMA


def test_file_is_named_like_the_tlc_and_has_the_rows(make_sample: MakeSample) -> None:
    path = make_sample(rows=2500, month="2021-03", row_group_rows=1000)
    assert path.name == "yellow_tripdata_2021-03.parquet"
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 2500
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000, 1000, 500]
    assert meta.row_group(0).column(0).compression == "SNAPPY"


def test_row_groups_span_generation_batches(make_sample: MakeSample) -> None:
    rows = sample.BATCH_ROWS * 2 + 7
    meta = pq.ParquetFile(make_sample(rows=rows)).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [rows]


def test_zero_rows_is_an_empty_file_with_the_schema(make_sample: MakeSample) -> None:
    table = pq.read_table(make_sample(rows=0))
    assert table.num_rows == 0
    assert [(f.name, f.type) for f in table.schema] == TLC_2021_SCHEMA


def test_same_seed_and_month_give_the_same_bytes(make_sample: MakeSample) -> None:
    first = make_sample(rows=5000, seed=7, out="a").read_bytes()
    assert make_sample(rows=5000, seed=7, out="b").read_bytes() == first
    assert make_sample(rows=5000, seed=8, out="c").read_bytes() != first


def test_default_seed_comes_from_the_month_so_months_differ(make_sample: MakeSample) -> None:
    assert sample.default_seed("2021-01") == 202101
    jan = pq.read_table(make_sample(rows=2000, month="2021-01"))
    feb = pq.read_table(make_sample(rows=2000, month="2021-02"))
    assert jan["PULocationID"] != feb["PULocationID"]


def test_the_same_seed_in_another_month_is_other_trips(make_sample: MakeSample) -> None:
    jan = pq.read_table(make_sample(rows=2000, month="2021-01", seed=1))
    mar = pq.read_table(make_sample(rows=2000, month="2021-03", seed=1))
    assert jan["PULocationID"] != mar["PULocationID"]


@pytest.mark.parametrize(
    ("month", "start", "end"),
    [
        ("2021-01", datetime(2021, 1, 1), datetime(2021, 2, 1)),
        ("2020-02", datetime(2020, 2, 1), datetime(2020, 3, 1)),  # leap year
        ("2021-12", datetime(2021, 12, 1), datetime(2022, 1, 1)),
    ],
)
def test_timestamps_stay_inside_the_month(
    make_sample: MakeSample, month: str, start: datetime, end: datetime
) -> None:
    table = pq.read_table(make_sample(rows=50_000, month=month))
    for column in ("tpep_pickup_datetime", "tpep_dropoff_datetime"):
        assert pc.min(table[column]).as_py() >= start
        assert pc.max(table[column]).as_py() < end
    # And they fill it: the first and last days both have trips.
    days = pc.day(table["tpep_pickup_datetime"]).to_numpy()
    assert days.min() == 1
    assert days.max() == (end - start).days


def test_outliers_are_two_to_three_percent(big: pa.Table) -> None:
    m = minutes(big)
    outliers = (m <= 0) | (m > 60)
    assert 0.015 <= outliers.mean() <= 0.04
    assert (m == 0).any()
    assert (m < 0).any()
    assert (m > 60).any()


def test_nulls_where_the_real_data_has_them(big: pa.Table) -> None:
    n = big.num_rows
    for name in big.column_names:
        nulls = big[name].null_count
        if name in ("PULocationID", "DOLocationID"):
            assert 0 < nulls < 0.005 * n, name
        elif name in NULLABLE:
            assert 0.02 * n < nulls < 0.1 * n, name
        else:
            assert nulls == 0, name
    # The real data's block of rows without passenger counts is payment type 0.
    block = pc.is_null(big["passenger_count"])
    assert set(pc.filter(big["payment_type"], block).to_pylist()) == {0}


def test_zones_are_tlc_zones_with_hubs_on_top(big: pa.Table) -> None:
    pu = big["PULocationID"].drop_null().to_numpy()
    do = big["DOLocationID"].drop_null().to_numpy()
    for zones in (pu, do):
        assert zones.min() >= 1
        assert zones.max() <= 265
    counts = np.bincount(pu, minlength=266)
    top = set(np.argsort(-counts)[:12].tolist())
    assert {236, 237, 161} <= top
    # Heavy-tailed: the top 10% of zones take most pick-ups.
    share = np.sort(counts)[::-1][:27].sum() / counts.sum()
    assert share > 0.6
    assert 0.01 < counts[132] / counts.sum() < 0.05  # JFK


def test_durations_depend_on_the_zone_pair(big: pa.Table) -> None:
    m = minutes(big)
    pu = big["PULocationID"].fill_null(-1).to_numpy()
    do = big["DOLocationID"].fill_null(-1).to_numpy()
    ok = (m > 0) & (m <= 60)
    airport = ok & (pu == 132) & np.isin(do, [161, 162, 236, 237, 230, 186])
    midtown = ok & np.isin(pu, [161, 162]) & np.isin(do, [161, 162])
    assert airport.sum() > 20
    assert midtown.sum() > 20
    assert np.median(m[airport]) > 3 * np.median(m[midtown])
    distance = big["trip_distance"].to_numpy()
    assert np.corrcoef(distance[ok], m[ok])[0, 1] > 0.5


def test_amounts_add_up(big: pa.Table) -> None:
    parts = [
        "fare_amount",
        "extra",
        "mta_tax",
        "tip_amount",
        "tolls_amount",
        "improvement_surcharge",
        "congestion_surcharge",
        "airport_fee",
    ]
    total = sum(big[p].fill_null(0.0).to_numpy() for p in parts)
    np.testing.assert_allclose(big["total_amount"].to_numpy(), total, atol=0.011)


def test_failure_leaves_no_file_and_keeps_the_old_one(
    make_sample: MakeSample, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = make_sample(rows=10)
    before = old.read_bytes()
    real = sample._chunk
    calls = []

    def failing(*args: object) -> pa.Table:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sample, "_chunk", failing)
    with pytest.raises(TransientError, match=r": cannot write synthetic trips: disk full$"):
        make_sample(rows=sample.BATCH_ROWS + 10)
    assert old.read_bytes() == before
    assert os.listdir(old.parent) == [old.name]


def test_bad_month_and_rows_are_refused(tmp_path: Path) -> None:
    for month in ("2021-13", "2021-1", "21-01", "2021-00", "January"):
        with pytest.raises(ValueError, match="YYYY-MM"):
            sample.write_sample(month, 10, tmp_path / "out")
    with pytest.raises(ValueError, match="rows"):
        sample.write_sample("2021-01", -1, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# The command line.


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_cli_writes_and_reports_json(tmp_path: Path) -> None:
    code, out, _ = run(
        "sample-data", "--month", "2021-02", "--rows", "1234", "--seed", "5",
        "--output-format", "json", str(tmp_path / "data"),
    )  # fmt: skip
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    path = tmp_path / "data" / "yellow_tripdata_2021-02.parquet"
    assert summary == {"path": str(path), "rows": 1234, "month": "2021-02", "seed": 5}
    assert pq.ParquetFile(path).metadata.num_rows == 1234


def test_cli_writes_a_range_of_months_across_a_year_end(tmp_path: Path) -> None:
    code, out, _ = run(
        "sample-data", "--months", "2021-11..2022-02", "--rows", "300",
        "--output-format", "json", str(tmp_path / "year"),
    )  # fmt: skip
    assert code == 0
    months = ["2021-11", "2021-12", "2022-01", "2022-02"]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["paths"] == [str(tmp_path / "year" / sample.file_name(m)) for m in months]
    assert (summary["rows"], summary["months"]) == (1200, "2021-11..2022-02")
    assert sorted(p.name for p in (tmp_path / "year").iterdir()) == [
        sample.file_name(m) for m in months
    ]
    code, _, err = run("sample-data", "--month", "2021-12..2021-11", str(tmp_path / "no"))
    assert code == 2 and "the last month is before the first" in err
    assert not (tmp_path / "no").exists()


def test_cli_reads_the_environment_and_flags_win(tmp_path: Path) -> None:
    env = {
        "TAXI_JOB_MONTH": "2021-04",
        "TAXI_JOB_ROWS": "321",
        "TAXI_JOB_SEED": "9",
        "TAXI_JOB_OUT": str(tmp_path / "env"),
        "TAXI_JOB_OUTPUT_FORMAT": "json",
    }
    code, out, _ = run("sample-data", env=env)
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["path"] == str(tmp_path / "env" / "yellow_tripdata_2021-04.parquet")
    assert (summary["rows"], summary["month"], summary["seed"]) == (321, "2021-04", 9)

    code, out, _ = run("sample-data", "--rows", "5", str(tmp_path / "flag"), env=env)
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["rows"] == 5
    assert summary["path"] == str(tmp_path / "flag" / "yellow_tripdata_2021-04.parquet")


def test_cli_default_seed_is_reported(tmp_path: Path) -> None:
    code, out, _ = run(
        "sample-data", "--month", "2021-07", "--rows", "10", "--output-format", "json",
        str(tmp_path),
    )  # fmt: skip
    assert code == 0
    assert json.loads(out.strip().splitlines()[-1])["seed"] == 202107


@pytest.mark.parametrize(
    "args",
    [
        ["--month", "2021-13"],
        ["--month", "2021/01"],
        ["--month", "2021-01", "--rows", "-1"],
        ["--month", "2021-01", "--seed", "-1"],
    ],
)
def test_cli_bad_options_exit_2(tmp_path: Path, args: list[str]) -> None:
    code, _, err = run("sample-data", *args, str(tmp_path / "out"))
    assert code == 2
    assert "Invalid value" in err
    assert not (tmp_path / "out").exists()


def test_real_subprocess(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "taxi-job"
    done = subprocess.run(
        [str(exe), "sample-data", "--month", "2021-01", "--rows", "3000",
         "--output-format", "json", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 3000
    assert pq.read_table(summary["path"]).num_rows == 3000


def test_a_killed_sample_datas_temporary_goes_once_an_hour_old(tmp_path: Path) -> None:
    old = volume.temporary_file(tmp_path / "yellow_tripdata_2021-01.parquet")
    young = volume.temporary_file(tmp_path / "yellow_tripdata_2021-02.parquet")
    age(old, volume.TEMPORARY_AFTER_S + 60)
    written = sample.write_sample("2021-03", 100, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([written.path.name, young.name])
