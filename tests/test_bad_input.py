"""Bad input: one clear last line naming the file and the problem, exit 2, nothing published."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from trips import trips_table

from job import predicted
from job.cli import cli
from job.errors import EXIT_BAD_INPUT, EXIT_NO_MODEL
from job.runs import describe_summary

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


def trained(tmp_path: Path) -> Path:
    artifacts = tmp_path / "artifacts"
    ok = good(tmp_path / "ok.parquet")
    args = ["train", "--train-data", str(ok), "--eval-data", str(ok), "--artifacts", str(artifacts)]
    assert run(args).exit_code == 0
    return artifacts


@pytest.mark.parametrize("defect", DEFECTS, ids=lambda d: d.__name__)
def test_a_bad_input_named_on_the_command_line_is_refused_and_left_alone(
    tmp_path: Path, defect: Defect
):
    artifacts = trained(tmp_path)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    bad, problem = defect(incoming)
    before = bad.read_bytes() if bad.exists() else None
    result = run(["infer", "--input", str(bad), "--artifacts", str(artifacts)])
    assert_one_clear_line(result, bad, problem)
    assert (bad.read_bytes() if bad.exists() else None) == before  # never moved
    assert not (tmp_path / "rejected").exists()
    predictions = artifacts / "predictions"
    assert not predictions.exists() or [p for p in predictions.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("defect", DEFECTS[1:], ids=lambda d: d.__name__)
@pytest.mark.parametrize("listing", ["folder", "glob"])
def test_a_bad_input_of_the_queue_is_quarantined_and_the_good_ones_published(
    tmp_path: Path, defect: Defect, listing: str
):
    artifacts = trained(tmp_path)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    good(incoming / "a_first.parquet")
    bad, problem = defect(incoming)
    content = bad.read_bytes()
    good(incoming / "z_last.parquet", seed=1)
    source = str(incoming) if listing == "folder" else str(incoming / "*.parquet")
    args = ["infer", "--input", source, "--artifacts", str(artifacts), "--output-format", "json"]
    result = run([*args, "--termination-log", str(tmp_path / "termination-log")])
    moved = tmp_path / "rejected" / bad.name
    assert_one_clear_line(result, bad, problem)
    assert f"moved to {moved}" in result.stderr.strip().splitlines()[-1]
    # The good inputs are published, whole; the bad one is set aside, never deleted.
    predictions = artifacts / "predictions" / "incoming"
    assert sorted(p.name for p in predictions.iterdir() if p.name != predicted.INDEX) == [
        "a_first.parquet",
        "z_last.parquet",
    ]
    assert pq.read_table(predictions / "z_last.parquet").num_rows == 100
    assert not bad.exists() and moved.read_bytes() == content
    note = json.loads(moved.with_name(bad.name + ".json").read_text())
    assert problem in note["error"] and note["input"] == str(bad)
    assert {"rejected_at", "model_version", "host"} <= note.keys()
    # The summary (stdout and the pod's termination message) names the rejected file.
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["inputs_predicted"], summary["inputs_rejected"]) == (2, 1)
    assert summary["rejected"] == [
        {"input": str(bad), "moved_to": str(moved), "error": note["error"]}
    ]
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["exit_code"] == EXIT_BAD_INPUT and message["rejected"] == summary["rejected"]
    assert describe_summary("infer", message) == (
        f"2 inputs, 200 rows, 1 rejected ({bad.name}), "
        f"rmse live {summary['rmse_live']:.3f} on 200 rows scored "
        f"(model {summary['model_version']})"
    )
    # The next run is clean: nothing left to do.
    again = run(args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout.strip().splitlines()[-1])["inputs_skipped"] == 2


def test_a_file_rejected_again_under_the_same_name_keeps_both(tmp_path: Path):
    artifacts = trained(tmp_path)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for text in ("first", "second"):
        (incoming / "x.parquet").write_text(text)
        result = run(["infer", "--input", str(incoming), "--artifacts", str(artifacts)])
        assert result.exit_code == EXIT_BAD_INPUT
    rejected = tmp_path / "rejected"
    kept = sorted(p.read_text() for p in rejected.glob("x*.parquet"))
    assert kept == ["first", "second"]
    assert len(list(rejected.glob("x*.parquet.json"))) == 2


def test_a_bad_input_that_cannot_be_moved_is_left_in_place(tmp_path: Path):
    """A read-only queue, or ``rejected/`` not a folder: reported each run, the rest done."""
    artifacts = trained(tmp_path)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (tmp_path / "rejected").write_text("a file where the folder should be")
    bad, problem = not_parquet(incoming)
    good(incoming / "z_last.parquet")
    args = ["infer", "--input", str(incoming), "--artifacts", str(artifacts)]
    result = run([*args, "--output-format", "json"])
    assert_one_clear_line(result, bad, problem)
    assert result.stderr.strip().splitlines()[-1].endswith("left in place")
    assert bad.exists() and (artifacts / "predictions" / "incoming" / "z_last.parquet").is_file()
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rejected"][0]["moved_to"] is None


def test_infer_before_any_model_waits_quietly(tmp_path: Path):
    data = good(tmp_path / "march.parquet")
    args = ["infer", "--input", str(data), "--artifacts", str(tmp_path / "artifacts")]
    result = run([*args, "--output-format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["model_version"] is None and summary["waiting_for_model"] is True
    assert summary["inputs_predicted"] == 0
    warning = result.stderr.strip().splitlines()[-1]
    assert "no model yet" in warning and "taxi-job train" in warning
    assert not (tmp_path / "artifacts").exists()  # nothing written on a fresh volume
    assert summary["artifacts"] == str(tmp_path / "artifacts")
    assert describe_summary("infer", summary) == (
        f"no model yet in {tmp_path / 'artifacts'}: waiting for the first training"
    )


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
