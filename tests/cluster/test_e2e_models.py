"""The model lifecycle on a real cluster, driven from the laptop's side with `taxi-job`:
a training, a second one that passes the gate, a training on too little data that the gate
rejects, a rollback through `taxi-job launch models promote`, and `taxi-job runs` showing
them all.

Runs only when TAXI_JOB_TEST_KUBECONFIG names a kubeconfig and TAXI_JOB_TEST_IMAGE an
image the cluster's node has (k8s-local: ``load-image``). Everything happens in a
namespace of its own (prefix TAXI_JOB_TEST_NAMESPACE_PREFIX), deleted at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e import (
    IMAGE,
    KUBECONFIG,
    OWN_NAMESPACE_MARKS,
    SUSPEND_INFER,
    own_namespace,
    run_job,
    small_requests,
    write_overlay,
)

TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))
#: The seeded incoming month: 1000 rows, too few to fit 500 zone weights well.
SMALL_MONTH = "/var/lib/taxi-job/data/incoming/yellow_tripdata_2021-03.parquet"

pytestmark = OWN_NAMESPACE_MARKS


def overlay(directory: Path, namespace: str) -> Path:
    """The repository in ``namespace``, on the test image; the every-minute infer suspended
    (the machine is shared, and this test is about train and models)."""
    return write_overlay(
        directory, namespace, IMAGE, patches=[SUSPEND_INFER, small_requests("train")]
    )


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[str]:
    with own_namespace(overlay, tmp_path) as name:
        yield name


def taxi_job(namespace: str, *args: str, json_output: bool = True) -> Any:
    """`taxi-job ARGS` as a user runs it from a laptop; its JSON result (or its text)."""
    env = {**os.environ, "TAXI_JOB_KUBECONFIG": KUBECONFIG, "TAXI_JOB_NAMESPACE": namespace}
    fmt = ["--output-format", "json" if json_output else "text"]
    result = subprocess.run(
        [TAXI_JOB, *args, *fmt], env=env, capture_output=True, text=True, timeout=900,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"taxi-job {' '.join(args)}: {result.stderr}"
    return json.loads(result.stdout.splitlines()[-1]) if json_output else result.stdout


def test_train_reject_rollback_and_runs(namespace: str) -> None:
    run_job(namespace, from_cronjob="seed-sample-data", name="seed")
    wait = ("--wait", "--timeout", "600")

    first = taxi_job(namespace, "launch", "train", *wait)
    second = taxi_job(namespace, "launch", "train", *wait)
    rejected = taxi_job(namespace, "launch", "train", "--set", f"train-data={SMALL_MONTH}", *wait)

    v1, v2, v3 = (s["model_version"] for s in (first, second, rejected))
    assert first["promoted"] and first["current_version"] == v1
    assert second["promoted"] and second["champion_version"] == v1
    assert (rejected["promoted"], rejected["gate"]) == (False, "rejected")
    assert rejected["rmse_eval"] > rejected["rmse_eval_champion"] * 1.01
    assert (rejected["champion_version"], rejected["current_version"]) == (v2, v2)

    rollback = taxi_job(namespace, "launch", "models", "promote", v1, "--reason", "e2e rollback")
    assert rollback["state"] == "succeeded"
    entry = rollback["result"]
    assert (entry["cause"], entry["version"], entry["previous_version"]) == ("rollback", v1, v2)
    assert entry["reason"] == "e2e rollback" and "context" in entry["by"]  # who: the kubeconfig

    listed = taxi_job(namespace, "launch", "models", "list")["result"]
    assert [(v["version"], v["status"]) for v in listed] == [
        (v3, "rejected"), (v2, "previous"), (v1, "current")]  # fmt: skip

    runs = taxi_job(namespace, "runs")["runs"]
    mine = [(r["command"], r["state"], r["summary"].get("model_version")) for r in runs]
    assert [m for m in mine if m[0] == "train"] == [
        ("train", "succeeded", v3),
        ("train", "succeeded", v2),
        ("train", "succeeded", v1),
    ]
    table = taxi_job(namespace, "runs", json_output=False)
    rows = {line.split()[0]: line for line in table.splitlines()[1:]}
    trains = [r for r in runs if r["command"] == "train"]
    name_of = {r["summary"].get("model_version"): r["name"] for r in trains}
    assert " rejected " in rows[name_of[v3]] and " succeeded " in rows[name_of[v1]]
    assert any(f"rollback to {v1} (was {v2}): e2e rollback" in row for row in rows.values())
