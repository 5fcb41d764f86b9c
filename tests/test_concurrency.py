"""Runs overlapping on one volume, as Jobs do on a cluster: each in a pid namespace of its own,
so every one of them is pid 1, like a container's main process."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from job import artifacts, inference, pipeline, predicted, volume
from job.errors import InputsRejectedError

TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))
ROUNDS = 20


@functools.cache
def pid_namespaces() -> str | None:
    """Why runs cannot have pid namespaces of their own here, or None when they can."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1) for pid namespaces"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", "echo $$"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.stdout.strip() != "1":
        return f"unshare --pid does not work here: {probe.stderr.strip()}"
    return None


needs_pid_namespaces = pytest.mark.skipif(
    pid_namespaces() is not None, reason=pid_namespaces() or ""
)


def as_pid_1(*args: str) -> subprocess.Popen[str]:
    """``taxi-job args`` as pid 1 of a new pid namespace, in a process group of its own."""
    return subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", TAXI_JOB, *args, "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, dict, str]:
    out, err = process.communicate(timeout=120)
    lines = out.strip().splitlines()
    return process.returncode, json.loads(lines[-1]) if lines else {}, err


def train(root: Path, data: Path) -> str:
    summary = pipeline.train(pipeline.TrainConfig(str(data), str(data), root))
    return str(summary["model_version"])


def infer_args(data: Path, root: Path, predictions: Path, *more: str) -> list[str]:
    return [
        "infer",
        "--input",
        str(data),
        "--artifacts",
        str(root),
        "--predictions",
        str(predictions),
        "--output-format",
        "json",
        *more,
    ]


@pytest.fixture
def two_models(tmp_path, make_trips):
    """An input, two artifact folders with different models, and each model's predictions
    of the input made alone (the reference a raced output must equal exactly)."""
    data = make_trips("yellow_tripdata_2021-03.parquet", rows=300_000, seed=3, zones=60)
    expected: dict[str, np.ndarray] = {}
    roots = []
    for seed in (1, 2):
        root = tmp_path / f"artifacts-{seed}"
        version = train(root, make_trips(f"train-{seed}.parquet", rows=3000, seed=seed))
        alone = tmp_path / f"alone-{seed}"
        inference.infer(inference.InferConfig(str(data), root, alone, settle_s=0))
        expected[version] = pq.read_table(alone / data.parent.name / data.name)[
            "predicted_duration"
        ].to_numpy()
        roots.append(root)
    assert len(expected) == 2
    assert not np.array_equal(*expected.values())
    return data, roots, expected


def assert_one_models_predictions(output: Path, expected: dict[str, np.ndarray]) -> str:
    """The published file is whole and holds one model's predictions for every input row;
    return that model's version."""
    version = pq.read_schema(output).metadata[inference.META_VERSION].decode()
    assert version in expected
    table = pq.read_table(output)
    assert table["model_version"].unique().to_pylist() == [version]
    np.testing.assert_array_equal(table["predicted_duration"].to_numpy(), expected[version])
    return version


def leftovers(folder: Path) -> list[str]:
    """Hidden files left in ``folder``: temporaries and claims (not the index of
    predicted inputs, which stays by design)."""
    return sorted(
        p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != predicted.INDEX
    )


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Poll until ``condition()`` holds (state, not time, is what the test waits for)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.001)


@needs_pid_namespaces
def test_a_second_infer_while_the_first_is_writing_the_same_output(tmp_path, two_models):
    """Both pid 1, the first frozen mid-write while the second runs start to end: the
    second leaves the input to the first, which publishes whole. (On the code before
    temporaries of their own, the second wrote into the first's temporary: exit 75, and an
    output mixing both models.)"""
    data, (root_a, root_b), expected = two_models
    predictions = tmp_path / "predictions"
    queue = predictions / data.parent.name
    queue.mkdir(parents=True)
    first = as_pid_1(*infer_args(data, root_a, predictions))
    frozen = False
    try:
        wait_for(
            lambda: (
                first.poll() is not None
                or any(
                    p.name.startswith(volume.TMP_PREFIX + data.name)  # predictions, not a claim
                    for p in queue.iterdir()
                )
            ),
            "the first run to start writing",
        )
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGSTOP)
            frozen = True
        second = finish(as_pid_1(*infer_args(data, root_b, predictions)))
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    first_result = finish(first)
    assert frozen, "the first run ended before it could be caught writing: use a bigger input"
    assert first_result[0] == 0, first_result[2]
    assert second[0] == 0, second[2]
    assert (first_result[1]["inputs_predicted"], second[1]["inputs_busy"]) == (1, 1)
    assert second[1]["inputs_predicted"] == 0
    output = queue / data.name
    assert assert_one_models_predictions(output, expected) == first_result[1]["model_version"]
    assert leftovers(queue) == []


