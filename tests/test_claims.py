"""The one claim primitive of the volume (``volume.try_claim``) and the runs that use it: a
lease renewed while its holder works, an ownership check before publishing, a takeover
that cannot leave two holders, and what infer and the shards' reduce make of them.

Two runs overlap here for real: the first runs on a thread and is frozen at a barrier
(after it wrote its predictions, before it publishes) while the second runs start to end."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from job import artifacts, inference, mapreduce, pipeline, predicted, registry, shards, volume

#: A lease short enough for a test to outlast it several times over.
LEASE = 0.6


def train(root: Path, data: Path) -> str:
    return str(pipeline.train(pipeline.TrainConfig(str(data), str(data), root))["model_version"])


def infer(root: Path, data: Path) -> dict:
    return inference.infer(inference.InferConfig(str(data), root))


def version_of(output: Path) -> str:
    return pq.read_schema(output).metadata[inference.META_VERSION].decode()


@contextlib.contextmanager
def frozen_before_publishing(monkeypatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Freeze infer's first input after its predictions are written, before the rename
    into place: yields (written, go): wait for ``written``, set ``go`` to let it publish."""
    written, go = threading.Event(), threading.Event()
    predict = inference._predict_file

    def slow(*args, **kwargs):
        rows = predict(*args, **kwargs)
        if not written.is_set():
            written.set()
            assert go.wait(60), "the test never let the frozen run go on"
        return rows

    monkeypatch.setattr(inference, "_predict_file", slow)
    try:
        yield written, go
    finally:
        go.set()


def in_thread(work: Callable[[], dict]) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


@pytest.fixture
def store(tmp_path, make_trips):
    """Two model versions (the second current) and an input to predict."""
    root = tmp_path / "artifacts"
    old = train(root, make_trips("jan.parquet", rows=3000, seed=1))
    new = train(root, make_trips("feb.parquet", rows=3000, seed=2))
    data = make_trips("input.parquet", rows=2000, seed=3, folder=tmp_path / "incoming")
    return root, data, old, new


def test_a_slow_run_keeps_its_claim_past_the_lease_and_a_rollback_cannot_mix_models(
    store, monkeypatch
):
    """The slow run (model ``new``) outlasts its lease several times while a rollback
    makes ``old`` current: the second run finds the input busy (the claim was renewed), not
    a "killed" run's; the slow run publishes its whole file, and the next run predicts it
    again with the rolled-back model. Without renewal, the second run broke the live claim
    and the slow run then renamed the other model's file over the rolled-back one's."""
    root, data, old, new = store
    monkeypatch.setattr(inference, "CLAIM_LEASE_S", LEASE)
    claim = volume.claim_path(root / "predictions" / data.parent.name / data.name)
    with frozen_before_publishing(monkeypatch) as (written, go):
        thread, slow = in_thread(lambda: infer(root, data))
        assert written.wait(60)
        since = time.monotonic()
        while time.monotonic() - since < 3 * LEASE:  # outlast the lease, the claim renewed
            time.sleep(LEASE / 4)
        assert time.time() - claim.stat().st_mtime < LEASE
        registry.promote(root, old, reason="rollback")
        second = infer(root, data)
        assert (second["inputs_busy"], second["inputs_predicted"]) == (1, 0)
        go.set()
        thread.join(60)
    assert slow["summary"]["inputs_predicted"] == 1
    assert version_of(root / "predictions" / data.parent.name / data.name) == new
    third = infer(root, data)  # the current model is old now: predicted again
    assert third["inputs_predicted"] == 1
    output = root / "predictions" / data.parent.name / data.name
    assert version_of(output) == old == artifacts.current_version(root)
    assert not claim.exists()


