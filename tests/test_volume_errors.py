"""Failures of the shared volume itself, and what the pod's termination message can hold."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from trips import trips_table

from job import artifacts, pipeline
from job.cli import cli
from job.cli.options import TERMINATION_LOG_BYTES, fit_json
from job.errors import EXIT_BAD_INPUT, BadInputError, TransientError

TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))


def test_permission_denied_is_a_deployment_error_naming_the_path():
    with pytest.raises(BadInputError, match=r"/vol/models: permission denied: cannot write"):
        with artifacts.writing("model version v1"):
            raise PermissionError(13, "Permission denied", "/vol/models")


def test_a_full_volume_is_transient():
    with pytest.raises(TransientError, match=r"/vol/p.parquet: cannot write predictions: No space"):
        with artifacts.writing("predictions"):
            raise OSError(28, "No space left on device", "/vol/p.parquet")


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)
def test_a_volume_the_user_cannot_write(tmp_path_factory):
    """As a pod whose fsGroup does not match the volume: exit 2 and the path, no traceback."""
    root = tmp_path_factory.mktemp("shared", numbered=True)
    root.chmod(0o755)
    data = root / "jan.parquet"
    pq.write_table(trips_table([1, 2, 3] * 10, [2, 3, 1] * 10, [5.0, 9.0, 14.0] * 10), data)
    data.chmod(0o644)
    artifacts_dir = root / "artifacts"
    artifacts_dir.mkdir(mode=0o755)  # owned by root: user 65534 cannot write
    parents = [p for p in [root, *root.parents] if p != Path("/")]
    for parent in parents:  # let the other user reach the files
        parent.chmod(parent.stat().st_mode | 0o005)
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            TAXI_JOB,
            "train",
            "--train-data",
            str(data),
            "--eval-data",
            str(data),
            "--artifacts",
            str(artifacts_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HOME": "/tmp"},
    )
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "permission denied: cannot write the training lock" in last
    assert str(artifacts_dir) in last
    assert "Traceback" not in result.stderr


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
    predictions = out / "predictions"
    predictions.mkdir()
    stale = predictions / ".tmp-t.parquet.123"
    fresh = predictions / ".tmp-t.parquet.456"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"being written")
    old = time.time() - pipeline.STALE_AFTER_S - 60
    os.utime(stale, (old, old))
    pipeline.infer(pipeline.InferConfig(str(data), out))
    assert not stale.exists()
    assert fresh.exists()  # another run may still be writing it
    assert (predictions / "t.parquet").is_file()
