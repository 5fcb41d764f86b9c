"""Writing the shared volume: temporaries of their own, whole files, claims with a lease."""

from __future__ import annotations

import json
import os
import time

import pytest

from job import volume
from job.errors import BadInputError, TransientError

LEASE = 900


def test_temporaries_of_one_target_never_share_a_name(tmp_path):
    target = tmp_path / "p.parquet"
    names = {volume.temporary_file(target).name for _ in range(200)}
    assert len(names) == 200
    assert all(n.startswith(".tmp-p.parquet.") and not n.endswith(f".{os.getpid()}") for n in names)


def test_two_writers_of_one_target_each_publish_their_own_whole_file(tmp_path):
    target = tmp_path / "p.parquet"
    with volume.replacing(target) as first:
        first.write_bytes(b"first, and longer")
        with volume.replacing(target) as second:
            assert second != first
            second.write_bytes(b"second")
        assert target.read_bytes() == b"second"
    assert target.read_bytes() == b"first, and longer"
    assert os.listdir(tmp_path) == ["p.parquet"]
    assert oct(target.stat().st_mode & 0o777) == oct(volume.FILE_MODE)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "p.parquet"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), volume.replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["p.parquet"]


def test_write_atomic_replaces_whole_files(tmp_path):
    target = tmp_path / "f"
    volume.write_atomic(target, b"one")
    volume.write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f"]


def test_a_failure_in_a_temporary_names_its_folder(tmp_path):
    with pytest.raises(BadInputError, match=rf"^{tmp_path}: permission denied: cannot write x"):
        with volume.writing("x"):
            raise PermissionError(13, "Permission denied", str(tmp_path / ".tmp-p.parquet.k2j4"))
    with pytest.raises(TransientError, match=r"^/v/p: cannot write x: No space left on device"):
        with volume.writing("x"):
            raise OSError(28, "No space left on device", "/v/p")


def age(path, seconds):
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_a_claim_is_exclusive_until_released(tmp_path):
    target = tmp_path / "p.parquet"
    claim = volume.try_claim(target, LEASE, model_version="v1")
    assert claim is not None
    body = json.loads(volume.claim_path(target).read_text())
    assert body["model_version"] == "v1" and body["lease_s"] == LEASE
    assert {"holder", "since", "token"} <= body.keys()
    assert volume.try_claim(target, LEASE) is None
    volume.release(claim)
    assert os.listdir(tmp_path) == []
    assert volume.try_claim(target, LEASE) is not None


def test_a_claim_older_than_its_lease_is_broken_and_taken(tmp_path, caplog):
    target = tmp_path / "p.parquet"
    assert volume.try_claim(target, LEASE) is not None  # its run was killed: never released
    age(volume.claim_path(target), LEASE + 60)
    claim = volume.try_claim(target, LEASE)
    assert claim is not None
    assert "breaking a claim" in caplog.text
    volume.release(claim)
    assert os.listdir(tmp_path) == []  # the broken claim went too


def test_release_leaves_a_claim_another_run_took_after_the_lease(tmp_path):
    target = tmp_path / "p.parquet"
    mine = volume.try_claim(target, LEASE)
    assert mine is not None
    age(volume.claim_path(target), LEASE + 60)
    theirs = volume.try_claim(target, LEASE)  # our run was too slow: another took over
    assert theirs is not None
    volume.release(mine)
    assert volume.claim_path(target).read_bytes() == theirs.content


def test_the_sweep_removes_what_killed_runs_left_and_nothing_live(tmp_path):
    stale_tmp = volume.temporary_file(tmp_path / "a.parquet")
    fresh_tmp = volume.temporary_file(tmp_path / "b.parquet")
    stale_dir = volume.temporary_dir(tmp_path / "v1")
    (stale_dir / "model.json").write_text("{}")
    assert volume.try_claim(tmp_path / "c.parquet", LEASE) is not None
    live = volume.try_claim(tmp_path / "d.parquet", LEASE)
    for path in (stale_tmp, stale_dir, volume.claim_path(tmp_path / "c.parquet")):
        age(path, 3600 + 60)
    (tmp_path / "e.parquet").write_bytes(b"published")
    age(tmp_path / "e.parquet", 10 * 3600)
    volume.sweep(tmp_path / "artifacts", predictions=tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [fresh_tmp.name, volume.claim_path(tmp_path / "d.parquet").name, "e.parquet"]
    )
    assert live is not None


def test_the_sweep_removes_a_killed_runs_predictions_with_its_broken_claim(tmp_path):
    """A node restart kills an infer mid-write: its claim and its temporary stay behind.
    Once the claim is past its lease, one sweep breaks it and removes the temporary (not an
    hour later); a temporary under a live claim, or too fresh to be sure of, stays."""
    killed, live, fresh = (tmp_path / f"{n}.parquet" for n in ("killed", "live", "fresh"))
    assert volume.try_claim(killed, LEASE) is not None  # never released: its run was killed
    killed_tmp = volume.temporary_file(killed)
    held = volume.try_claim(live, LEASE)
    live_tmp = volume.temporary_file(live)
    fresh_tmp = volume.temporary_file(fresh)
    index_tmp = volume.temporary_file(tmp_path / ".predicted.json")
    age(volume.claim_path(killed), LEASE + 60)
    for path in (killed_tmp, live_tmp, index_tmp):
        age(path, volume.UNCLAIMED_AFTER_S + 60)
    volume.sweep(tmp_path / "artifacts", predictions=tmp_path)
    assert held is not None
    assert sorted(os.listdir(tmp_path)) == sorted(
        [live_tmp.name, volume.claim_path(live).name, fresh_tmp.name, index_tmp.name]
    )