def test_a_run_whose_claim_was_taken_over_publishes_nothing(store, monkeypatch):
    """The slow run's claim lapses (its renewal stalled, as on a clock far off) and
    another run takes the input over and publishes: the slow run checks right before its
    rename, leaves the other's file and reports the input busy."""
    root, data, old, new = store
    claim = volume.claim_path(root / "predictions" / data.parent.name / data.name)
    with frozen_before_publishing(monkeypatch) as (written, go):
        thread, slow = in_thread(lambda: infer(root, data))
        assert written.wait(60)
        stale = time.time() - inference.CLAIM_LEASE_S - 60
        os.utime(claim, (stale, stale))
        registry.promote(root, old, reason="rollback")
        second = infer(root, data)
        assert second["inputs_predicted"] == 1
        theirs = (root / "predictions" / data.parent.name / data.name).read_bytes()
        go.set()
        thread.join(60)
    assert "error" not in slow, slow.get("error")
    assert (slow["summary"]["inputs_predicted"], slow["summary"]["inputs_busy"]) == (0, 1)
    assert (root / "predictions" / data.parent.name / data.name).read_bytes() == theirs
    assert version_of(root / "predictions" / data.parent.name / data.name) == old
    queue = root / "predictions" / data.parent.name
    assert sorted(p.name for p in queue.iterdir() if p.name != predicted.INDEX) == [data.name]


def x_moves_a_fresh_claim_aside(
    target: Path, monkeypatch: pytest.MonkeyPatch, *, z_takes_the_name: bool
) -> dict[str, volume.Claim | None]:
    """Run X finds a stale claim at ``target`` and moves it aside, but in between run Y
    broke it and took a new one (so X moved Y's claim); if ``z_takes_the_name``, run Z
    takes the free name right after X's move. The claims of X, Y and Z."""
    volume.try_claim(target, LEASE, purpose="a run that was killed")  # the stale one
    stale = time.time() - 60
    os.utime(volume.claim_path(target), (stale, stale))
    rename = os.rename
    runs: dict[str, volume.Claim | None] = {}

    def interleaved(src, dst):
        if runs or Path(src) != volume.claim_path(target):
            return rename(src, dst)
        runs["y"] = None  # not again for Y's own breaking
        runs["y"] = volume.try_claim(target, LEASE)  # Y breaks the stale claim first
        rename(src, dst)  # X moves what is there now: Y's claim
        if z_takes_the_name:
            runs["z"] = volume.try_claim(target, LEASE)  # Z finds the name free
        return None

    monkeypatch.setattr(os, "rename", interleaved)
    runs["x"] = volume.try_claim(target, LEASE)
    monkeypatch.undo()
    return runs


def test_breaking_a_stale_claim_cannot_leave_two_holders(tmp_path, monkeypatch):
    """X hands Y's claim back only if the name is free: Z stays the one holder, Y finds
    out before publishing. (A rename back would have overwritten Z's claim: Y and Z both
    holding it.)"""
    target = tmp_path / "a.parquet"
    runs = x_moves_a_fresh_claim_aside(target, monkeypatch, z_takes_the_name=True)
    x, y, z = runs["x"], runs["y"], runs["z"]
    assert x is None and y is not None and z is not None
    assert volume.claim_path(target).read_bytes() == z.content
    assert (y.held(), z.held()) == (False, True)
    with pytest.raises(volume.ClaimLostError, match="claim is not its own any more"):
        y.check("predictions")
    z.check("predictions")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".claim-a.parquet"]


def test_a_fresh_claim_moved_aside_by_mistake_is_handed_back(tmp_path, monkeypatch, caplog):
    """Nobody takes the name after X's move: X hands Y's claim back, Y is still the holder
    and publishes, and a fourth run finds the input busy. (Without the hand-back Y's claim
    would be gone: Y could not publish the input it is predicting, and any run could take
    it meanwhile.)"""
    target = tmp_path / "a.parquet"
    caplog.set_level("INFO", logger="job.volume")
    runs = x_moves_a_fresh_claim_aside(target, monkeypatch, z_takes_the_name=False)
    x, y = runs["x"], runs["y"]
    assert y is not None
    since = json.loads(y.content)["since"]  # X says who holds it: Y, from what it moved
    assert caplog.messages[-1].endswith(f": held by {volume.holder()} since {since}")
    assert x is None and y is not None
    assert volume.claim_path(target).read_bytes() == y.content
    assert y.held()
    y.check("predictions")
    assert volume.try_claim(target, LEASE) is None  # a fourth run: busy
    assert sorted(p.name for p in tmp_path.iterdir()) == [".claim-a.parquet"]


