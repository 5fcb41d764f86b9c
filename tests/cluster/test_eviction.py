"""A training's pod evicted through the Eviction API, or deleted with a short grace period,
mid-run: the Job, given no retry at all for a failure of its own (backoffLimit 0), still
completes with a new pod (the manifests' podFailurePolicy does not count a pod stopped from
outside), and the model store keeps no half version. On k8s-local, in a namespace of its
own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e import (
    IMAGE,
    SUSPEND_INFER,
    condition,
    job_ended,
    kubectl,
    own_namespace,
    run_job,
    small_requests,
    write_overlay,
)
from faults import FAULTS_MARKS, VOLUME, frozen_training, job_from, pods, read_volume

pytestmark = FAULTS_MARKS

#: The training's month (faults.FROZEN_TRAIN stops it mid-run, whatever its size).
MONTH = f"{VOLUME}/data/yellow_tripdata_2021-04.parquet"


def overlay(directory: Path, namespace: str) -> Path:
    patches = [SUSPEND_INFER, small_requests("train")]
    return write_overlay(directory, namespace, IMAGE, patches=patches)


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[str]:
    with own_namespace(overlay, tmp_path) as name:
        yield name


def evict(ns: str, pod: str) -> None:
    """What `kubectl drain` and the cluster autoscaler do to a pod: a policy/v1 Eviction."""
    body = {"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": pod, "namespace": ns}}  # fmt: skip
    kubectl("create", "--raw", f"/api/v1/namespaces/{ns}/pods/{pod}/eviction", "-f", "-",
            stdin=json.dumps(body))  # fmt: skip


def delete(ns: str, pod: str) -> None:
    """A person's (or a controller's) delete with a short grace period."""
    kubectl("-n", ns, "delete", "pod", pod, "--grace-period=3", "--wait=false")


@pytest.mark.parametrize("disrupt", [evict, delete], ids=["evicted", "deleted"])
def test_a_disrupted_pod_does_not_count(
    namespace: str, disrupt: Callable[[str, str], None]
) -> None:
    ns = namespace
    run_job(ns, from_cronjob="seed-sample-data", name="seed")
    month = ["sample-data", "--month", "2021-04", "--rows", "100000", f"{VOLUME}/data"]
    run_job(ns, job_from(ns, "train", "month", args=month))

    name = "train-once"
    victim = frozen_training(ns, name, "--train-data", MONTH, backoffLimit=0)
    disrupt(ns, victim)

    job = job_ended(ns, name, 900)
    print(name, disrupt.__name__, json.dumps(job["status"]))
    assert condition(job, "Complete"), job["status"]  # backoffLimit 0: nothing counted
    # The stopped pod is gone (deleted: by the eviction, or by hand); another one did it.
    assert [p["metadata"]["name"] != victim for p in pods(ns, name)] == [True]
    assert job["status"].get("failed", 0) == 0 and job["status"]["succeeded"] == 1
    volume = read_volume(ns, "read")
    assert volume["hidden"] == [] and len(volume["models"]) == 1, volume
