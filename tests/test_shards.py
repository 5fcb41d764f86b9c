"""Sharded training and inference (`--shards N --shard-index I`): the same model as one
process, whatever the split, the retries and the order; one publish per run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from trips import trips_table

from job import artifacts, mapreduce, registry, shards, volume
from job.cli import cli
from job.errors import EXIT_BAD_INPUT
from job.pipeline import TrainConfig

TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def summary(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def train_args(train: Path | str, evaluation: Path | str, out: Path) -> list[str]:
    return [
        "train", "--train-data", str(train), "--eval-data", str(evaluation),
        "--artifacts", str(out), "--output-format", "json", "-q",
    ]  # fmt: skip


def shard(train, evaluation, out: Path, index: int, count: int, run_id: str = "run-1"):
    args = train_args(train, evaluation, out)
    return run(*args, "--shards", str(count), "--shard-index", str(index), "--run-id", run_id)


@pytest.fixture
def year(make_trips, tmp_path):
    """Three training months (row groups of different sizes) and an evaluation month."""
    folder = tmp_path / "data"
    for month, (rows, group) in enumerate([(3000, 700), (2500, 1000), (2000, 2000)], 1):
        make_trips(f"train-{month:02d}.parquet", rows=rows, seed=month, row_group_size=group,
                   folder=folder, zones=40)  # fmt: skip
    evaluation = make_trips("eval.parquet", rows=2200, seed=9, row_group_size=500, zones=40)
    return str(folder / "train-*.parquet"), evaluation


def one_process(train, evaluation, out: Path) -> dict:
    return summary(run(*train_args(train, evaluation, out)))


def assert_same_model(sharded: dict, single: dict, out_sharded: Path, out_single: Path) -> None:
    """Same vocabulary, predictions to 1e-9 minutes, RMSEs to 1e-9 relative."""
    a = artifacts.load(out_sharded, sharded["model_version"]).model
    b = artifacts.load(out_single, single["model_version"]).model
    np.testing.assert_array_equal(a.pu_ids, b.pu_ids)
    np.testing.assert_array_equal(a.do_ids, b.do_ids)
    pu, do = np.meshgrid(np.arange(-1, 45), np.arange(-1, 45))
    np.testing.assert_allclose(a.predict(pu.ravel(), do.ravel()),
                               b.predict(pu.ravel(), do.ravel()), rtol=0, atol=1e-9)  # fmt: skip
    for key in ("rmse_train", "rmse_eval"):
        assert sharded[key] == pytest.approx(single[key], rel=1e-9, abs=0)
    for key in ("rows_read", "rows_kept", "eval_rows_read", "eval_rows_kept", "features"):
        assert sharded[key] == single[key]


@pytest.mark.parametrize("files", [1, 2, 3])
@pytest.mark.parametrize("count", range(1, 8))
def test_assignment_covers_every_file_and_row_group_once(make_trips, tmp_path, files, count):
    folder = tmp_path / "in"
    for f in range(files):  # row groups of uneven sizes: 3, 5 and 2 of them
        make_trips(f"t{f}.parquet", rows=[2100, 2500, 900][f], seed=f,
                   row_group_size=[700, 500, 450][f], folder=folder)  # fmt: skip
    evaluation = make_trips("e.parquet", rows=1000, seed=7, row_group_size=400)
    config = TrainConfig(str(folder), str(evaluation), tmp_path / "a", shards=count)
    plan = mapreduce.plan(config)
    for role, sources in plan.sources.items():
        groups = [pq.ParquetFile(s.path).metadata.num_row_groups for s in sources]
        expected = sorted((f, g) for f, n in enumerate(groups) for g in range(n))
        seen = sorted(
            (f, g)
            for part in plan.parts
            for f, row_groups in part[role]
            for g in (range(groups[f]) if row_groups is None else row_groups)
        )
        assert seen == expected, role
        whole = [rg is None for part in plan.parts for _, rg in part[role]]
        assert all(whole) == (len(sources) >= count)
    # the same plan from every shard's point of view, and in every run
    assert mapreduce.plan(config) == plan


@pytest.mark.parametrize("count", [2, 3, 5])
def test_sharded_model_equals_the_one_process_model(year, tmp_path, count):
    train, evaluation = year
    single = one_process(train, evaluation, tmp_path / "one")
    out = tmp_path / "sharded"
    results = [summary(shard(train, evaluation, out, i, count)) for i in range(count)]
    # only the last shard finds every partial and reduces; the others just write theirs
    assert [r.get("reducer") for r in results] == [None] * (count - 1) + [count - 1]
    reduced = results[-1]
    assert_same_model(reduced, single, out, tmp_path / "one")
    assert artifacts.versions(out) == [reduced["model_version"]]
    assert artifacts.current_version(out) == reduced["model_version"]
    assert sum(r["rows_read"] for r in results[:-1]) <= single["rows_read"]
    # the partials are gone; what the run published stays, to turn late shards away
    folder = out / "partials" / "run-1"
    assert sorted(p.name for p in folder.iterdir()) == ["PUBLISHED"]
    metadata = artifacts.load(out).metadata
    assert (metadata["run_id"], metadata["shards"]) == ("run-1", count)
    assert metadata["inputs"] == artifacts.load(tmp_path / "one").metadata["inputs"]


def test_shards_in_any_order_and_retried_or_duplicated_give_one_model_one_publish(year, tmp_path):
    train, evaluation = year
    out = tmp_path / "a"
    first = summary(shard(train, evaluation, out, 2, 3))
    retried = summary(shard(train, evaluation, out, 2, 3))  # its partial is reused
    assert retried["rows_read"] == first["rows_read"] and retried["reducer"] is None
    summary(shard(train, evaluation, out, 0, 3))
    reduced = summary(shard(train, evaluation, out, 1, 3))
    assert reduced["reducer"] == 1
    for index in range(3):  # late duplicates of every shard, after the publish
        late = summary(shard(train, evaluation, out, index, 3))
        assert late["published_already"] == reduced["model_version"]
    assert artifacts.versions(out) == [reduced["model_version"]]
    single = one_process(train, evaluation, tmp_path / "one")
    assert_same_model(reduced, single, out, tmp_path / "one")


def test_shards_racing_each_other_and_their_duplicates_publish_once(year, tmp_path):
    """Every shard twice (an index retried while its first pod still runs), all started
    at once as processes: exactly one reduces, one version, the one-process model."""
    train, evaluation = year
    out = tmp_path / "a"
    processes = [
        subprocess.Popen(
            [TAXI_JOB, *train_args(train, evaluation, out), "--shards", "3", "--shard-index",
             str(index), "--run-id", "race", "--lock-timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for index in (0, 1, 2, 0, 1, 2)
    ]  # fmt: skip
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert sum("model_version" in r for r in results) == 1, results  # one reduced
    published = {r["model_version"] for r in results if "model_version" in r}
    published |= {r["published_already"] for r in results if "published_already" in r}
    (version,) = published
    assert artifacts.versions(out) == [version]
    reduced = next(r for r in results if r.get("model_version") == version)
    single = one_process(train, evaluation, tmp_path / "one")
    assert_same_model(reduced, single, out, tmp_path / "one")


def test_a_reducer_that_dies_after_publishing_does_not_publish_twice(year, tmp_path, monkeypatch):
    train, evaluation = year
    out = tmp_path / "a"
    summary(shard(train, evaluation, out, 0, 2))

    def die(folder, record):
        raise SystemExit(137)  # as if killed between publishing and recording it

    with monkeypatch.context() as patched:
        patched.setattr(shards, "mark_published", die)
        assert shard(train, evaluation, out, 1, 2).exit_code == 137
    (version,) = artifacts.versions(out)
    again = summary(shard(train, evaluation, out, 1, 2))  # the Job retries index 1
    assert again["published_already"] == version
    assert artifacts.versions(out) == [version]
    assert sorted(p.name for p in (out / "partials" / "run-1").iterdir()) == ["PUBLISHED"]


@pytest.mark.parametrize("meanwhile", [None, "promote"])
def test_a_reducer_killed_between_the_version_and_current_is_finished_by_its_retry(
    year, tmp_path, monkeypatch, meanwhile
):
    """Killed after writing a version that passed the gate, before CURRENT: the retry
    finds the version by its run id and makes it current, unless another version was
    made current meanwhile (then that one stays)."""
    train, evaluation = year
    out = tmp_path / "a"
    previous = one_process(train, evaluation, out)["model_version"]
    summary(shard(train, evaluation, out, 0, 2))

    def die(*args, **kwargs):
        raise SystemExit(137)

    with monkeypatch.context() as patched:
        patched.setattr(registry, "make_current", die)
        assert shard(train, evaluation, out, 1, 2).exit_code == 137
    (version,) = set(artifacts.versions(out)) - {previous}
    assert artifacts.current_version(out) == previous
    expected = version
    if meanwhile:
        other = one_process(train, evaluation, tmp_path / "other")["model_version"]
        (out / "models" / other).mkdir()
        for name in ("model.json", "SHA256SUMS"):
            (out / "models" / other / name).write_bytes(
                (tmp_path / "other" / "models" / other / name).read_bytes()
            )
        registry.promote(out, other, reason="meanwhile")
        expected = other
    again = summary(shard(train, evaluation, out, 1, 2))  # the Job retries index 1
    assert again["published_already"] == version
    assert artifacts.current_version(out) == expected
    assert registry.read_history(out)[-1]["version"] == expected


def test_a_killed_reducer_leaves_the_previous_model_and_its_retry_completes(year, tmp_path):
    """A real SIGKILL of the reducing process while it waits for the training lock (held
    by this test): the previous model stays current; the index's next attempt publishes."""
    train, evaluation = year
    out = tmp_path / "a"
    previous = one_process(train, evaluation, out)["model_version"]
    summary(shard(train, evaluation, out, 0, 2))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from job import artifacts\n"
         "with artifacts.training_lock(Path(sys.argv[1])):\n"
         "    print('held', flush=True); sys.stdin.read()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        reducer = subprocess.Popen(
            [TAXI_JOB, *train_args(train, evaluation, out), "--shards", "2", "--shard-index",
             "1", "--run-id", "run-1", "--lock-timeout", "120"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        claim = volume.claim_path(out / "partials" / "run-1" / shards.REDUCER)
        deadline = time.monotonic() + 60
        while not claim.exists() and reducer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the claim, not timing: it is made before the lock
        assert json.loads(claim.read_text())["shard"] == 1
        reducer.send_signal(signal.SIGKILL)
        assert reducer.wait() == -signal.SIGKILL
    finally:
        holder.communicate("")
    assert artifacts.current_version(out) == previous
    assert artifacts.versions(out) == [previous]
    retried = summary(shard(train, evaluation, out, 1, 2))
    assert retried["reducer"] == 1 and retried["model_version"] != previous
    assert artifacts.current_version(out) == retried["model_version"]
    assert len(artifacts.versions(out)) == 2


def test_partials_of_two_run_ids_do_not_mix(year, tmp_path, make_trips):
    train, evaluation = year
    other = make_trips("other.parquet", rows=4000, seed=42, row_group_size=1000, zones=12)
    out = tmp_path / "a"
    summary(shard(train, evaluation, out, 0, 2, run_id="run-a"))
    summary(shard(other, evaluation, out, 0, 2, run_id="run-b"))
    b = summary(shard(other, evaluation, out, 1, 2, run_id="run-b"))
    a = summary(shard(train, evaluation, out, 1, 2, run_id="run-a"))
    assert_same_model(a, one_process(train, evaluation, tmp_path / "1a"), out, tmp_path / "1a")
    assert_same_model(b, one_process(other, evaluation, tmp_path / "1b"), out, tmp_path / "1b")


def test_a_partial_damaged_on_the_volume_is_read_again(year, tmp_path):
    train, evaluation = year
    out = tmp_path / "a"
    summary(shard(train, evaluation, out, 0, 2))
    (partial,) = (out / "partials" / "run-1").glob("shard-*.npz")
    data = bytearray(partial.read_bytes())
    data[len(data) // 2] ^= 0xFF
    partial.write_bytes(bytes(data))
    with pytest.raises(shards.PartialError, match="checksum mismatch|not a readable"):
        shards.read_partial(partial)
    reduced = summary(shard(train, evaluation, out, 1, 2))
    assert_same_model(reduced, one_process(train, evaluation, tmp_path / "1"), out, tmp_path / "1")


def test_a_partial_holding_a_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, header=np.array([{"format": shards.FORMAT}], dtype=object))
    with pytest.raises(shards.PartialError, match="allow_pickle"):
        shards.read_partial(path)


def test_bad_input_in_one_shard_fails_the_training_and_publishes_nothing(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = trips_table([1, 2, 3, 4] * 50, [2, 3, 4, 1] * 50, [5.0, 9.0, 14.0, 20.0] * 50)
    pq.write_table(good, folder / "a.parquet")
    # Valid footer and schema (float zones are allowed): only reading the rows shows it.
    zones = pa.array(np.where(np.arange(200) == 150, 2.5, 1.0))
    bad = good.set_column(7, "PULocationID", zones)
    pq.write_table(bad, folder / "b.parquet")
    out = tmp_path / "a"
    results = [shard(folder, folder / "a.parquet", out, i, 2) for i in range(2)]
    codes = sorted(r.exit_code for r in results)
    assert codes == [0, EXIT_BAD_INPUT]
    failed = next(r for r in results if r.exit_code)
    last = failed.stderr.strip().splitlines()[-1]
    assert last == f"taxi-job: error: {folder / 'b.parquet'}: column PULocationID holds " \
        "values that are not whole numbers"  # fmt: skip
    assert "Traceback" not in failed.stderr
    assert not (out / "CURRENT").exists() and artifacts.versions(out) == []


def test_a_file_bad_in_its_footer_fails_every_shard_alike(tmp_path, make_trips):
    good = make_trips("good.parquet", rows=300, seed=1)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "notes.parquet").write_text("not parquet")
    out = tmp_path / "a"
    for index in range(3):
        result = shard(folder, good, out, index, 3)
        assert result.exit_code == EXIT_BAD_INPUT
        assert "notes.parquet: not a parquet file" in result.stderr.strip().splitlines()[-1]
    assert not (out / "partials" / "run-1").exists() or not list(
        (out / "partials" / "run-1").glob("shard-*")
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shards", "2", "--shard-index", "0"], "--run-id is required with --shards above 1"),
        (["--shards", "3", "--shard-index", "3", "--run-id", "r"], "--shard-index 3: must be"),
        (["--shards", "2", "--shard-index", "0", "--run-id", "../x"], "--run-id '../x': use"),
        # A Job that is not Indexed gives no index: shard 0 alone would publish nothing.
        (["--shards", "3", "--run-id", "r"], "--shards 3 needs --shard-index"),
    ],
)
def test_shard_options_are_checked(tmp_path, make_trips, extra, message):
    data = make_trips("t.parquet", rows=100)
    result = run(*train_args(data, data, tmp_path / "a"), *extra)
    assert result.exit_code == EXIT_BAD_INPUT
    assert message in result.stderr.strip().splitlines()[-1]