def test_a_stale_claim_removed_before_our_break_is_simply_taken(tmp_path, monkeypatch):
    """Between our look at a stale claim and our move of it, another run removed it (its
    sweep, or its own break): nothing to break, the name is free, we take it."""
    target = tmp_path / "a.parquet"
    volume.try_claim(target, LEASE)
    path = volume.claim_path(target)
    stale = time.time() - 60
    os.utime(path, (stale, stale))
    rename = os.rename

    def gone_first(src, dst):
        if Path(src) == path:
            path.unlink()  # the other run, just before us
        return rename(src, dst)

    monkeypatch.setattr(os, "rename", gone_first)
    mine = volume.try_claim(target, LEASE)
    monkeypatch.undo()
    assert mine is not None and mine.held()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".claim-a.parquet"]


def test_renewing_a_claim_removed_meanwhile_says_it_is_lost(tmp_path, monkeypatch):
    """The claim vanished between the holder's check and its renewal (broken by a run
    that found it lapsed): renew() says so; it neither raises in the heartbeat thread nor
    recreates the name."""
    target = tmp_path / "a.parquet"
    mine = volume.try_claim(target, LEASE)
    assert mine is not None
    volume.claim_path(target).unlink()
    monkeypatch.setattr(volume.Claim, "held", lambda self: True)  # as it was a moment ago
    assert mine.renew() is False
    assert not volume.claim_path(target).exists()


def test_a_claim_is_written_whole_before_its_name_appears(tmp_path, monkeypatch):
    """Another run reading the claim between its creation and its content sees a holder,
    never an empty file: the name appears (link) only once the content is synced."""
    target = tmp_path / "a.parquet"
    seen: list[bytes] = []
    link = os.link

    def look(src, dst):
        link(src, dst)
        seen.append(Path(dst).read_bytes())

    monkeypatch.setattr(os, "link", look)
    claim = volume.try_claim(target, LEASE, purpose="a test")
    assert claim is not None and seen == [claim.content]
    body = json.loads(claim.content)
    assert body["holder"] == volume.holder() and body["lease_s"] == LEASE
    assert body["purpose"] == "a test" and len(body["token"]) == 16


def test_renewal_restarts_the_lease_only_for_its_holder(tmp_path):
    target = tmp_path / "a.parquet"
    mine = volume.try_claim(target, LEASE)
    assert mine is not None
    path = volume.claim_path(target)
    old = time.time() - 3600
    os.utime(path, (old, old))
    assert mine.renew() and time.time() - path.stat().st_mtime < 60
    os.utime(path, (old, old))
    theirs = volume.try_claim(target, LEASE)  # lapsed: taken over
    assert theirs is not None
    os.utime(path, (old, old))
    assert not mine.renew()  # not ours any more: left to lapse
    assert path.stat().st_mtime == pytest.approx(old, abs=1)
    volume.release(mine)
    assert path.read_bytes() == theirs.content


def test_a_run_that_another_published_for_after_its_first_look_skips_it(store, monkeypatch):
    """Between this run's first look and its claim, another run published the input with
    the current model: re-checked under the claim, it is skipped, not predicted twice."""
    root, data, old, new = store
    claim = volume.try_claim

    def the_other_run_first(target, *args, **kwargs):
        monkeypatch.setattr(volume, "try_claim", claim)
        assert infer(root, data)["inputs_predicted"] == 1
        return claim(target, *args, **kwargs)

    monkeypatch.setattr(volume, "try_claim", the_other_run_first)
    summary = infer(root, data)
    assert (summary["inputs_skipped"], summary["inputs_predicted"]) == (1, 0)


# The shards' reduce -------------------------------------------------------------------


def test_exactly_one_shard_wins_the_reduce_claim(tmp_path):
    assert shards.claim(tmp_path, 2)[0] == 2
    assert shards.claim(tmp_path, 0) == (2, None)
    assert shards.claim(tmp_path, 1) == (2, None)
    body = volume.read_claim(volume.claim_path(tmp_path / shards.REDUCER))
    assert body is not None and body["shard"] == 2 and body["purpose"] == "reduce"


def sharded(root: Path, train_uri: str, evaluation: Path, index: int, run_id: str = "run-1"):
    config = pipeline.TrainConfig(
        train_uri, str(evaluation), root, shards=2, shard_index=index, run_id=run_id
    )
    return mapreduce.train_shard(config)


