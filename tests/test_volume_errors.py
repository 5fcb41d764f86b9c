"""Failures of the shared volume itself, and what the pod's termination message can hold."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from trips import trips_table

from job import inference, pipeline, sample, volume
from job.cli import cli
from job.cli.options import TERMINATION_LOG_BYTES, fit_json
from job.errors import EXIT_BAD_INPUT, EXIT_TRANSIENT, BadInputError, TransientError

TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))


def test_permission_denied_is_a_deployment_error_naming_the_path():
    with pytest.raises(BadInputError, match=r"/vol/models: permission denied: cannot write"):
        with volume.writing("model version v1"):
            raise PermissionError(13, "Permission denied", "/vol/models")


def test_a_full_volume_is_transient():
    with pytest.raises(TransientError, match=r"/vol/p.parquet: cannot write predictions: No space"):
        with volume.writing("predictions"):
            raise OSError(28, "No space left on device", "/vol/p.parquet")


needs_a_folder_it_cannot_write = pytest.mark.skipif(
    os.geteuid() == 0 and not shutil.which("setpriv"),
    reason="as root, needs setpriv to run without the capability to override permissions",
)


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A folder like a volume mounted for another user: readable, but not writable, by the
    commands :func:`as_other_pod` runs. It stays in the checkout's own temporary folder:
    the commands run as the test's own user, so they reach the interpreter wherever the
    checkout is (also under a 0700 folder)."""
    root = tmp_path / "shared"
    root.mkdir(mode=0o555)
    return root


def as_other_pod(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``taxi-job args`` as a pod whose fsGroup does not match the volume: as the
    test's user, and as root without any capability (no ``CAP_DAC_OVERRIDE``), so that a
    folder's mode bits decide, as they do for a pod's user."""
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"] if os.geteuid() == 0 else []
    return subprocess.run(
        [*drop, TAXI_JOB, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HOME": "/tmp"},
    )


def assert_permission_denied(result: subprocess.CompletedProcess[str], path: Path, what: str):
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"taxi-job: error: {path}: permission denied: cannot write {what}")
    assert "Traceback" not in result.stderr


@needs_a_folder_it_cannot_write
def test_a_volume_the_user_cannot_write(shared, tmp_path):
    """As a pod whose fsGroup does not match the volume: exit 2 and the path, no traceback."""
    data = tmp_path / "jan.parquet"
    pq.write_table(trips_table([1, 2, 3] * 10, [2, 3, 1] * 10, [5.0, 9.0, 14.0] * 10), data)
    result = as_other_pod(
        "train", "--train-data", str(data), "--eval-data", str(data),
        "--artifacts", str(shared),
    )  # fmt: skip
    assert_permission_denied(result, shared / ".train.lock", "the training lock")


@needs_a_folder_it_cannot_write
def test_sample_data_into_a_folder_the_user_cannot_write(shared):
    result = as_other_pod("sample-data", "--month", "2021-01", "--rows", "10", str(shared))
    assert_permission_denied(result, shared, "synthetic trips")
    assert os.listdir(shared) == []


@needs_a_folder_it_cannot_write
def test_fetch_into_a_folder_the_user_cannot_write(shared, tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    sample.write_sample("2021-01", 10, served)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = as_other_pod("fetch", "--month", "2021-01", "--base-url", url, str(shared))
        server.shutdown()
    assert_permission_denied(result, shared, "the downloaded month")
    assert os.listdir(shared) == []


needs_unshare = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root to mount a tmpfs"
)


def sample_data_on_a_tmpfs(folder: Path, mount_options: str, rows: int):
    """``sample-data`` into a real tmpfs mounted on ``folder`` in a mount namespace of its
    own; skips where a tmpfs cannot be mounted."""
    folder.mkdir()
    return in_a_mount_namespace(
        f'mount -t tmpfs -o {mount_options} tmpfs "$1" || exit 9\n'
        f'exec "$0" sample-data --month 2021-01 --rows {rows} "$1"',
        folder,
    )


def in_a_mount_namespace(script: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """``sh -c script`` in a mount namespace of its own, with ``$0`` the ``taxi-job``
    executable and ``$1`` ``folder``; skips where the script's mount fails (its exit 9)."""
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, TAXI_JOB, str(folder)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode == 9 or "mount:" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    return result


@needs_unshare
def test_sample_data_on_a_full_volume_is_transient(tmp_path):
    """A real full filesystem: a 64 KiB tmpfs."""
    full = tmp_path / "full"
    result = sample_data_on_a_tmpfs(full, "size=64k", 20000)
    assert result.returncode == EXIT_TRANSIENT, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"taxi-job: error: {full}: cannot write synthetic trips: ")
    assert last.endswith("No space left on device")


