"""components/scale-out on a real cluster: the Indexed training Job of 3 shards completes,
publishes one model, and that model predicts what a one-pod training's predicts, to 1e-9;
a reducing pod deleted mid-reduce is replaced by the Job, and the replacement publishes;
the backlog's 3 inference shards predict each file once.

Runs only when TAXI_JOB_TEST_KUBECONFIG names a kubeconfig and TAXI_JOB_TEST_IMAGE an
image the cluster's node has (k8s-local: ``load-image``). Everything happens in a
namespace of its own (prefix TAXI_JOB_TEST_NAMESPACE_PREFIX), deleted at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from e2e import (
    IMAGE,
    KUBECONFIG,
    OWN_NAMESPACE_MARKS,
    SUSPEND_INFER,
    create_job,
    cronjob_patch,
    exec_python,
    kubectl,
    own_namespace,
    run_job,
    small_requests,
    wait_job,
    write_overlay,
)

SHARDS = 3
TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))
ONE_POD_ARTIFACTS = "/var/lib/taxi-job/artifacts-one-pod"

pytestmark = OWN_NAMESPACE_MARKS


def overlay(directory: Path, namespace: str) -> Path:
    """The repository with the scale-out component, in ``namespace``, on the test image; a
    training month of 2.5 M rows (3 row groups: one file split over the 3 shards)."""
    seed_rows = [
        {"op": "replace", "path": "/spec/jobTemplate/spec/template/spec/containers/0/args/4",
         "value": "2500000"},
        {"op": "replace", "path": "/spec/jobTemplate/spec/template/spec/containers/1/args/4",
         "value": "300000"},
        {"op": "replace",
         "path": "/spec/jobTemplate/spec/template/spec/containers/0/resources/limits/memory",
         "value": "1Gi"},
    ]  # fmt: skip
    patches = [cronjob_patch("seed-sample-data", seed_rows), small_requests("train"), SUSPEND_INFER]
    return write_overlay(
        directory, namespace, IMAGE, components=["components/scale-out"], patches=patches
    )


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[str]:
    with own_namespace(overlay, tmp_path) as name:
        yield name


def one_pod_job(train: dict[str, Any], name: str, command: list[str] | None = None) -> dict:
    """A plain Job from the scaled train CronJob's template: one pod, no shards, the
    one-process training into its own artifacts folder (or another command)."""
    spec = json.loads(json.dumps(train["spec"]["jobTemplate"]["spec"]))
    for key in ("completionMode", "completions", "parallelism", "backoffLimitPerIndex",
                "maxFailedIndexes"):  # fmt: skip
        spec.pop(key, None)
    spec["backoffLimit"] = 0
    spec["podFailurePolicy"]["rules"][0]["action"] = "FailJob"
    (container,) = spec["template"]["spec"]["containers"]
    container["env"] = [{"name": "TAXI_JOB_ARTIFACTS", "value": ONE_POD_ARTIFACTS}]
    if command is not None:
        container["command"], container["args"] = command, []
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


READ_MODELS = """
import json, os, sys
from job import artifacts
for root in sys.argv[1:]:
    a = artifacts.load(root)
    partials = os.path.join(root, "partials")
    runs = {r: sorted(os.listdir(os.path.join(partials, r))) for r in os.listdir(partials)} \\
        if os.path.isdir(partials) else {}
    print(json.dumps({"version": a.version, "versions": artifacts.versions(root),
                      "model": a.model.to_dict(), "metadata": a.metadata, "runs": runs}))