def test_a_late_duplicate_shard_leaves_no_partial(tmp_path, make_trips, monkeypatch):
    """A duplicate of shard 0 looked before the reduce published, and writes its partial
    after: it finds the run published and removes what it wrote."""
    train_file = make_trips("train.parquet", rows=3000, seed=1, row_group_size=1000)
    root = tmp_path / "artifacts"
    sharded(root, str(train_file), train_file, 0)
    assert sharded(root, str(train_file), train_file, 1)["reducer"] == 1
    folder = shards.run_dir(root, "run-1")
    assert sorted(p.name for p in folder.iterdir()) == [shards.PUBLISHED]
    published = shards.published
    looks: list[int] = []

    def before_the_reduce_published(where):
        looks.append(1)
        return None if len(looks) == 1 else published(where)

    monkeypatch.setattr(shards, "published", before_the_reduce_published)
    late = sharded(root, str(train_file), train_file, 0)
    assert late["published_already"] == artifacts.current_version(root)
    assert sorted(p.name for p in folder.iterdir()) == [shards.PUBLISHED]


def test_a_partial_of_other_inputs_under_the_same_run_id_is_not_reused(tmp_path, make_trips):
    """Same options, but the file was rewritten between the shards: the plan digest
    differs, so shard 0's partial is read again rather than merged."""
    data = make_trips("train.parquet", rows=3000, seed=1, row_group_size=1000)
    root = tmp_path / "artifacts"
    sharded(root, str(data), data, 0)  # its partial stays: the run is not reduced
    time.sleep(0.01)  # a new modification time even on a coarse clock
    rewritten = make_trips("train.parquet", rows=3000, seed=2, row_group_size=1000)
    assert rewritten == data
    reduced = sharded(root, str(data), data, 1)  # finds both partials: reduces
    assert reduced["reducer"] == 1
    alone = pipeline.train(pipeline.TrainConfig(str(data), str(data), tmp_path / "alone"))
    assert reduced["rows_read"] == alone["rows_read"] == 3000
    assert reduced["rmse_eval"] == pytest.approx(alone["rmse_eval"], rel=1e-9)


def test_the_reduce_removes_run_folders_left_long_ago(tmp_path, make_trips):
    train_file = make_trips("train.parquet", rows=3000, seed=1, row_group_size=1000)
    root = tmp_path / "artifacts"
    old, young = shards.run_dir(root, "old-run"), shards.run_dir(root, "young-run")
    for folder, age in ((old, volume.RUN_AFTER_S + 3600), (young, 3600)):
        folder.mkdir(parents=True)
        then = time.time() - age
        os.utime(folder, (then, then))
    sharded(root, str(train_file), train_file, 0)
    sharded(root, str(train_file), train_file, 1)
    assert sorted(p.name for p in (root / shards.PARTIALS).iterdir()) == ["run-1", "young-run"]


def test_a_damaged_version_is_not_taken_for_the_runs_published_one(tmp_path, make_trips):
    """The reducer died after writing its version, which was then damaged on the volume:
    read through the checked load, it does not count, and the retry publishes afresh."""
    train_file = make_trips("train.parquet", rows=3000, seed=1, row_group_size=1000)
    root = tmp_path / "artifacts"
    sharded(root, str(train_file), train_file, 0)
    version = sharded(root, str(train_file), train_file, 1)["model_version"]
    assert mapreduce._published_version(root, "run-1") == version
    model = root / artifacts.MODELS / version / artifacts.MODEL_FILE
    model.write_bytes(model.read_bytes().replace(b'"run_id"', b'"run_id" ', 1))
    assert mapreduce._published_version(root, "run-1") is None


def test_the_sweep_follows_its_one_table(tmp_path, caplog):
    """Store temporaries go at any age for the holder of the training lock only; a claim
    goes after its own lease (the one written in it); other temporaries after an hour."""
    root = tmp_path / "artifacts"
    for folder in ("models", "predictions", "partials/a", "partials/b"):
        (root / folder).mkdir(parents=True)
    version = volume.temporary_dir(root / "models" / "v1")
    short = volume.try_claim(shards.run_dir(root, "a") / shards.REDUCER, LEASE)
    long = volume.try_claim(shards.run_dir(root, "b") / shards.REDUCER, 900)
    assert short is not None and long is not None
    for claim in (short, long):
        then = time.time() - 60
        os.utime(claim.path, (then, then))
    old = volume.temporary_file(root / "predictions" / "x.parquet")
    young = volume.temporary_file(root / "predictions" / "y.parquet")
    then = time.time() - volume.TEMPORARY_AFTER_S - 60
    os.utime(old, (then, then))
    elsewhere = tmp_path / "elsewhere"  # infer --predictions outside the store
    elsewhere.mkdir()
    away = volume.temporary_file(elsewhere / "z.parquet")
    os.utime(away, (then, then))
    volume.sweep(root, predictions=elsewhere)
    assert not away.exists() and old.exists()  # the store's predictions are not infer's now
    caplog.set_level("WARNING", logger="job.volume")
    volume.sweep(root)
    (removing,) = [m for m in caplog.messages if str(old) in m]
    assert removing.startswith(f"removing {old} (a temporary of predictions, partials or the")
    assert removing.endswith("), left by an interrupted run")
    assert version.exists() and not short.path.exists() and long.held()
    assert not old.exists() and young.exists()
    volume.sweep(root, locked=True)
    assert not version.exists() and long.held() and young.exists()