def test_a_path_through_a_file_is_a_usage_error_not_a_retry(tmp_path, make_trips):
    data = make_trips("m.parquet", rows=500)
    (tmp_path / "volume").write_text("a file where the volume's folder should be")
    artifacts = tmp_path / "volume" / "artifacts"
    result = subprocess.run(
        [TAXI_JOB, "train", "--train-data", str(data), "--eval-data", str(data),
         "--artifacts", str(artifacts)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"taxi-job: error: {artifacts}: cannot write the training lock: ")
    assert "a retry cannot help" in last


@needs_unshare
def test_sample_data_on_a_read_only_volume_is_a_usage_error(tmp_path):
    """A real read-only mount (a claim mounted readOnly): a retry cannot help, exit 2."""
    mounted = tmp_path / "ro"
    result = sample_data_on_a_tmpfs(mounted, "ro,size=64k", 100)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"taxi-job: error: {mounted}: cannot write synthetic trips: ")
    assert "Read-only file system" in last


def test_the_termination_message_stays_valid_json_with_many_outputs():
    outputs = [
        f"/var/lib/taxi-job/artifacts/predictions/yellow_tripdata_20{i:04d}.parquet"
        for i in range(200)
    ]
    summary = {
        "model_version": "20261126T000000.000000Z-abcdef12",
        "inputs_predicted": 200,
        "outputs": outputs,
    }
    text = fit_json(summary)
    assert len(text.encode()) <= TERMINATION_LOG_BYTES
    parsed = json.loads(text)
    assert parsed["model_version"] == summary["model_version"]
    assert parsed["inputs_predicted"] == 200
    assert parsed["outputs"] == outputs[: len(parsed["outputs"])]
    assert len(parsed["outputs"]) + parsed["outputs_omitted"] == 200
    assert fit_json({"a": 1}) == '{"a": 1}'


def test_infinite_duration_bounds_are_refused(tmp_path, make_trips):
    data = make_trips("t.parquet", rows=200, seed=1)
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--train-data",
            str(data),
            "--eval-data",
            str(data),
            "--artifacts",
            str(tmp_path / "a"),
            "--max-duration",
            "inf",
        ],
    )
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr.strip().splitlines()[-1] == (
        "taxi-job: error: --max-duration inf: must be a finite number of minutes"
    )


def test_stale_temporary_predictions_are_removed_fresh_ones_kept(tmp_path, make_trips):
    data = make_trips("t.parquet", rows=300, seed=1)
    out = tmp_path / "a"
    pipeline.train(pipeline.TrainConfig(str(data), str(data), out))
    predictions = out / "predictions" / data.parent.name
    predictions.mkdir(parents=True)
    stale = predictions / ".tmp-t.parquet.123"
    fresh = predictions / ".tmp-t.parquet.456"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"being written")
    old = time.time() - volume.TEMPORARY_AFTER_S - 60
    os.utime(stale, (old, old))
    inference.infer(inference.InferConfig(str(data), out, settle_s=0))
    assert not stale.exists()
    assert fresh.exists()  # another run may still be writing it
    assert (predictions / "t.parquet").is_file()


@needs_unshare
def test_train_on_a_full_volume_leaves_current_and_no_half_version(tmp_path, make_trips):
    """A real full filesystem (an 8 MiB tmpfs filled to the last byte): the training exits
    75, CURRENT and the versions stay as they were, and the half-written version does not
    keep space the volume lacks; once space is freed the next training publishes."""
    data = make_trips("m.parquet", rows=2000)
    store = tmp_path / "store"
    store.mkdir()
    train = f'"$0" train --train-data {data} --eval-data {data} --artifacts "$1"/a'
    script = (
        f'mount -t tmpfs -o size=8m tmpfs "$1" && {train} >/dev/null 2>&1 || exit 9\n'
        'fallocate -l "$(df -B1 --output=avail "$1" | tail -1)" "$1"/other-files\n'
        f"{train} >/dev/null 2>&1; echo $?\n"
        'cat "$1"/a/CURRENT; ls -A "$1"/a/models | tr "\\n" " "; echo\n'
        f'rm "$1"/other-files; {train} >/dev/null 2>&1; echo $?; cat "$1"/a/CURRENT\n'
    )
    result = in_a_mount_namespace(script, store)
    code, current, versions, code_after, current_after = result.stdout.splitlines()
    assert int(code) == EXIT_TRANSIENT
    assert versions.split() == [current]  # no .tmp- folder beside it
    assert int(code_after) == 0
    assert current_after != current


@needs_unshare
def test_the_first_training_on_a_full_volume_is_transient(tmp_path, make_trips):
    """Full before any training: no room for the training lock's note (who holds it) is a
    full volume like any other, exit 75, not an unexpected error."""
    data = make_trips("m.parquet", rows=500)
    store = tmp_path / "store"
    store.mkdir()
    script = (
        'mount -t tmpfs -o size=1m tmpfs "$1" || exit 9\n'
        'fallocate -l "$(df -B1 --output=avail "$1" | tail -1)" "$1"/other\n'
        f'exec "$0" train --train-data {data} --eval-data {data} --artifacts "$1"/a\n'
    )
    result = in_a_mount_namespace(script, store)
    assert result.returncode == EXIT_TRANSIENT, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"taxi-job: error: {store}/a/.train.lock: cannot write the training lock: "
        "No space left on device"
    )


