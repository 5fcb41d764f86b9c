"""Bad input: one clear last line naming the file and the problem, exit 2, nothing published."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from trips import trips_table

from job.cli import cli
from job.errors import EXIT_BAD_INPUT, EXIT_NO_MODEL

Defect = Callable[[Path], tuple[Path, str]]


def good(path: Path, seed: int = 0) -> Path:
    table = trips_table(
        [1, 2, 3, 1, 2] * 20, [2, 3, 1, 3, 1] * 20, [5.0, 12.0, 30.0, 7.5, 3.0] * 20, seed=seed
    )
    pq.write_table(table, path)
    return path


def missing(folder: Path) -> tuple[Path, str]:
    return folder / "nowhere.parquet", "no such file"


def not_parquet(folder: Path) -> tuple[Path, str]:
    path = folder / "notes.parquet"
    path.write_text("VendorID,tpep_pickup_datetime\n1,2021-01-01\n")
    return path, "not a parquet file"


def truncated(folder: Path) -> tuple[Path, str]:
    path = good(folder / "cut.parquet")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path, "not a parquet file or truncated"


def missing_column(folder: Path) -> tuple[Path, str]:
    path = folder / "nozones.parquet"
    pq.write_table(pq.read_table(good(path)).drop(["DOLocationID"]), path)
    return path, "missing required column(s) DOLocationID"


def _column_as_strings(path: Path, column: str) -> Path:
    table = pq.read_table(good(path))
    index = table.schema.get_field_index(column)
    pq.write_table(table.set_column(index, column, table.column(index).cast(pa.string())), path)
    return path


def wrong_type(folder: Path) -> tuple[Path, str]:
    path = _column_as_strings(folder / "strings.parquet", "PULocationID")
    return path, "column PULocationID has type string, expected an integer"


def wrong_time_type(folder: Path) -> tuple[Path, str]:
    path = _column_as_strings(folder / "times.parquet", "tpep_pickup_datetime")
    return path, "column tpep_pickup_datetime has type string, expected a timestamp"


def zero_rows(folder: Path) -> tuple[Path, str]:
    path = folder / "empty.parquet"
    pq.write_table(pq.read_table(good(path)).slice(0, 0), path)
    return path, "the file has no rows"


def all_filtered(folder: Path) -> tuple[Path, str]:
    path = folder / "outliers.parquet"
    pq.write_table(trips_table([1, 2, 3], [2, 3, 1], [0.0, -3.0, 61.5]), path)
    return path, "lasts between 1 and 60 minutes (3 rows read)"


DEFECTS = [missing, not_parquet, truncated, missing_column, wrong_type, wrong_time_type, zero_rows]


def run(args: list[str]) -> object:
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def assert_one_clear_line(result, path: Path, problem: str) -> None:
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert str(path.name) in last and problem in last, last
    assert last.startswith("taxi-job: error: ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("defect", [*DEFECTS, all_filtered], ids=lambda d: d.__name__)
@pytest.mark.parametrize("role", ["train", "eval"])
def test_train_refuses_bad_data_and_publishes_nothing(tmp_path: Path, defect: Defect, role: str):
    bad, problem = defect(tmp_path)
    ok = good(tmp_path / "ok.parquet")
    artifacts = tmp_path / "artifacts"
    train, evaluation = (bad, ok) if role == "train" else (ok, bad)
    result = run(
        [
            "train",
            "--train-data",
            str(train),
            "--eval-data",
            str(evaluation),
            "--artifacts",
            str(artifacts),
        ]
    )
    assert_one_clear_line(result, bad, problem)
    assert not (artifacts / "CURRENT").exists()
    assert not list((artifacts / "models").glob("*")) if (artifacts / "models").exists() else True


@pytest.mark.parametrize("defect", DEFECTS, ids=lambda d: d.__name__)
def test_infer_refuses_bad_data_and_writes_no_prediction(tmp_path: Path, defect: Defect):
    artifacts = tmp_path / "artifacts"
    ok = good(tmp_path / "ok.parquet")
    assert (
        run(
            [
                "train",
                "--train-data",
                str(ok),
                "--eval-data",
                str(ok),
                "--artifacts",
                str(artifacts),
            ]
        ).exit_code
        == 0
    )
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    good(incoming / "a_first.parquet")  # fine, but must not be published either
    bad, problem = defect(incoming)
    source = str(bad) if defect is missing else str(incoming)
    result = run(["infer", "--input", source, "--artifacts", str(artifacts)])
    assert_one_clear_line(result, bad, problem)
    predictions = artifacts / "predictions"
    assert not predictions.exists() or list(predictions.iterdir()) == []


def test_infer_before_any_model(tmp_path: Path):
    data = good(tmp_path / "march.parquet")
    result = run(["infer", "--input", str(data), "--artifacts", str(tmp_path / "artifacts")])
    assert result.exit_code == EXIT_NO_MODEL
    last = result.stderr.strip().splitlines()[-1]
    assert "no model yet" in last and "taxi-job train" in last
    assert not (tmp_path / "artifacts" / "predictions").exists()


def test_infer_with_a_tampered_model(tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    ok = good(tmp_path / "ok.parquet")
    run(["train", "--train-data", str(ok), "--eval-data", str(ok), "--artifacts", str(artifacts)])
    (model_file,) = (artifacts / "models").glob("*/model.json")
    model_file.write_text(model_file.read_text().replace('"intercept": ', '"intercept": 1'))
    result = run(["infer", "--input", str(ok), "--artifacts", str(artifacts)])
    assert result.exit_code == EXIT_NO_MODEL
    last = result.stderr.strip().splitlines()[-1]
    assert "model.json" in last and "checksum mismatch" in last
    assert not list((artifacts / "predictions").glob("*.parquet"))


def test_train_data_glob_that_matches_nothing(tmp_path: Path):
    ok = good(tmp_path / "ok.parquet")
    result = run(
        [
            "train",
            "--train-data",
            str(tmp_path / "2030-*.parquet"),
            "--eval-data",
            str(ok),
            "--artifacts",
            str(tmp_path / "a"),
        ]
    )
    assert_one_clear_line(result, tmp_path / "2030-*.parquet", "no file matches this pattern")


def test_min_duration_above_max_is_a_usage_error(tmp_path: Path):
    ok = good(tmp_path / "ok.parquet")
    result = run(
        [
            "train",
            "--train-data",
            str(ok),
            "--eval-data",
            str(ok),
            "--artifacts",
            str(tmp_path / "a"),
            "--min-duration",
            "60",
            "--max-duration",
            "1",
        ]
    )
    assert result.exit_code == EXIT_BAD_INPUT
    assert "--min-duration 60 must be below --max-duration 1" in result.stderr
