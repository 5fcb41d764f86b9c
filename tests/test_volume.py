"""Writing the shared volume: temporaries of their own, whole files, claims with a lease."""

from __future__ import annotations

import datetime as dt
import errno
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


def test_an_arrow_error_reads_with_the_systems_words():
    # pyarrow raises OSError without an errno, the system's words inside its own.
    arrow = OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert volume.system_error(arrow) == (28, "No space left on device")
    plain = OSError(errno.EROFS, "Read-only file system")
    assert volume.system_error(plain) == (errno.EROFS, "Read-only file system")
    both = OSError(errno.ENOSPC, "Error writing. Detail: [errno 28] No space left on device")
    assert volume.system_error(both) == (errno.ENOSPC, "No space left on device")


def test_a_folder_the_filesystem_cannot_sync_is_let_be_other_failures_raise(tmp_path, monkeypatch):
    failure = [errno.EINVAL]

    def fsync(fd):
        raise OSError(failure[0], os.strerror(failure[0]))

    monkeypatch.setattr(os, "fsync", fsync)
    volume.fsync_dir(tmp_path)  # EINVAL: some filesystems cannot sync a folder
    failure[0] = errno.EIO
    with pytest.raises(OSError, match="Input/output error"):
        volume.fsync_dir(tmp_path)


def test_claim_times_are_utc_whatever_the_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # 9 hours ahead, no summer time
    time.tzset()
    try:
        stamp = dt.datetime.strptime(volume.now_utc(), "%Y-%m-%dT%H:%M:%SZ")
    finally:
        monkeypatch.undo()
        time.tzset()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert abs((now - stamp).total_seconds()) < 60


def test_a_claim_that_says_nothing_readable_is_described_and_kept_while_young(tmp_path, caplog):
    target = tmp_path / "a.parquet"
    volume.claim_path(target).write_bytes(b"\x00half")  # a claim as an old writer left it
    caplog.set_level("INFO", logger="job.volume")
    assert volume.try_claim(target, LEASE) is None
    assert caplog.messages[-1].endswith(": held by a run that had not written its name yet")


def test_a_claim_whose_lease_is_unreadable_lapses_after_an_hour(tmp_path):
    root = tmp_path / "artifacts"
    target = root / "predictions" / "x.parquet"
    target.parent.mkdir(parents=True)
    young, old = target, target.with_name("y.parquet")
    for t, seconds in ((young, 600), (old, volume.TEMPORARY_AFTER_S + 60)):
        path = volume.claim_path(t)
        path.write_text(json.dumps({"holder": "h", "since": "s", "lease_s": "soon"}))
        age(path, seconds)
    volume.sweep(root)
    assert volume.claim_path(young).exists() and not volume.claim_path(old).exists()