@pytest.mark.slow
@needs_pid_namespaces
def test_two_infers_racing_with_different_models(tmp_path, two_models):
    """Started together, 20 times: each output whole, of one model; both runs exit 0 (one
    may leave the input to the other); nothing left behind."""
    data, (root_a, root_b), expected = two_models
    for round_ in range(ROUNDS):
        predictions = tmp_path / f"predictions-{round_}"
        runs = [as_pid_1(*infer_args(data, root, predictions)) for root in (root_a, root_b)]
        results = [finish(run) for run in runs]
        for code, _, err in results:
            assert code == 0, err
        # Each run predicted the input, or left it to the other (busy), or found it done.
        assert sum(summary["inputs_predicted"] for _, summary, _ in results) >= 1
        assert_one_models_predictions(predictions / data.parent.name / data.name, expected)
        assert leftovers(predictions / data.parent.name) == []


@pytest.mark.slow
@needs_pid_namespaces
def test_two_trainings_racing(tmp_path, make_trips):
    """The lock: the second waits, then publishes; every version whole, CURRENT one of them."""
    root = tmp_path / "artifacts"
    data = [make_trips(f"t{seed}.parquet", rows=2000, seed=seed) for seed in (1, 2)]
    for _ in range(ROUNDS):
        before = set(artifacts.versions(root))
        runs = [
            as_pid_1(
                "train",
                "--train-data",
                str(d),
                "--eval-data",
                str(d),
                "--artifacts",
                str(root),
                "--lock-timeout",
                "60",
                "--output-format",
                "json",
            )
            for d in data
        ]
        results = [finish(run) for run in runs]
        for code, _, err in results:
            assert code == 0, err
        published = set(artifacts.versions(root)) - before
        assert published == {summary["model_version"] for _, summary, _ in results}
        for version in published:
            assert artifacts.load(root, version).version == version  # whole: checksum holds
        assert artifacts.current_version(root) in published
        assert leftovers(root) == [".train.lock"]
        assert leftovers(root / "models") == []


@pytest.mark.slow
@needs_pid_namespaces
def test_an_infer_racing_a_training_sees_the_old_model_or_the_new(tmp_path, make_trips):
    root = tmp_path / "artifacts"
    data = make_trips("yellow_tripdata_2021-03.parquet", rows=100_000, seed=3, zones=60)
    months = [make_trips(f"t{seed}.parquet", rows=2000, seed=seed) for seed in (1, 2)]
    expected: dict[str, np.ndarray] = {}

    def predicted_alone(version: str) -> np.ndarray:
        if version not in expected:
            alone = tmp_path / f"alone-{version}"
            inference.infer(inference.InferConfig(str(data), root, alone, settle_s=0))
            expected[version] = pq.read_table(alone / data.parent.name / data.name)[
                "predicted_duration"
            ].to_numpy()
        return expected[version]

    train(root, months[0])
    for round_ in range(ROUNDS):
        old = artifacts.current_version(root)
        predicted_alone(old)
        predictions = tmp_path / f"predictions-{round_}"
        month = months[(round_ + 1) % 2]
        training = as_pid_1(
            "train", "--train-data", str(month), "--eval-data", str(month), "--artifacts",
            str(root), "--output-format", "json",
        )  # fmt: skip
        inferring = as_pid_1(*infer_args(data, root, predictions))
        (t_code, t_summary, t_err), (i_code, i_summary, i_err) = finish(training), finish(inferring)
        assert (t_code, i_code) == (0, 0), t_err + i_err
        new = t_summary["model_version"]
        assert i_summary["model_version"] in (old, new)
        predicted_alone(new)
        version = assert_one_models_predictions(
            predictions / data.parent.name / data.name, expected
        )
        assert version == i_summary["model_version"]
        assert leftovers(predictions / data.parent.name) == []


@pytest.fixture
def one_model(tmp_path, make_trips):
    root = tmp_path / "artifacts"
    train(root, make_trips("train.parquet", rows=2000, seed=1))
    incoming = tmp_path / "incoming"
    for name, seed in (("a.parquet", 2), ("b.parquet", 3)):
        make_trips(name, rows=500, seed=seed, folder=incoming)
    return root, incoming