def test_shard_options_come_from_the_environment(year, tmp_path):
    train, evaluation = year
    out = tmp_path / "a"
    for index in range(2):
        env = {"TAXI_JOB_SHARDS": "2", "TAXI_JOB_SHARD_INDEX": str(index),
               "TAXI_JOB_RUN_ID": "from-env"}  # fmt: skip
        result = summary(run(*train_args(train, evaluation, out), env=env))
        assert (result["shard"], result["run_id"]) == (index, "from-env")
    assert result["reducer"] == 1
    assert (out / "partials" / "from-env" / "PUBLISHED").exists()


def test_sharded_inference_predicts_each_input_exactly_once(year, tmp_path, make_trips):
    train, evaluation = year
    out = tmp_path / "a"
    one_process(train, evaluation, out)
    incoming = tmp_path / "incoming"
    names = [f"yellow_tripdata_2022-{m:02d}.parquet" for m in range(1, 8)]
    for m, name in enumerate(names):
        make_trips(name, rows=200, seed=m, folder=incoming)
    predicted: list[str] = []
    for index in range(3):
        report = summary(run("infer", "--input", str(incoming), "--artifacts", str(out),
                             "--shards", "3", "--shard-index", str(index),
                             "--output-format", "json"))  # fmt: skip
        mine = [Path(p).name for p in report["outputs"]]
        assert all(shards.owner(name, 3) == index for name in mine)
        predicted += mine
    assert sorted(predicted) == names
    assert sorted(p.name for p in (out / "predictions" / incoming.name).glob("*.parquet")) == names