@needs_unshare
def test_infer_of_a_month_that_cannot_fit_publishes_nothing(tmp_path, make_trips):
    """A real filesystem too small for a month's predictions (a tmpfs with 1 MiB left):
    infer exits 75, no predictions and no temporary or claim are left; once space is freed
    the next run predicts the month whole."""
    data = make_trips("m.parquet", rows=2000)
    queue = tmp_path / "queue"
    sample.write_sample("2021-04", 200_000, queue)  # about 2 MiB of predictions
    (sample_file,) = queue.glob("*.parquet")
    store = tmp_path / "store"
    store.mkdir()
    errors = tmp_path / "errors"  # outside the tmpfs: the test reads it
    infer = (
        f'"$0" infer --input "{sample_file}" --artifacts "$1"/a --predictions "$1"/p '
        "--settle-seconds 0 >/dev/null 2>{}; echo $?"
    )
    script = (
        f'mount -t tmpfs -o size=8m tmpfs "$1" && "$0" train --train-data {data} '
        f'--eval-data {data} --artifacts "$1"/a >/dev/null 2>&1 || exit 9\n'
        'fallocate -l "$(( $(df -B1 --output=avail "$1" | tail -1) - 1048576 ))" "$1"/other\n'
        f"{infer.format(errors)}\n"
        'ls -A "$1"/p "$1"/p/* | tr "\\n" " "; echo\n'
        f'rm "$1"/other; {infer.format("/dev/null")}\n'
        '"$(dirname "$0")"/python -c "import pyarrow.parquet as pq, sys; '
        'print(pq.read_metadata(sys.argv[1]).num_rows)" "$1"/p/queue/*.parquet\n'
    )
    result = in_a_mount_namespace(script, store)
    assert len(result.stdout.splitlines()) == 4, result.stdout + result.stderr
    code, listed, code_after, rows = result.stdout.splitlines()
    assert int(code) == EXIT_TRANSIENT
    assert errors.read_text().strip().splitlines()[-1] == (
        f"taxi-job: error: {store}/p/queue: cannot write predictions: No space left on device"
    )
    assert ".tmp-" not in listed and ".claim-" not in listed and sample_file.name not in listed
    assert int(code_after) == 0
    assert int(rows) == 200_000


#: Run inside a mount namespace of its own by the venv's Python: a first training (no
#: CURRENT yet, so none whose page a new one reuses) on an 8 MiB tmpfs left with ``k``
#: free pages, for each ``k`` around the size of one version; prints one JSON object a
#: run: its exit code, CURRENT after it (or null), its last line.
FIRST_TRAINING_ON_EVERY_FREE_SIZE = r"""
import json, os, shutil, subprocess, sys
taxi_job, store, data = sys.argv[1:4]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", store], check=True)
def train(a):
    return subprocess.run([taxi_job, "train", "--train-data", data, "--eval-data", data,
                           "--artifacts", a], capture_output=True, text=True)
def current(a):
    path = os.path.join(a, "CURRENT")
    return open(path).read().strip() if os.path.exists(path) else None
probe = os.path.join(store, "probe")
train(probe)
page = os.statvfs(store).f_frsize
size = os.path.getsize(os.path.join(probe, "models", current(probe), "model.json"))
shutil.rmtree(probe)
other = os.path.join(store, "other")
for k in range(-(-size // page), -(-size // page) + 5):
    a = os.path.join(store, f"a{k}")
    os.makedirs(a)
    fd = os.open(other, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.posix_fallocate(fd, 0, os.statvfs(store).f_bavail * page - k * page)
    os.close(fd)
    run = train(a)
    os.remove(other)
    print(json.dumps({"k": k, "code": run.returncode, "current": current(a),
                      "last": (run.stderr.strip().splitlines() or [""])[-1]}))
    shutil.rmtree(a)
"""


@needs_unshare
def test_a_training_that_fails_on_a_full_volume_never_changed_current(tmp_path, make_trips):
    """Whatever room is left (page by page around one version's size): a first training
    either succeeds with its version current, or exits 75 with no CURRENT. One that made
    its version current must not then fail on the history's line: its Job would train and
    publish again, and a failed run would have changed what infer uses."""
    data = make_trips("m.parquet", rows=500)
    store = tmp_path / "store"
    store.mkdir()
    result = subprocess.run(
        ["unshare", "--mount", sys.executable, "-c", FIRST_TRAINING_ON_EVERY_FREE_SIZE,
         TAXI_JOB, str(store), str(data)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if "mount:" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    runs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(runs) == 5, result.stderr
    for run in runs:
        if run["code"] == 0:
            assert run["current"] is not None, run
        else:
            assert (run["code"], run["current"]) == (EXIT_TRANSIENT, None), run
            assert run["last"].startswith(f"taxi-job: error: {store}/a{run['k']}/"), run
            assert run["last"].endswith(": No space left on device"), run
    assert {r["code"] for r in runs} == {0, EXIT_TRANSIENT}, runs  # both sides were met
