"""Infer's queue: files still being copied in, the same name in two queues, a queue over
rejected/, the index that makes a run with nothing new cheap, and a backlog drained oldest
first within a budget. Real parquet files of the TLC schema, the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from job import inference, predicted, reading
from job.cli import cli
from job.cli.options import TERMINATION_LOG_BYTES
from job.errors import EXIT_BAD_INPUT


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--output-format", "json"], catch_exceptions=False)


def summary(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.fixture
def volume(tmp_path, make_trips) -> Path:
    """A volume as on the cluster: data/ with a trained model in artifacts/."""
    artifacts = tmp_path / "artifacts"
    train = make_trips("train.parquet", rows=2000, seed=1)
    result = run("train", "--train-data", str(train), "--eval-data", str(train),
                 "--artifacts", str(artifacts))  # fmt: skip
    assert result.exit_code == 0, result.output
    (tmp_path / "data").mkdir()
    return tmp_path


def infer(root: Path, source: str, *more: str) -> Result:
    return run("infer", "--input", source, "--artifacts", str(root / "artifacts"), *more)


# Files still being copied in ------------------------------------------------------------


@pytest.mark.parametrize("listing", ["folder", "glob"])
def test_a_file_still_being_copied_in_waits_for_a_later_run(volume, make_trips, listing):
    """Half a file in incoming/ (a copy under way): left alone and counted, not rejected;
    once whole, the next run predicts it. (Before, it was moved into rejected/, exit 2.)"""
    incoming = volume / "data" / "incoming"
    whole = make_trips("x.parquet", rows=500, seed=2, folder=volume / "staging").read_bytes()
    (incoming / "x.parquet").parent.mkdir()
    (incoming / "x.parquet").write_bytes(whole[: len(whole) // 2])
    source = str(incoming) if listing == "folder" else str(incoming / "*.parquet")
    copying = summary(infer(volume, source, "--settle-seconds", "3600"))
    assert (copying["inputs_not_ready"], copying["inputs_predicted"]) == (1, 0)
    assert (copying["inputs_rejected"], copying["inputs_waiting"]) == (0, 1)
    assert copying["oldest_waiting_seconds"] >= 0
    assert not (volume / "data" / "rejected").exists()
    (incoming / "x.parquet").write_bytes(whole)  # the copy ends
    done = summary(infer(volume, source, "--settle-seconds", "0"))
    assert (done["inputs_predicted"], done["inputs_not_ready"], done["inputs_waiting"]) == (1, 0, 0)
    assert done["oldest_waiting_seconds"] is None
    output = volume / "artifacts" / "predictions" / "incoming" / "x.parquet"
    assert pq.read_table(output).num_rows == 500


def test_a_copy_that_set_its_old_modification_time_back_still_waits(volume, make_trips):
    """`cp -p` and `rsync -t` set the modification time back: the change time tells."""
    whole = make_trips("x.parquet", rows=100, seed=2, folder=volume / "staging").read_bytes()
    path = volume / "data" / "incoming" / "x.parquet"
    path.parent.mkdir()
    path.write_bytes(whole[: len(whole) // 2])
    os.utime(path, (time.time() - 86400, time.time() - 86400))
    waiting = summary(infer(volume, str(path.parent), "--settle-seconds", "600"))
    assert (waiting["inputs_not_ready"], waiting["inputs_rejected"]) == (1, 0)
    assert 86390 < waiting["oldest_waiting_seconds"] < 86500
    assert path.exists()


def test_a_new_whole_file_is_not_held_back_and_a_settled_bad_one_is_set_aside(volume, make_trips):
    incoming = volume / "data" / "incoming"
    make_trips("x.parquet", rows=100, seed=2, folder=incoming)
    (incoming / "bad.parquet").write_text("not parquet")
    fresh = summary(infer(volume, str(incoming), "--settle-seconds", "3600"))
    assert (fresh["inputs_predicted"], fresh["inputs_not_ready"]) == (1, 1)
    settled = infer(volume, str(incoming), "--settle-seconds", "0")
    assert settled.exit_code == EXIT_BAD_INPUT
    assert (volume / "data" / "rejected" / "bad.parquet").exists()


# The same name in two queues ------------------------------------------------------------


def test_the_same_name_in_two_queues_never_makes_runs_alternate(volume, make_trips):
    """incoming/x and backlog/x: each has its own predictions, and run after run (folder or
    glob, either order) nothing is predicted again. (Before: one predictions/x.parquet,
    each run predicting it again over the other's.)"""
    data = volume / "data"
    a = make_trips("x.parquet", rows=300, seed=2, folder=data / "incoming")
    b = make_trips("x.parquet", rows=200, seed=3, folder=data / "backlog")
    first = [summary(infer(volume, str(q))) for q in (a.parent, b.parent)]
    assert [s["inputs_predicted"] for s in first] == [1, 1]
    sources = [str(a.parent), str(b.parent / "*.parquet"), str(a.parent / "*.parquet"),
               str(b.parent), str(a)]  # fmt: skip
    again = [summary(infer(volume, s)) for s in sources]
    assert [(s["inputs_predicted"], s["inputs_skipped"]) for s in again] == [(0, 1)] * 5
    predictions = volume / "artifacts" / "predictions"
    for queue, rows in (("incoming", 300), ("backlog", 200)):
        table = pq.read_table(predictions / queue / "x.parquet")
        assert table.num_rows == rows
        recorded = json.loads(table.schema.metadata[inference.META_INPUT])
        assert recorded["uri"] == str(data / queue / "x.parquet")


def test_two_folders_of_the_same_name_into_one_predictions_folder_are_refused(volume, make_trips):
    """a/incoming/x and b/incoming/x would share predictions/incoming/x.parquet: the
    second is refused (exit 2, naming both), even with --force, and the first's kept."""
    a = make_trips("x.parquet", rows=300, seed=2, folder=volume / "a" / "incoming")
    b = make_trips("x.parquet", rows=200, seed=3, folder=volume / "b" / "incoming")
    assert summary(infer(volume, str(a.parent)))["inputs_predicted"] == 1
    for more in ((), ("--force",)):
        refused = infer(volume, str(b.parent), *more)
        assert refused.exit_code == EXIT_BAD_INPUT
        last = refused.stderr.strip().splitlines()[-1]
        assert f"holds the predictions of {a}" in last and "--predictions" in last
    output = volume / "artifacts" / "predictions" / "incoming" / "x.parquet"
    assert pq.read_table(output).num_rows == 300
    assert summary(infer(volume, str(a.parent)))["inputs_skipped"] == 1


def test_predictions_of_the_former_layout_are_moved_not_made_again(volume, make_trips):
    """predictions/x.parquet from before the queue folder was in the name: the first run
    moves it under predictions/incoming/ and predicts nothing again; one made from
    another queue's x stays where it is."""
    incoming = volume / "data" / "incoming"
    path = make_trips("x.parquet", rows=300, seed=2, folder=incoming)
    assert summary(infer(volume, str(incoming)))["inputs_predicted"] == 1
    predictions = volume / "artifacts" / "predictions"
    (predictions / "incoming" / "x.parquet").rename(predictions / "x.parquet")
    (predictions / "incoming" / predicted.INDEX).unlink()
    content = (predictions / "x.parquet").read_bytes()
    other = make_trips("x.parquet", rows=100, seed=4, folder=volume / "data" / "backlog")
    moved = summary(infer(volume, str(other.parent)))  # backlog/x: not its predictions
    assert moved["inputs_predicted"] == 1 and (predictions / "x.parquet").exists()
    moved = summary(infer(volume, str(incoming)))
    assert (moved["inputs_predicted"], moved["inputs_skipped"]) == (0, 1)
    assert not (predictions / "x.parquet").exists()
    assert (predictions / "incoming" / path.name).read_bytes() == content


# A queue over rejected/ -----------------------------------------------------------------


def test_a_glob_over_rejected_leaves_its_files_in_place(volume):
    """Before, every run renamed them beside themselves, their names growing."""
    rejected = volume / "data" / "rejected"
    rejected.mkdir()
    (rejected / "bad.parquet").write_text("not parquet")
    for _ in range(2):
        result = infer(volume, str(rejected / "*.parquet"))
        assert result.exit_code == EXIT_BAD_INPUT
        assert result.stderr.strip().splitlines()[-1].endswith("left in place")
    assert sorted(p.name for p in rejected.iterdir()) == ["bad.parquet"]


# The index of predicted inputs ----------------------------------------------------------


@pytest.fixture
def predicted_queue(volume, make_trips) -> Path:
    incoming = volume / "data" / "incoming"
    for i in range(4):
        make_trips(f"f{i}.parquet", rows=100, seed=i, folder=incoming)
    assert summary(infer(volume, str(incoming)))["inputs_predicted"] == 4
    return incoming


def test_a_run_with_nothing_new_opens_no_input(volume, predicted_queue, monkeypatch):
    """The index answers from the listing's stat alone (here, opening a file fails)."""

    def no_open(source: reading.Source) -> None:
        raise AssertionError(f"opened {source.uri}")

    monkeypatch.setattr(reading, "open_parquet", no_open)
    again = summary(infer(volume, str(predicted_queue)))
    assert (again["inputs_skipped"], again["inputs_predicted"], again["inputs_waiting"]) == (
        4,
        0,
        0,
    )


def test_what_the_index_cannot_vouch_for_is_checked_the_slow_way(volume, predicted_queue):
    """A rewritten input is predicted again; a deleted output is made again; a lost or
    corrupt index costs a full check, never a second prediction."""
    index = volume / "artifacts" / "predictions" / "incoming" / predicted.INDEX
    index.write_text("{not json")
    lost = summary(infer(volume, str(predicted_queue)))
    assert (lost["inputs_skipped"], lost["inputs_predicted"]) == (4, 0)
    assert set(json.loads(index.read_text())["entries"]) == {
        str(p) for p in predicted_queue.iterdir()
    }
    f0, f1 = predicted_queue / "f0.parquet", predicted_queue / "f1.parquet"
    stat = f0.stat()
    f0.write_bytes(f0.read_bytes())  # rewritten in place, times put back
    os.utime(f0, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (volume / "artifacts" / "predictions" / "incoming" / f1.name).unlink()
    changed = summary(infer(volume, str(predicted_queue)))
    assert (changed["inputs_predicted"], changed["inputs_skipped"]) == (2, 2)
    assert sorted(Path(p).name for p in changed["outputs"]) == ["f0.parquet", "f1.parquet"]


def test_a_new_model_predicts_everything_again(volume, predicted_queue, make_trips):
    train = make_trips("train2.parquet", rows=2000, seed=9)
    result = run("train", "--train-data", str(train), "--eval-data", str(train),
                 "--artifacts", str(volume / "artifacts"), "--promote", "always")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert summary(infer(volume, str(predicted_queue)))["inputs_predicted"] == 4


# A backlog: oldest first, within a budget -----------------------------------------------


def test_a_backlog_drains_oldest_first_within_the_budget(volume, make_trips):
    """A budget of 0 s: one input a run (a run always makes progress), the oldest by
    modification time first whatever the names; the waiting count and the oldest's age
    fall run after run, and nothing is predicted twice."""
    incoming = volume / "data" / "incoming"
    ages_h = {"a.parquet": 1, "b.parquet": 5, "c.parquet": 3, "d.parquet": 4}
    for i, (name, hours) in enumerate(ages_h.items()):
        path = make_trips(name, rows=100, seed=i, folder=incoming)
        os.utime(path, (time.time() - hours * 3600,) * 2)
    runs = [summary(infer(volume, str(incoming), "--budget-seconds", "0")) for _ in range(5)]
    order = [[Path(p).name for p in s["outputs"]] for s in runs]
    assert order == [["b.parquet"], ["d.parquet"], ["c.parquet"], ["a.parquet"], []]
    assert [s["inputs_waiting"] for s in runs] == [3, 2, 1, 0, 0]
    oldest = [s["oldest_waiting_seconds"] for s in runs]
    assert [round(o / 3600) if o else None for o in oldest] == [4, 3, 1, None, None]
    assert [s["inputs_skipped"] for s in runs] == [0, 1, 2, 3, 4]


# The termination message ----------------------------------------------------------------


def test_thousands_of_outputs_fit_the_termination_message(volume, make_trips, tmp_path):
    """Hundreds of inputs, each with its record and output path: the pod's message stays
    valid JSON within the kubelet's limit, with counts of what it left out. (Before, cutting
    the outputs after the records failed with a RuntimeError: exit 1.)"""
    incoming = volume / "data" / "incoming"
    first = make_trips("f000.parquet", rows=100, seed=1, folder=incoming)
    for i in range(1, 300):
        shutil.copyfile(first, incoming / f"f{i:03d}.parquet")
    log = tmp_path / "termination-log"
    result = summary(infer(volume, str(incoming), "--termination-log", str(log)))
    assert result["inputs_predicted"] == 300 and len(result["outputs"]) == 300
    message = log.read_text()
    assert len(message.encode()) <= TERMINATION_LOG_BYTES
    kept = json.loads(message)
    assert kept["inputs_predicted"] == 300 and kept["input_records_omitted"] == 300
    assert kept["outputs_omitted"] + len(kept["outputs"]) == 300
