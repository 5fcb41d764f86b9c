"""The model's quality, computed once while ``train`` evaluates and ``infer`` predicts: the
live error and drift of each input, and the records a model version keeps of its
evaluation month. Every figure is checked against an independent computation from the
rows of the real parquet files (pandas, scikit-learn, numpy), as the seed notebook would."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sklearn.metrics import mean_squared_error
from trips import trips_table

from job import artifacts, quality
from job.cli import cli
from job.cli.options import fit_json
from job.model import to_sklearn
from job.runs import describe_summary

ZONES = ["PULocationID", "DOLocationID"]


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def train(jan: Path, feb: Path, out: Path, *extra: str) -> dict:
    args = ["train", "--train-data", str(jan), "--eval-data", str(feb), "--artifacts", str(out)]
    return last_json(invoke(*args, *extra, "--output-format", "json", "-q").stdout)


def infer(inputs: Path, out: Path, *extra: str) -> dict:
    args = ["infer", "--input", str(inputs), "--artifacts", str(out), "--output-format", "json"]
    return last_json(invoke(*args, *extra, "-q").stdout)


def frame(path: Path, low: float = 1, high: float = 60) -> pd.DataFrame:
    """The rows the seed notebook keeps: duration in minutes between ``low`` and ``high``,
    zones as strings with null as "-1"."""
    df = pq.read_table(path).to_pandas()
    df["duration"] = (df.tpep_dropoff_datetime - df.tpep_pickup_datetime).dt.total_seconds() / 60
    df = df[df.duration.between(low, high)].copy()
    df[ZONES] = df[ZONES].fillna(-1).astype("int").astype("str")
    return df


def zones_of(path: Path) -> pd.DataFrame:
    df = pq.read_table(path).to_pandas()
    df[ZONES] = df[ZONES].fillna(-1).astype("int").astype("str")
    return df


def sklearn_predict(root: Path, df: pd.DataFrame) -> np.ndarray:
    vectorizer, regression = to_sklearn(artifacts.load(root).model)
    return regression.predict(vectorizer.transform(df[ZONES].to_dict(orient="records")))


def independent_psi(expected: pd.Series, actual: pd.Series) -> float:
    """PSI written out by hand: proportions over the union of zones, a zone missing on one
    side at 1e-6, natural log."""
    e, a = expected / expected.sum(), actual / actual.sum()
    total = 0.0
    for zone in set(e.index) | set(a.index):
        pe = e.get(zone, 0.0) or 1e-6
        pa_ = a.get(zone, 0.0) or 1e-6
        total += (pa_ - pe) * math.log(pa_ / pe)
    return total


@pytest.fixture
def months(make_trips, tmp_path):
    """Training and evaluation months, and two incoming files with what real files have:
    null zones and times, zones the model never saw (one beyond the dense table), trips
    outside the bounds and exactly on them."""
    jan = make_trips("jan.parquet", rows=6000, seed=1, row_group_size=1000)
    feb = make_trips("feb.parquet", rows=5000, seed=2, row_group_size=1500)
    incoming = tmp_path / "incoming"
    make_trips("mar.parquet", rows=4000, seed=3, row_group_size=700, folder=incoming)
    edges = [1.0, 60.0, 1.0 - 1 / 60e6, 60.0 + 1 / 60e6, None, 30.0, 12.0, 45.0, 0.5, 75.0]
    make_trips(
        "apr.parquet",
        pu=[None, 5, 7, 999, 3, 2, 600, None, 1, 4],
        do=[4, None, 9, 2, 777, 3, 1, 5, 999, 8],
        minutes=edges,
        seed=4,
        folder=incoming,
    )
    make_trips(  # zones the model never saw, all within the pair table
        "may.parquet",
        pu=[300, 1, None, 510, 2],
        do=[2, 450, 3, None, 0],
        minutes=[10.0, 20.0, 30.0, 40.0, 50.0],
        seed=5,
        folder=incoming,
    )
    return jan, feb, incoming


def test_live_error_and_drift_match_an_independent_computation(months, tmp_path):
    jan, feb, incoming = months
    out = tmp_path / "artifacts"
    train(jan, feb, out)
    summary = infer(incoming, out)
    files = sorted(incoming.glob("*.parquet"))
    records = {Path(r["input"]).name: r for r in summary["input_records"]}
    assert sorted(records) == [f.name for f in files]

    kept_train = frame(jan)
    everything, scored = [], []
    for path in files:
        record = records[path.name]
        df = frame(path)
        actual = df.duration.to_numpy()
        predicted = sklearn_predict(out, df)
        assert record["rows_scored"] == len(df)
        expected = math.sqrt(mean_squared_error(actual, predicted))
        assert record["rmse_live"] == pytest.approx(expected, rel=1e-9, abs=0)
        assert record["sse"] == pytest.approx(np.sum((actual - predicted) ** 2), rel=1e-9)
        rows = zones_of(path)
        predicted_all = sklearn_predict(out, rows)
        assert record["rows"] == len(rows)
        assert record["mean_predicted_duration"] == pytest.approx(predicted_all.mean(), rel=1e-9)
        assert record["predicted_sum"] == pytest.approx(predicted_all.sum(), rel=1e-9)
        for side, column in (("pickup", "PULocationID"), ("dropoff", "DOLocationID")):
            want = independent_psi(kept_train[column].value_counts(), rows[column].value_counts())
            assert record[f"psi_{side}"] == pytest.approx(want, rel=1e-9, abs=0)
        everything.append(rows)
        scored.append((actual, predicted))

    # The bounds are inclusive to the microsecond: 1 and 60 minutes count, one more
    # microsecond outside does not, nor a null time; zones the model never saw are scored.
    assert records["apr.parquet"]["rows_scored"] == 5
    # The run's figures are exact over all the rows, not averages of the inputs' figures.
    actual = np.concatenate([a for a, _ in scored])
    predicted = np.concatenate([p for _, p in scored])
    assert summary["rows_scored"] == actual.size
    assert summary["rmse_live"] == pytest.approx(
        math.sqrt(mean_squared_error(actual, predicted)), rel=1e-9, abs=0
    )
    rows = pd.concat(everything)
    assert summary["mean_predicted_duration"] == pytest.approx(
        sklearn_predict(out, rows).mean(), rel=1e-9
    )
    for side, column in (("pickup", "PULocationID"), ("dropoff", "DOLocationID")):
        want = independent_psi(kept_train[column].value_counts(), rows[column].value_counts())
        assert summary[f"psi_{side}"] == pytest.approx(want, rel=1e-9, abs=0)
    # Each record names its output, and the mean matches what was written there, which
    # is the model's prediction to the last bit (from the pair table or, for ids beyond
    # it, zone by zone).
    model = artifacts.load(out).model
    for record in summary["input_records"]:
        written = pq.read_table(record["output"]).column("predicted_duration").to_numpy()
        rows = zones_of(Path(record["input"]))
        pu, do = (rows[c].astype(int).to_numpy() for c in ZONES)
        np.testing.assert_array_equal(written, model.predict(pu, do))
        assert record["mean_predicted_duration"] == pytest.approx(written.mean(), rel=1e-12)
        mtime = Path(record["input"]).stat().st_mtime
        assert pd.Timestamp(record["input_mtime"]).timestamp() == pytest.approx(mtime, abs=1e-5)


def test_an_input_without_drop_off_times_is_predicted_unscored(months, tmp_path):
    jan, feb, _ = months
    out = tmp_path / "artifacts"
    train(jan, feb, out)
    table = trips_table([1, 2, 3], [2, 3, 4], [5.0, 6.0, 7.0])
    folder = tmp_path / "new"
    folder.mkdir()
    pq.write_table(table.drop_columns(["tpep_dropoff_datetime"]), folder / "a.parquet")
    as_text = table.set_column(2, "tpep_dropoff_datetime", pa.array(["x", "y", "z"], pa.string()))
    pq.write_table(as_text, folder / "b.parquet")  # a drop-off column that is no timestamp
    summary = infer(folder, out)
    assert summary["inputs_predicted"] == 2
    assert summary["rows_predicted"] == 6
    assert (summary["rows_scored"], summary["rmse_live"]) == (0, None)
    for record in summary["input_records"]:
        assert (record["rows"], record["rows_scored"], record["rmse_live"]) == (3, 0, None)
        assert record["psi_pickup"] is not None
    assert summary["mean_predicted_duration"] == pytest.approx(
        sklearn_predict(out, zones_of(folder / "a.parquet")).mean(), rel=1e-9
    )


def test_a_model_trained_before_its_mix_was_recorded_gets_no_drift(months, tmp_path):
    jan, feb, incoming = months
    out = tmp_path / "artifacts"
    train(jan, feb, out)
    model = artifacts.load(out).model
    old = {"created": "2026-01-01T00:00:00Z", "min_duration": 1.0, "max_duration": 60.0}
    with artifacts.training_lock(out):
        artifacts.publish(out, model, old)  # the metadata of a version from before
    summary = infer(incoming / "mar.parquet", out)
    assert (summary["psi_pickup"], summary["psi_dropoff"]) == (None, None)
    df = frame(incoming / "mar.parquet")
    expected = math.sqrt(mean_squared_error(df.duration, sklearn_predict(out, df)))
    assert summary["rmse_live"] == pytest.approx(expected, rel=1e-9, abs=0)


def test_live_error_uses_the_models_own_bounds(months, tmp_path):
    jan, feb, incoming = months
    out = tmp_path / "artifacts"
    train(jan, feb, out, "--min-duration", "5", "--max-duration", "30")
    summary = infer(incoming / "mar.parquet", out)
    df = frame(incoming / "mar.parquet", 5, 30)
    assert summary["rows_scored"] == len(df)
    expected = math.sqrt(mean_squared_error(df.duration, sklearn_predict(out, df)))
    assert summary["rmse_live"] == pytest.approx(expected, rel=1e-9, abs=0)


def test_evaluation_records_match_the_rows(months, tmp_path):
    jan, feb, _ = months
    out = tmp_path / "artifacts"
    summary = train(jan, feb, out)
    metadata = artifacts.load(out).metadata
    assert summary["model_created"] == metadata["created"]
    records = metadata["evaluation_records"]
    df = frame(feb)
    actual = df.duration.to_numpy()
    predicted = sklearn_predict(out, df)
    residual = actual - predicted
    assert records["rows"] == len(df) == summary["eval_rows_kept"]

    def clipped_histogram(values: np.ndarray, edges: list[float]) -> list[int]:
        return np.histogram(np.clip(values, edges[0], edges[-1]), edges)[0].tolist()

    histogram = records["residual_histogram"]
    assert histogram["edges"] == list(np.arange(-60.0, 61.0))
    assert histogram["counts"] == clipped_histogram(residual, histogram["edges"])
    assert sum(histogram["counts"]) == len(df)
    histogram = records["predicted_histogram"]
    assert histogram["counts"] == clipped_histogram(predicted, histogram["edges"])
    grid = records["predicted_vs_actual"]
    p_edges, a_edges = grid["predicted_edges"], grid["actual_edges"]
    want = np.histogram2d(
        np.clip(predicted, p_edges[0], p_edges[-1]),
        np.clip(actual, a_edges[0], a_edges[-1]),
        bins=[p_edges, a_edges],
    )[0]
    assert grid["counts"] == want.astype(int).tolist()

    df["residual"] = residual
    df["squared"] = residual**2
    for side, column in (("pickup", "PULocationID"), ("dropoff", "DOLocationID")):
        groups = df.groupby(column).agg(
            rows=("residual", "size"), sse=("squared", "sum"), residual_sum=("residual", "sum")
        )
        zones = records["zones"][side]
        assert sorted(zones) == sorted(groups.index)
        for zone, row in groups.iterrows():
            assert zones[zone]["rows"] == row.rows
            assert zones[zone]["sse"] == pytest.approx(row.sse, rel=1e-9, abs=1e-9)
            assert zones[zone]["residual_sum"] == pytest.approx(row.residual_sum, abs=1e-9)

    # What the model predicts on its own kept training rows, and their zone mixes.
    kept = frame(jan)
    histogram = metadata["training_predicted_histogram"]
    assert histogram["counts"] == clipped_histogram(sklearn_predict(out, kept), histogram["edges"])
    for side, column in (("pickup", "PULocationID"), ("dropoff", "DOLocationID")):
        assert metadata["training_mix"][side] == kept[column].value_counts().to_dict()
    # The sum of the per-zone squared errors is the evaluation RMSE the gate uses.
    sse = sum(z["sse"] for z in records["zones"]["pickup"].values())
    assert math.sqrt(sse / records["rows"]) == pytest.approx(summary["rmse_eval"], rel=1e-9)


@pytest.mark.parametrize("count", [2, 3])
def test_sharded_training_records_equal_the_one_process_ones(make_trips, tmp_path, count):
    folder = tmp_path / "data"
    for month, (rows, group) in enumerate([(3000, 700), (2500, 1000)], 1):
        make_trips(f"train-{month}.parquet", rows=rows, seed=month, row_group_size=group,
                   folder=folder)  # fmt: skip
    for month, (rows, group) in enumerate([(1500, 400), (1200, 500)], 1):
        make_trips(f"eval-{month}.parquet", rows=rows, seed=10 + month, row_group_size=group,
                   folder=folder)  # fmt: skip
    jan, feb = folder / "train-*.parquet", folder / "eval-*.parquet"
    single = tmp_path / "one"
    train(jan, feb, single)
    sharded = tmp_path / "sharded"
    for index in range(count):
        train(jan, feb, sharded, "--shards", str(count), "--shard-index", str(index),
              "--run-id", "run-1")  # fmt: skip
    a, b = artifacts.load(single).metadata, artifacts.load(sharded).metadata
    assert b["run_id"] == "run-1"
    assert a["training_mix"] == b["training_mix"]
    assert a["training_predicted_histogram"] == b["training_predicted_histogram"]
    ra, rb = a["evaluation_records"], b["evaluation_records"]
    for key in ("rows", "residual_histogram", "predicted_vs_actual", "predicted_histogram"):
        assert ra[key] == rb[key]
    for side in ("pickup", "dropoff"):
        assert ra["zones"][side].keys() == rb["zones"][side].keys()
        for zone, values in ra["zones"][side].items():
            assert rb["zones"][side][zone]["rows"] == values["rows"]
            for key in ("sse", "residual_sum"):
                assert rb["zones"][side][zone][key] == pytest.approx(values[key], abs=1e-9)


def test_text_output_and_runs_show_the_live_error_not_the_records(months, tmp_path):
    jan, feb, incoming = months
    out = tmp_path / "artifacts"
    train(jan, feb, out)
    text = invoke("infer", "--input", str(incoming), "--artifacts", str(out), "-q").stdout
    assert "input_records" not in text
    assert "rmse_live" in text and "psi_pickup" in text
    summary = infer(incoming, out, "--force")
    line = describe_summary("infer", summary)
    assert f"rmse live {summary['rmse_live']:.3f} on {summary['rows_scored']} rows scored" in line


def test_the_termination_log_drops_the_records_first(months, tmp_path):
    jan, feb, incoming = months
    out = tmp_path / "artifacts"
    train(jan, feb, out)
    summary = infer(incoming, out)
    many = {**summary, "input_records": summary["input_records"] * 30}
    assert len(json.dumps(many)) > 4096
    kept = json.loads(fit_json(many))
    assert "input_records" not in kept
    assert kept["input_records_omitted"] == 30 * len(summary["input_records"]) == 90
    # the run's own figures and its (short) lists stay whole
    for key in ("rows_scored", "rmse_live", "psi_pickup", "psi_dropoff", "outputs"):
        assert kept[key] == summary[key]


def test_psi_of_equal_mixes_is_zero_and_grows_with_a_shift():
    assert quality.psi({"1": 10, "2": 30}, {"1": 1, "2": 3}) == 0.0
    small = quality.psi({"1": 50, "2": 50}, {"1": 55, "2": 45})
    large = quality.psi({"1": 50, "2": 50}, {"1": 90, "2": 10})
    assert small is not None and large is not None and 0 < small < large
    # a zone on one side only counts at the floor proportion, not infinitely
    only_new = quality.psi({"1": 100}, {"1": 50, "2": 50})
    assert only_new == pytest.approx(
        (0.5 - 1) * math.log(0.5) + (0.5 - 1e-6) * math.log(0.5 / 1e-6)
    )
    assert quality.psi({}, {"1": 3}) is None


def test_histogram_counts_beyond_the_edges_in_the_outer_bins():
    edges = quality.RESIDUAL_EDGES
    values = np.array([-1e9, -60.0, -59.5, 0.0, 59.999, 60.0, 1e9, -0.0])
    counts = quality.histogram(values, edges)
    assert counts.sum() == values.size
    assert counts.tolist() == np.histogram(np.clip(values, -60, 60), edges)[0].tolist()
    assert (counts[0], counts[-1], counts[60]) == (3, 3, 2)


def test_zone_sums_handle_ids_beyond_the_dense_table():
    sums = quality.ZoneSums(width=2)
    ids = np.array([-1, 5, 5, 600, -7, 600, 510])
    sums.add(ids, np.arange(7.0))
    assert sums.counts() == {"-7": 1, "-1": 1, "5": 2, "510": 1, "600": 2}
    got = {zone: values[1] for zone, values in sums.items()}
    assert got == {-7: 4.0, -1: 0.0, 5: 3.0, 510: 6.0, 600: 8.0}


@pytest.mark.parametrize(
    "edges", [quality.RESIDUAL_EDGES, quality.GRID_EDGES, quality.PREDICTED_EDGES, (0.0, 0.3, 1.0)]
)
def test_bins_are_numpys_on_and_next_to_every_edge(edges):
    """The arithmetic binning of evenly spaced edges against numpy's own, where rounding
    would show: on each edge and one float either side of it, and far outside."""
    on = np.array(edges)
    values = np.concatenate(
        [on, np.nextafter(on, -np.inf), np.nextafter(on, np.inf), [-1e300, 1e300, -0.0]]
    )
    values = np.concatenate([values, np.random.default_rng(0).uniform(-100, 100, 10_000)])
    clipped = np.clip(values, edges[0], edges[-1])
    assert quality.histogram(values, edges).tolist() == np.histogram(clipped, edges)[0].tolist()
    expected = np.searchsorted(np.array(edges), clipped, side="right") - 1
    np.testing.assert_array_equal(quality.bins(values, edges), np.minimum(expected, len(edges) - 2))
