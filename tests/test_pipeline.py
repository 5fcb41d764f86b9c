"""`taxi-job train` and `taxi-job infer` end to end: the CLI contract and the semantics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LinearRegression

from job import artifacts
from job.cli import cli

TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))


def invoke(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


@pytest.fixture
def months(make_trips):
    return (
        make_trips("yellow_tripdata_2021-01.parquet", rows=6000, seed=1, row_group_size=1000),
        make_trips("yellow_tripdata_2021-02.parquet", rows=5000, seed=2, row_group_size=1500),
        make_trips("yellow_tripdata_2021-03.parquet", rows=4000, seed=3, row_group_size=700),
    )


def textbook(train: Path, evaluation: Path, predict: Path):
    """The seed notebook's pipeline, with a dense (exact) solve: the reference we match."""

    def frame(path: Path, with_target: bool):
        df = pq.read_table(path).to_pandas()
        if with_target:
            df["duration"] = (
                df.tpep_dropoff_datetime - df.tpep_pickup_datetime
            ).dt.total_seconds() / 60
            df = df[df.duration.between(1, 60)].copy()
        cols = ["PULocationID", "DOLocationID"]
        df[cols] = df[cols].fillna(-1).astype("int").astype("str")
        return df, df[cols].to_dict(orient="records")

    df, records = frame(train, True)
    dv = DictVectorizer()
    x = dv.fit_transform(records)
    lr = LinearRegression().fit(x.toarray(), df.duration.values)
    df_eval, records_eval = frame(evaluation, True)
    pred_eval = lr.predict(dv.transform(records_eval).toarray())
    rmse_eval = float(np.sqrt(np.mean((pred_eval - df_eval.duration.values) ** 2)))
    rmse_train = float(np.sqrt(np.mean((lr.predict(x.toarray()) - df.duration.values) ** 2)))
    _, records_pred = frame(predict, False)
    return dv, lr, rmse_train, rmse_eval, len(df), lr.predict(dv.transform(records_pred).toarray())


def test_train_then_infer_matches_the_seed_pipeline(months, tmp_path):
    jan, feb, mar = months
    out = tmp_path / "artifacts"
    summary = last_json(
        invoke(
            "train",
            "--train-data",
            str(jan),
            "--eval-data",
            str(feb),
            "--artifacts",
            str(out),
            "--output-format",
            "json",
        ).stdout
    )
    dv, lr, rmse_train, rmse_eval, kept, expected = textbook(jan, feb, mar)
    assert summary["rmse_train"] == pytest.approx(rmse_train, rel=1e-9)
    assert summary["rmse_eval"] == pytest.approx(rmse_eval, rel=1e-9)
    assert summary["rows_read"] == 6000
    assert summary["rows_kept"] == kept
    assert summary["features"] == len(dv.feature_names_)
    assert isinstance(summary["features"], int)
    assert (out / "CURRENT").read_text().strip() == summary["model_version"]

    report = last_json(
        invoke(
            "infer", "--input", str(mar), "--artifacts", str(out), "--output-format", "json"
        ).stdout
    )
    assert report["model_version"] == summary["model_version"]
    assert report["inputs_predicted"] == 1 and report["inputs_skipped"] == 0
    assert report["rows_predicted"] == 4000
    (output,) = report["outputs"]
    assert Path(output) == out / "predictions" / mar.parent.name / mar.name
    predicted = pq.read_table(output)
    source = pq.read_table(mar)
    assert predicted.column_names == [
        "row",
        "tpep_pickup_datetime",
        "PULocationID",
        "DOLocationID",
        "predicted_duration",
        "model_version",
    ]
    assert predicted.column("row").to_pylist() == list(range(4000))
    assert predicted.column("tpep_pickup_datetime").equals(source.column("tpep_pickup_datetime"))
    assert predicted.column("PULocationID").equals(source.column("PULocationID"))
    np.testing.assert_allclose(
        predicted.column("predicted_duration").to_numpy(), expected, atol=1e-9
    )
    assert set(predicted.column("model_version").to_pylist()) == {summary["model_version"]}