"""


def test_indexed_training_of_three_shards_equals_a_one_pod_training(namespace: str) -> None:
    run_job(namespace, from_cronjob="seed-sample-data", name="seed")
    run_job(namespace, from_cronjob="train", name="train-sharded")

    pods = json.loads(kubectl("-n", namespace, "get", "pods", "-l", "job-name=train-sharded",
                              "-o", "json"))["items"]  # fmt: skip
    summaries = {}
    for pod in pods:
        if pod["status"]["phase"] != "Succeeded":
            continue  # a retried index leaves its failed pod behind
        index = int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        summaries[index] = json.loads(terminated["message"])
    assert sorted(summaries) == list(range(SHARDS))
    assert all(s["run_id"] == "train-sharded" and s["shards"] == SHARDS for s in summaries.values())
    reducers = [k for k, s in summaries.items() if s.get("model_version")]
    (reducer,) = reducers
    assert summaries[reducer]["reducer"] == reducer
    # every shard read a share of the one training file (3 row groups over 3 shards)
    assert all(s["rows_read"] > 0 for k, s in summaries.items() if k != reducer)
    assert summaries[reducer]["rows_read"] == 2_500_000
    # `taxi-job runs` shows the run as its reducer told it, whichever pod ended last.
    listed = subprocess.run(
        [TAXI_JOB, "runs", "--kubeconfig", KUBECONFIG, "-n", namespace, "--output-format",
         "json"], capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    [run] = [r for r in json.loads(listed.splitlines()[-1])["runs"] if r["name"] == "train-sharded"]
    assert (run["command"], run["state"]) == ("train", "succeeded")
    assert run["summary"]["model_version"] == summaries[reducer]["model_version"]
    assert run["summary"]["shard"] == reducer

    train = json.loads(kubectl("-n", namespace, "get", "cronjob", "train", "-o", "json"))
    run_job(namespace, one_pod_job(train, "train-one-pod"))
    reader = one_pod_job(
        train,
        "read-models",
        ["python", "-c", READ_MODELS, "/var/lib/taxi-job/artifacts", ONE_POD_ARTIFACTS],
    )
    run_job(namespace, reader, timeout_s=300)
    lines = kubectl("-n", namespace, "logs", "job/read-models").strip().splitlines()
    sharded, single = (json.loads(line) for line in lines[-2:])

    assert sharded["versions"] == [sharded["version"]]  # one model published
    assert sharded["version"] == summaries[reducer]["model_version"]
    assert sharded["metadata"]["run_id"] == "train-sharded"
    assert sharded["runs"] == {"train-sharded": ["PUBLISHED"]}  # partials removed
    a, b = sharded["model"], single["model"]
    assert (a["pu_ids"], a["do_ids"]) == (b["pu_ids"], b["do_ids"])  # same vocabulary
    zones = np.arange(-1, 270)
    pu, do = (g.ravel() for g in np.meshgrid(zones, zones))

    def predict(m: dict[str, Any]) -> np.ndarray:
        from job.model import Model

        return Model.from_dict(m).predict(pu, do)

    np.testing.assert_allclose(predict(a), predict(b), rtol=0, atol=1e-9)
    for key in ("rmse_train", "rmse_eval"):
        got, want = (m["metadata"]["metrics"][key] for m in (sharded, single))
        assert got == pytest.approx(want, rel=1e-9, abs=0)


HOLD_LOCK = """
import pathlib, time
from job import artifacts
root = pathlib.Path("/var/lib/taxi-job/artifacts")
with artifacts.training_lock(root):
    print("held", flush=True)
    while not (root / "release").exists():
        time.sleep(0.5)