def test_the_guarantees_quote_the_leases_and_deadlines_in_force():
    """docs/kubernetes.md justifies the leases with the Jobs' deadlines: the numbers it
    quotes are the code's and the manifests'."""
    repo = Path(__file__).parent.parent
    doc = " ".join((repo / "docs" / "kubernetes.md").read_text().split())
    assert (
        f"The lease is {inference.CLAIM_LEASE_S} s for an input, "
        f"{shards.REDUCE_LEASE_S} s for a reduce" in doc
    )
    deadlines = {
        manifest: re.findall(r"activeDeadlineSeconds: (\d+)", (repo / manifest).read_text())
        for manifest in ("manifests/jobs/infer-backlog.yaml", "manifests/cronjob-train.yaml")
    }
    backlog, training = deadlines.values()
    assert f"the backlog Job (`activeDeadlineSeconds` {backlog[0]})" in doc
    assert f"and a training ({training[0]}) keep their claims" in doc


def test_the_logs_say_who_holds_a_claim_for_what_and_why_one_is_broken(tmp_path, caplog):
    target = tmp_path / "a.parquet"
    path = volume.claim_path(target)
    caplog.set_level("INFO", logger="job.volume")
    first = volume.try_claim(target, 900, purpose="infer")
    assert first is not None and volume.try_claim(target, 900) is None
    since = json.loads(first.content)["since"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", since)
    assert caplog.messages[-1] == f"{path}: held by {volume.holder()} for infer since {since}"
    stale = time.time() - 3600
    os.utime(path, (stale, stale))
    assert volume.try_claim(target, 900) is not None
    assert caplog.messages[-1] == (
        f"{path}: breaking a claim not renewed for 3600 s (its lease: 900 s), "
        f"{volume.holder()} for infer since {since}: its run was killed"
    )


def test_a_claim_that_is_not_an_object_reads_as_none(tmp_path):
    (tmp_path / "claim").write_text("[1, 2]")
    assert volume.read_claim(tmp_path / "claim") is None
    (tmp_path / "claim").write_text("{")
    assert volume.read_claim(tmp_path / "claim") is None


def test_a_reducer_whose_same_index_duplicate_published_first_ends_cleanly(
    tmp_path, make_trips, monkeypatch
):
    """Index 1 runs twice: the first pod claimed the reduce and waits for the training
    lock; its duplicate (same index, so no claim of its own) reduces and publishes first,
    removing the claim with the partials. The first then finds the run published: nothing
    to publish, so nothing to check, and no failure."""
    train_file = make_trips("train.parquet", rows=3000, seed=1, row_group_size=1000)
    root = tmp_path / "artifacts"
    sharded(root, str(train_file), train_file, 0)
    folder = shards.run_dir(root, "run-1")
    first = shards.claim(folder, 1)
    version = sharded(root, str(train_file), train_file, 1)["model_version"]
    monkeypatch.setattr(shards, "claim", lambda where, shard: first)
    published, looks = shards.published, []

    def as_before_the_duplicate_published(where):  # the first pod's looks before its claim
        looks.append(1)
        return None if len(looks) <= 2 else published(where)

    monkeypatch.setattr(shards, "published", as_before_the_duplicate_published)
    monkeypatch.setattr(shards, "missing", lambda where, count: [])  # as it saw them then
    again = sharded(root, str(train_file), train_file, 1)
    assert again["published_already"] == version and again["reducer"] == 1