def test_infer_skips_what_the_current_model_predicted(months, tmp_path):
    jan, feb, mar = months
    out = tmp_path / "artifacts"
    invoke("train", "--train-data", str(jan), "--eval-data", str(feb), "--artifacts", str(out))
    incoming = mar.parent
    first = last_json(
        invoke(
            "infer", "--input", str(incoming), "--artifacts", str(out), "--output-format", "json"
        ).stdout
    )
    assert first["inputs_predicted"] == 3
    written = {p: p.stat().st_mtime_ns for p in (out / "predictions" / incoming.name).iterdir()}
    again = last_json(
        invoke(
            "infer", "--input", str(incoming), "--artifacts", str(out), "--output-format", "json"
        ).stdout
    )
    assert (again["inputs_predicted"], again["inputs_skipped"], again["rows_predicted"]) == (
        0,
        3,
        0,
    )
    assert {
        p: p.stat().st_mtime_ns for p in (out / "predictions" / incoming.name).iterdir()
    } == written
    forced = last_json(
        invoke(
            "infer",
            "--input",
            str(mar),
            "--artifacts",
            str(out),
            "--force",
            "--output-format",
            "json",
        ).stdout
    )
    assert forced["inputs_predicted"] == 1
    # A new model makes every input due again.
    invoke("train", "--train-data", str(feb), "--eval-data", str(mar), "--artifacts", str(out))
    renewed = last_json(
        invoke(
            "infer", "--input", str(incoming), "--artifacts", str(out), "--output-format", "json"
        ).stdout
    )
    assert renewed["inputs_predicted"] == 3


def test_infer_predicts_a_changed_input_again(months, tmp_path, make_trips):
    jan, feb, mar = months
    out = tmp_path / "artifacts"
    invoke("train", "--train-data", str(jan), "--eval-data", str(feb), "--artifacts", str(out))
    invoke("infer", "--input", str(mar), "--artifacts", str(out))
    make_trips(mar.name, rows=100, seed=9)  # the same name, new content
    report = last_json(
        invoke(
            "infer", "--input", str(mar), "--artifacts", str(out), "--output-format", "json"
        ).stdout
    )
    assert report["rows_predicted"] == 100