def test_owner_is_stable_and_spreads_names():
    names = [
        f"yellow_tripdata_{y}-{m:02d}.parquet" for y in range(2015, 2025) for m in range(1, 13)
    ]
    owners = [shards.owner(n, 4) for n in names]
    assert owners == [shards.owner(n, 4) for n in names]
    assert sorted(set(owners)) == [0, 1, 2, 3]
    assert min(owners.count(k) for k in range(4)) > len(names) / 8
    # pinned: a change of the hash would move inputs between shards mid-backlog
    assert [shards.owner(n, 3) for n in names[:6]] == PINNED_OWNERS


PINNED_OWNERS = [2, 0, 2, 2, 0, 1]


def test_sharded_inference_needs_its_index(tmp_path, make_trips):
    """TAXI_JOB_SHARDS set for a Job that is not Indexed (the ConfigMap, say) must not make
    the every-minute infer predict a third of the queue in silence."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    make_trips("a.parquet", rows=10, folder=incoming)
    result = run("infer", "--input", str(incoming), "--artifacts", str(tmp_path / "a"),
                 env={"TAXI_JOB_SHARDS": "3"})  # fmt: skip
    assert result.exit_code == EXIT_BAD_INPUT
    assert "--shards 3 needs --shard-index" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "a" / "predictions").exists()
