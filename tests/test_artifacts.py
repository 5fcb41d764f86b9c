"""The artifact protocol: immutable versions, atomic publish, one training at a time."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from job import artifacts
from job.errors import EXIT_TRANSIENT, ModelUnavailableError, TransientError
from job.model import Model

TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))


def tiny_model(shift: float = 0.0) -> Model:
    return Model(
        10.0 + shift, np.array([1, 2]), np.array([0.5, -0.5]), np.array([3]), np.array([1.0])
    )


def test_publish_then_load_round_trips_exactly(tmp_path):
    model = Model(
        1 / 3, np.array([-1, 4]), np.array([0.1 + 0.2, -2e-17]), np.array([7]), np.array([np.pi])
    )
    version = artifacts.publish(tmp_path, model, {"metrics": {"rmse_eval": 1.5}})
    loaded = artifacts.load(tmp_path)
    assert loaded.version == version == artifacts.current_version(tmp_path)
    assert loaded.model.intercept == model.intercept
    assert loaded.model.pu_weights.tolist() == model.pu_weights.tolist()
    assert loaded.model.do_weights.tolist() == [np.pi]
    assert loaded.metadata["metrics"] == {"rmse_eval": 1.5}
    body = json.loads((tmp_path / "models" / version / "model.json").read_text())
    assert body["format"] == "taxi-job/model/v1"


def test_versions_are_immutable_and_current_moves(tmp_path):
    first = artifacts.publish(tmp_path, tiny_model(), {})
    second = artifacts.publish(tmp_path, tiny_model(1.0), {})
    assert artifacts.versions(tmp_path) == sorted([first, second])
    assert artifacts.current_version(tmp_path) == second
    assert artifacts.load(tmp_path, first).model.intercept == 10.0
    assert artifacts.load(tmp_path).model.intercept == 11.0


def test_a_truncated_artifact_is_refused(tmp_path):
    version = artifacts.publish(tmp_path, tiny_model(), {})
    path = tmp_path / "models" / version / "model.json"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ModelUnavailableError, match="checksum mismatch"):
        artifacts.load(tmp_path)


def test_second_training_fails_clearly_on_the_lock(tmp_path):
    with (
        artifacts.training_lock(tmp_path),
        pytest.raises(
            TransientError,
            match=r"held by \S+ pid \d+ for a training since .*; a training cannot run",
        ),
        artifacts.training_lock(tmp_path, timeout_s=0.3),
    ):
        pass
    with artifacts.training_lock(tmp_path):  # released: free again
        pass


def test_second_training_waits_for_the_lock(tmp_path):
    order = []

    def holder():
        with artifacts.training_lock(tmp_path):
            order.append("first in")
            time.sleep(0.5)
            order.append("first out")

    thread = threading.Thread(target=holder)
    thread.start()
    while not order:
        time.sleep(0.01)
    with artifacts.training_lock(tmp_path, timeout_s=10):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]


def test_lock_held_by_another_process_gives_exit_75(tmp_path, make_trips):
    data = make_trips("t.parquet", rows=500, seed=1)
    out = tmp_path / "a"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from job import artifacts\n"
            "with artifacts.training_lock(__import__('pathlib').Path(sys.argv[1])):\n"
            "    print('held', flush=True); time.sleep(30)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = subprocess.run(
            [
                TAXI_JOB,
                "train",
                "--train-data",
                str(data),
                "--eval-data",
                str(data),
                "--artifacts",
                str(out),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == EXIT_TRANSIENT
        assert "for a training since" in result.stderr.strip().splitlines()[-1]
        assert not (out / "CURRENT").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_training_killed_at_any_moment_leaves_the_previous_model_current(tmp_path, make_trips):
    """SIGKILL trainings at spread-out moments: CURRENT always names a complete, verified model."""
    data = make_trips("big.parquet", rows=150_000, seed=4, row_group_size=10_000)
    out = tmp_path / "a"
    args = [
        TAXI_JOB,
        "train",
        "--train-data",
        str(data),
        "--eval-data",
        str(data),
        "--artifacts",
        str(out),
        "-q",
    ]
    subprocess.run(args, check=True, capture_output=True)
    started = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    duration = time.perf_counter() - started
    killed_mid_way = 0
    for fraction in np.linspace(0.3, 1.1, 12):
        before = artifacts.current_version(out)
        published = set(artifacts.versions(out))
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(duration * fraction)
        process.send_signal(signal.SIGKILL)
        killed_mid_way += process.wait() == -signal.SIGKILL
        # Every version in models/ is whole (each load verifies its checksum), at most one
        # is new, and CURRENT names either the previous model or that new, whole one.
        now = set(artifacts.versions(out))
        assert published <= now and len(now - published) <= 1
        for version in now:
            assert artifacts.load(out, version).version == version
        current = artifacts.current_version(out)
        assert current == before or current in now - published
    assert killed_mid_way >= 3
    # The next training removes what the killed ones left and publishes.
    subprocess.run(args, check=True, capture_output=True)
    assert list((out / "models").glob(".tmp-*")) == []
    assert list(out.glob(".tmp-*")) == []


def test_a_reader_during_publishing_always_sees_a_whole_model(tmp_path):
    artifacts.publish(tmp_path, tiny_model(), {})
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: set[str] = set()

    def reader():
        while not stop.is_set():
            try:
                loaded = artifacts.load(tmp_path)
                seen.add(loaded.version)
                assert loaded.model.intercept in {10.0 + k for k in range(40)}
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for k in range(1, 40):
            with artifacts.training_lock(tmp_path):
                artifacts.publish(tmp_path, tiny_model(float(k)), {"k": k})
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(seen) > 1


def test_leftovers_of_a_killed_training_are_removed_under_the_lock(tmp_path):
    (tmp_path / "models" / ".tmp-20260101T000000Z-dead.123").mkdir(parents=True)
    with artifacts.training_lock(tmp_path):
        pass
    assert list((tmp_path / "models").iterdir()) == []


def test_current_naming_a_missing_version(tmp_path):
    (tmp_path / "CURRENT").write_text("20990101T000000Z-nothere\n")
    with pytest.raises(ModelUnavailableError, match="incomplete"):
        artifacts.load(tmp_path)
