"""A sharded training's run id stands for one set of options and inputs: a run id that
published is not reused for another training, and shards of one run that were given
different options are refused, rather than leaving the model to whichever came last."""

from __future__ import annotations

from pathlib import Path

from test_shards import run, shard, summary, train_args, year  # noqa: F401 - year: a fixture

from job import artifacts
from job.errors import EXIT_BAD_INPUT


def test_reusing_a_published_run_id_for_new_data_is_refused(year, tmp_path, make_trips):  # noqa: F811
    train, evaluation = year
    out = tmp_path / "a"
    summary(shard(train, evaluation, out, 0, 2, run_id="r1"))
    published = summary(shard(train, evaluation, out, 1, 2, run_id="r1"))["model_version"]
    newer = make_trips("newer.parquet", rows=3000, seed=77, row_group_size=1000, zones=40)

    result = shard(newer, evaluation, out, 0, 2, run_id="r1")

    assert result.exit_code == EXIT_BAD_INPUT
    assert (
        f"run id r1: published {published} with --train-data {train}, this shard {newer}"
        in result.stderr
    )
    assert artifacts.versions(out) == [published]


def test_a_published_run_id_whose_inputs_changed_is_refused(year, tmp_path, make_trips):  # noqa: F811
    _, evaluation = year
    month = make_trips("month.parquet", rows=3000, seed=5, row_group_size=1000, zones=40)
    out = tmp_path / "a"
    summary(shard(month, evaluation, out, 0, 2, run_id="r1"))
    published = summary(shard(month, evaluation, out, 1, 2, run_id="r1"))["model_version"]
    make_trips("month.parquet", rows=3500, seed=6, row_group_size=1000, zones=40)  # rewritten

    result = shard(month, evaluation, out, 1, 2, run_id="r1")

    assert result.exit_code == EXIT_BAD_INPUT
    assert f"run id r1: published {published} already, from inputs that have changed" in (
        result.stderr
    )


def test_a_late_duplicate_of_a_published_run_is_still_a_no_op(year, tmp_path):  # noqa: F811
    train, evaluation = year
    out = tmp_path / "a"
    summary(shard(train, evaluation, out, 0, 2, run_id="r1"))
    published = summary(shard(train, evaluation, out, 1, 2, run_id="r1"))["model_version"]

    assert summary(shard(train, evaluation, out, 0, 2, run_id="r1"))["published_already"] == (
        published
    )


def test_shards_of_one_run_with_different_options_are_refused(year, tmp_path):  # noqa: F811
    train, evaluation = year
    out = tmp_path / "a"
    summary(shard(train, evaluation, out, 0, 2, run_id="r1"))
    args = [*train_args(train, evaluation, out), "--shards", "2", "--shard-index", "1"]

    result = run(*args, "--run-id", "r1", "--min-duration", "5")

    assert result.exit_code == EXIT_BAD_INPUT
    assert "run id r1: shard 0 ran with --min-duration 1" in result.stderr
    assert "this shard 5" in result.stderr
    assert artifacts.versions(out) == []  # nobody reduced


def test_a_shard_that_ends_waiting_says_which_shards_it_waits_for(year, tmp_path: Path):  # noqa: F811
    """A Job of fewer pods than --shards ends with every pod green: the summary says the
    run is waiting for a shard that will never come."""
    train, evaluation = year
    out = tmp_path / "a"

    result = shard(train, evaluation, out, 0, 3, run_id="r1")

    assert summary(result)["missing_shards"] == [1, 2]
    assert "shard 0 of 3 done; shard(s) [1, 2] not done yet" in result.stderr
    assert "if they never run, run r1 publishes nothing" in result.stderr
