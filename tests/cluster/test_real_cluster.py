"""Against a real cluster (kind, see docs/launcher.md): a throw-away namespace with a small
``infer`` CronJob (busybox writing a summary to its termination message), launched, waited
for, and listed. Runs only when TAXI_JOB_TEST_KUBECONFIG names a kubeconfig."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from job import kube, launcher
from job.runs import list_runs

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("TAXI_JOB_TEST_KUBECONFIG"),
                       reason="TAXI_JOB_TEST_KUBECONFIG names no cluster"),
]

SUMMARY = '{"model_version": "v1", "inputs_predicted": 1, "rows_predicted": 5}'


def cronjob(namespace: str, script: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "infer", "namespace": namespace},
        "spec": {"schedule": "0 0 1 1 *", "suspend": True, "jobTemplate": {"spec": {
            "backoffLimit": 0,
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
                "containerName": "infer", "operator": "In", "values": [2, 3]}}]},
            "template": {"spec": {"restartPolicy": "Never", "containers": [{
                "name": "infer", "image": "busybox:1.36", "command": ["sh", "-c", script],
                "terminationMessagePolicy": "FallbackToLogsOnError"}]}}}}},
    }


@pytest.fixture
def cluster() -> Iterator[tuple[kube.Cluster, str]]:
    connected = kube.connect(os.environ["TAXI_JOB_TEST_KUBECONFIG"])
    namespace = "taxi-job-test-" + secrets.token_hex(3)
    connected.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=namespace)))
    try:
        yield connected, namespace
    finally:
        connected.core.delete_namespace(namespace)


def test_launch_wait_and_runs(cluster: tuple[kube.Cluster, str]) -> None:
    connected, ns = cluster
    script = f"echo hello; echo '{SUMMARY}' > /dev/termination-log"
    connected.batch.create_namespaced_cron_job(ns, cronjob(ns, script))
    lines: list[str] = []

    job = launcher.launch(connected.batch, ns, "infer", settings={"TAXI_JOB_INPUT": "x"})
    result = launcher.wait(connected.batch, connected.core, ns, job.metadata.name,
                           timeout=240, on_log=lines.append)

    assert result.state == "succeeded"
    assert result.summary["rows_predicted"] == 5
    assert "hello" in lines
    [run] = list_runs(connected.batch, connected.core, ns)
    assert (run.name, run.trigger, run.state) == (job.metadata.name, "manual", "succeeded")


def test_a_failing_run_reports_the_pod_failure_policy(cluster: tuple[kube.Cluster, str]) -> None:
    connected, ns = cluster
    connected.batch.create_namespaced_cron_job(ns, cronjob(ns, "exit 3"))

    job = launcher.launch(connected.batch, ns, "infer")
    with pytest.raises(launcher.RunFailedError, match="PodFailurePolicy"):
        launcher.wait(connected.batch, connected.core, ns, job.metadata.name, timeout=240)