def test_an_input_another_run_is_predicting_is_left_to_it(one_model):
    root, incoming = one_model
    predictions = root / "predictions" / incoming.name
    predictions.mkdir(parents=True)
    held = volume.try_claim(predictions / "a.parquet", inference.CLAIM_LEASE_S)
    summary = inference.infer(inference.InferConfig(str(incoming), root, settle_s=0))
    assert (summary["inputs_predicted"], summary["inputs_busy"]) == (1, 1)
    assert sorted(p.name for p in predictions.iterdir()) == [
        ".claim-a.parquet",
        predicted.INDEX,
        "b.parquet",
    ]
    assert held is not None
    volume.release(held)
    again = inference.infer(inference.InferConfig(str(incoming), root, settle_s=0))
    assert (again["inputs_predicted"], again["inputs_skipped"]) == (1, 1)
    assert leftovers(predictions) == []


def test_a_claim_left_by_a_killed_run_is_broken_after_its_lease(one_model):
    root, incoming = one_model
    predictions = root / "predictions" / incoming.name
    predictions.mkdir(parents=True)
    volume.try_claim(predictions / "a.parquet", inference.CLAIM_LEASE_S)  # never released
    old = time.time() - inference.CLAIM_LEASE_S - 60
    os.utime(volume.claim_path(predictions / "a.parquet"), (old, old))
    summary = inference.infer(inference.InferConfig(str(incoming), root, settle_s=0))
    assert (summary["inputs_predicted"], summary["inputs_busy"]) == (2, 0)
    assert leftovers(predictions) == []


def test_a_publish_that_fails_leaves_no_temporary_and_no_claim(one_model):
    """The rename into place is inside the clean-up: when it fails, the temporary goes."""
    root, incoming = one_model
    predictions = root / "predictions" / incoming.name
    (predictions / "b.parquet").mkdir(parents=True)  # in the way of b's predictions
    result = subprocess.run(
        [TAXI_JOB, "infer", "--input", str(incoming), "--artifacts", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 75
    last = result.stderr.strip().splitlines()[-1]
    assert f"{predictions / 'b.parquet'}: cannot write predictions: Is a directory" in last
    assert sorted(p.name for p in predictions.iterdir()) == [
        predicted.INDEX,
        "a.parquet",
        "b.parquet",
    ]
    assert pq.read_table(predictions / "a.parquet").num_rows == 500  # done before: kept


def test_a_bad_input_another_run_set_aside_after_our_first_look_is_not_reported_again(
    one_model, monkeypatch
):
    """Both runs found the corrupt file; the other took the claim first, moved it into
    rejected/ and released it: this run does not report it (it is not "left in place")."""
    root, incoming = one_model
    (incoming / "bad.parquet").write_bytes(b"not parquet")
    claim = volume.try_claim
    others: list[str] = []

    def the_other_run_first(target, *args, **kwargs):
        if target.name == "bad.parquet" and not others:
            others.append("running")
            with pytest.raises(InputsRejectedError):
                inference.infer(inference.InferConfig(str(incoming), root, settle_s=0))
        return claim(target, *args, **kwargs)

    monkeypatch.setattr(volume, "try_claim", the_other_run_first)
    summary = inference.infer(inference.InferConfig(str(incoming), root, settle_s=0))
    assert (summary["inputs_rejected"], summary["inputs_busy"]) == (0, 1)
    assert sorted(p.name for p in (incoming.parent / "rejected").iterdir()) == [
        "bad.parquet", "bad.parquet.json"
    ]  # fmt: skip


@needs_pid_namespaces
def test_sigterm_stops_a_run_that_is_pid_1(tmp_path, make_trips):
    """In a container taxi-job is pid 1, for which the kernel drops a signal with no
    handler: a deleted pod would run on for its grace period, then die uncleanly. Here a
    training waits for the lock (held by this test) and gets SIGTERM: it stops at once."""
    import fcntl

    data = make_trips("m.parquet", rows=500)
    root = tmp_path / "artifacts"
    root.mkdir()
    lock = os.open(root / artifacts.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        process = as_pid_1("train", "--train-data", str(data), "--eval-data", str(data),
                           "--artifacts", str(root), "--lock-timeout", "600")  # fmt: skip
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        wait_for(lambda: children.read_text().strip() != "", "the pid-1 process")
        pid = int(children.read_text().split()[0])

        def waits_for_the_lock() -> bool:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(FileNotFoundError):  # an fd closed meanwhile
                    if os.readlink(fd) == str(root / artifacts.LOCK_FILE):
                        return True
            return False

        wait_for(waits_for_the_lock, "the training to wait for the lock")
        os.kill(pid, signal.SIGTERM)
        _, err = process.communicate(timeout=60)  # the lock is still held: only the signal ends it
    finally:
        os.close(lock)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "taxi-job: stopped by SIGTERM"