"""


def until(condition: Any, what: str, timeout_s: float = 300) -> Any:
    """Poll ``condition`` (the cluster's state) until it returns something true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}")


def test_a_killed_reducer_pod_is_replaced_and_its_retry_publishes(namespace: str) -> None:
    """The reducing shard waits for the training lock (held by another pod); deleting it
    leaves no model, and the index's replacement pod takes the claim over and publishes
    once the lock is free."""
    run_job(namespace, from_cronjob="seed-sample-data", name="seed")
    train = json.loads(kubectl("-n", namespace, "get", "cronjob", "train", "-o", "json"))
    holder = create_job(namespace, one_pod_job(train, "hold-lock", ["python", "-c", HOLD_LOCK]))
    until(lambda: "held" in kubectl("-n", namespace, "logs", f"job/{holder}", timeout=30)
          if pods_of(namespace, holder, "Running") else False, "the lock holder")  # fmt: skip
    name = create_job(namespace, from_cronjob="train", name="train-killed")
    # two shards finish; the third found every partial, claimed the reduce, and waits
    until(lambda: len(pods_of(namespace, name, "Succeeded")) == SHARDS - 1,
          "two shards done", timeout_s=600)  # fmt: skip
    (reducer,) = pods_of(namespace, name, "Running")
    index = reducer["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
    claim = "/var/lib/taxi-job/artifacts/partials/train-killed/.claim-REDUCER"
    read = f"import json; print(json.load(open({claim!r}))['shard'])"
    until(lambda: exec_python(namespace, holder, read, check=False).strip() == index,
          "the reducer's claim")  # fmt: skip
    kubectl("-n", namespace, "delete", "pod", reducer["metadata"]["name"], "--grace-period=0",
            "--force")  # fmt: skip
    replacement = until(lambda: [p for p in pods_of(namespace, name, "Running") if
                                 p["metadata"]["name"] != reducer["metadata"]["name"]],
                        "the index's replacement pod")  # fmt: skip
    assert (
        replacement[0]["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
        == index
    )
    no_model = "import os; print(os.path.exists('/var/lib/taxi-job/artifacts/CURRENT'))"
    assert exec_python(namespace, holder, no_model).strip() == "False"
    exec_python(namespace, holder, "open('/var/lib/taxi-job/artifacts/release', 'w')")
    wait_job(namespace, name)
    wait_job(namespace, holder)

    succeeded = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p
                 for p in pods_of(namespace, name, "Succeeded")}  # fmt: skip
    final = succeeded[index]
    assert final["metadata"]["name"] != reducer["metadata"]["name"]
    summary = json.loads(final["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert summary["reducer"] == int(index) and summary["model_version"]
    reader = one_pod_job(train, "read-models", ["python", "-c", READ_MODELS,
                                                "/var/lib/taxi-job/artifacts"])  # fmt: skip
    run_job(namespace, reader, timeout_s=300)
    (line,) = kubectl("-n", namespace, "logs", "job/read-models").strip().splitlines()[-1:]
    published = json.loads(line)
    assert published["versions"] == [summary["model_version"]]
    assert published["runs"] == {"train-killed": ["PUBLISHED"]}


def pods_of(namespace: str, job: str, phase: str) -> list[dict[str, Any]]:
    pods = json.loads(kubectl("-n", namespace, "get", "pods", "-l", f"job-name={job}",
                              "-o", "json"))["items"]  # fmt: skip
    return [
        p
        for p in pods
        if p["status"].get("phase") == phase and not p["metadata"].get("deletionTimestamp")
    ]


LIST_PREDICTIONS = """
import json, os
import pyarrow.parquet as pq
out = "/var/lib/taxi-job/artifacts/predictions/backlog"
print(json.dumps({n: pq.read_metadata(os.path.join(out, n)).num_rows
                  for n in sorted(os.listdir(out)) if n.endswith(".parquet")}))
"""


def test_the_backlog_job_predicts_each_file_once_across_its_shards(namespace: str) -> None:
    """The infer-backlog template, made an Indexed Job by the component: each of its 3 pods
    predicts the backlog files whose name hashes to its index, together all of them."""
    from job import shards

    run_job(namespace, from_cronjob="seed-sample-data", name="seed")
    run_job(namespace, from_cronjob="train", name="train-1")
    train = json.loads(kubectl("-n", namespace, "get", "cronjob", "train", "-o", "json"))
    months = [f"2021-{m:02d}" for m in range(4, 10)]
    writer = one_pod_job(train, "backlog-data", [
        "taxi-job", "sample-data", "--months", f"{months[0]}..{months[-1]}", "--rows", "3000",
        "/var/lib/taxi-job/data/backlog"])  # fmt: skip
    run_job(namespace, writer, timeout_s=300)
    run_job(namespace, from_cronjob="infer-backlog", name="backlog-1")

    names = [f"yellow_tripdata_{m}.parquet" for m in months]
    predicted: dict[int, list[str]] = {}
    for pod in json.loads(kubectl("-n", namespace, "get", "pods", "-l", "job-name=backlog-1",
                                  "-o", "json"))["items"]:  # fmt: skip
        if pod["status"]["phase"] != "Succeeded":
            continue
        index = int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
        summary = json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]
                             ["message"])  # fmt: skip
        predicted[index] = sorted(Path(p).name for p in summary["outputs"])
    assert sorted(predicted) == [0, 1, 2]
    for index, mine in predicted.items():
        assert mine == [n for n in names if shards.owner(n, SHARDS) == index]
    reader = one_pod_job(train, "list-predictions", ["python", "-c", LIST_PREDICTIONS])
    run_job(namespace, reader, timeout_s=300)
    listed = json.loads(kubectl("-n", namespace, "logs", "job/list-predictions")
                        .strip().splitlines()[-1])  # fmt: skip
    assert {n: listed[n] for n in names} == dict.fromkeys(names, 3000)