def test_infer_predicts_again_a_file_rewritten_in_place_with_its_old_mtime(tmp_path, months):
    """Same size, same footer (rows reordered, uncompressed), modification time put back:
    only the change time and the inode tell, and they are part of the fingerprint."""
    jan, feb, _ = months
    out = tmp_path / "artifacts"
    invoke("train", "--train-data", str(jan), "--eval-data", str(feb), "--artifacts", str(out))
    table = pq.read_table(feb)
    path = tmp_path / "incoming" / "trips.parquet"
    path.parent.mkdir()
    options = {"compression": "none", "use_dictionary": False, "write_statistics": False}
    pq.write_table(table, path, **options)
    invoke("infer", "--input", str(path.parent), "--artifacts", str(out))
    before = path.stat()
    rewritten = tmp_path / "rewritten.parquet"
    pq.write_table(table.take(np.arange(table.num_rows)[::-1]), rewritten, **options)
    assert rewritten.stat().st_size == before.st_size
    assert pq.read_metadata(rewritten).to_dict() == pq.read_metadata(path).to_dict()
    with open(path, "r+b") as handle:  # in place: the same inode
        handle.write(rewritten.read_bytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    report = last_json(
        invoke(
            "infer", "--input", str(path.parent), "--artifacts", str(out), "--output-format", "json"
        ).stdout
    )
    assert report["inputs_predicted"] == 1
    predicted = pq.read_table(out / "predictions" / path.parent.name / path.name)
    assert predicted["PULocationID"].to_pylist() == table["PULocationID"].to_pylist()[::-1]


def test_empty_incoming_folder_is_nothing_to_do(months, tmp_path):
    jan, feb, _ = months
    out = tmp_path / "artifacts"
    invoke("train", "--train-data", str(jan), "--eval-data", str(feb), "--artifacts", str(out))
    empty = tmp_path / "incoming"
    empty.mkdir()
    (empty / ".partial.parquet").write_bytes(b"being copied")  # hidden: not picked up
    report = last_json(
        invoke(
            "infer", "--input", str(empty), "--artifacts", str(out), "--output-format", "json"
        ).stdout
    )
    assert (report["inputs_predicted"], report["rows_predicted"]) == (0, 0)


def test_glob_and_directory_sources_train_on_all_files(months, tmp_path):
    jan, feb, mar = months
    out = tmp_path / "artifacts"
    summary = last_json(
        invoke(
            "train",
            "--train-data",
            str(jan.parent / "yellow_tripdata_2021-0[12].parquet"),
            "--eval-data",
            str(mar),
            "--artifacts",
            str(out),
            "--output-format",
            "json",
        ).stdout
    )
    assert summary["rows_read"] == 11000
    metadata = artifacts.load(out).metadata
    assert [i["uri"] for i in metadata["inputs"]["train"]] == [str(jan), str(feb)]
    assert {"size", "mtime_ns", "footer_sha256"} <= set(metadata["inputs"]["train"][0])


def test_options_come_from_the_environment(months, tmp_path):
    jan, feb, mar = months
    out = tmp_path / "from-env"
    env = {
        "TAXI_JOB_TRAIN_DATA": str(jan),
        "TAXI_JOB_EVAL_DATA": str(feb),
        "TAXI_JOB_ARTIFACTS": str(out),
        "TAXI_JOB_OUTPUT_FORMAT": "json",
        "TAXI_JOB_MAX_DURATION": "30",
    }
    summary = last_json(invoke("train", env=env).stdout)
    assert artifacts.load(out).metadata["max_duration"] == 30.0
    # A flag wins over the environment.
    summary2 = last_json(invoke("train", "--max-duration", "45", env=env).stdout)
    assert artifacts.load(out, summary2["model_version"]).metadata["max_duration"] == 45.0
    assert summary2["rows_kept"] > summary["rows_kept"]
    report = last_json(
        invoke(
            "infer",
            env={**env, "TAXI_JOB_INPUT": str(mar), "TAXI_JOB_PREDICTIONS": str(tmp_path / "p")},
        ).stdout
    )
    assert report["outputs"] == [str(tmp_path / "p" / mar.parent.name / mar.name)]


def test_null_zones_are_category_minus_one(tmp_path, make_trips):
    train = make_trips(
        "t.parquet", pu=[None, None, 1, 1, 2], do=[1, 1, None, 2, 2], minutes=[10, 12, 20, 5, 8]
    )
    out = tmp_path / "a"
    invoke("train", "--train-data", str(train), "--eval-data", str(train), "--artifacts", str(out))
    model = artifacts.load(out).model
    assert -1 in model.pu_ids.tolist() and -1 in model.do_ids.tolist()


def test_duration_bounds_are_inclusive(tmp_path, make_trips):
    train = make_trips(
        "t.parquet", pu=[1, 1, 1, 1, 1], do=[2, 2, 2, 2, 2], minutes=[1.0, 60.0, 0.99, 60.01, None]
    )
    summary = last_json(
        invoke(
            "train",
            "--train-data",
            str(train),
            "--eval-data",
            str(train),
            "--artifacts",
            str(tmp_path / "a"),
            "--output-format",
            "json",
        ).stdout
    )
    assert (summary["rows_read"], summary["rows_kept"]) == (5, 2)


def test_termination_log_holds_the_summary(months, tmp_path):
    jan, feb, _ = months
    log = tmp_path / "termination-log"
    result = invoke(
        "train",
        "--train-data",
        str(jan),
        "--eval-data",
        str(feb),
        "--artifacts",
        str(tmp_path / "a"),
        "--termination-log",
        str(log),
    )
    assert json.loads(log.read_text())["rows_read"] == 6000
    assert "rmse_eval" in result.stdout  # the text summary


def test_load_sklearn_gives_working_objects(months, tmp_path):
    jan, feb, mar = months
    out = tmp_path / "a"
    invoke("train", "--train-data", str(jan), "--eval-data", str(feb), "--artifacts", str(out))
    vectorizer, regression = artifacts.load_sklearn(out)
    model = artifacts.load(out).model
    rows = [
        {"PULocationID": "3", "DOLocationID": "7"},
        {"PULocationID": "999", "DOLocationID": "-1"},
    ]
    np.testing.assert_allclose(
        regression.predict(vectorizer.transform(rows)),
        model.predict(np.array([3, 999]), np.array([7, -1])),
        atol=1e-9,
    )


def test_the_installed_command_runs_as_a_process(months, tmp_path):
    jan, feb, mar = months
    out = tmp_path / "artifacts"
    env = {**os.environ, "TAXI_JOB_ARTIFACTS": str(out), "TAXI_JOB_LOG_FORMAT": "json"}
    train = subprocess.run(
        [
            TAXI_JOB,
            "train",
            "--train-data",
            str(jan),
            "--eval-data",
            str(feb),
            "--output-format",
            "json",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert train.returncode == 0, train.stderr
    assert last_json(train.stdout)["rows_read"] == 6000
    logs = [json.loads(line) for line in train.stderr.splitlines()]
    assert any(entry["message"].startswith("published model") for entry in logs)
    bad = subprocess.run(
        [TAXI_JOB, "infer", "--input", str(tmp_path / "none.parquet")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip().splitlines()[-1]
        == f"taxi-job: error: {tmp_path / 'none.parquet'}: no such file or directory"
    )


def test_a_failing_background_write_reaches_the_caller():
    """A write error on the writer thread (a full volume, say) fails the run, not silently."""
    import pyarrow as pa

    from job.inference import BackgroundWriter

    class FullDisk:
        def write_table(self, table, row_group_size):
            raise OSError(28, "No space left on device")

    table = pa.table({"x": [1, 2, 3]})
    with (
        pytest.raises(OSError, match="No space left"),
        BackgroundWriter(FullDisk()) as writer,  # type: ignore[arg-type]
    ):
        for _ in range(10):
            writer.write(table)
