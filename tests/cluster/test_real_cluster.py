"""Against a real cluster (kind, see docs/launcher.md): a throw-away namespace with a small
``infer`` CronJob (busybox writing a summary to its termination message), launched, waited
for, and listed. Runs when TAXI_JOB_TEST_KUBECONFIG names a kubeconfig (conftest.py
``test_kubeconfig``: skipped without one, failed in CI)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes.watch
import pytest
from kubernetes import client

from job import kube, launcher
from job.runs import list_runs

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SUMMARY = '{"model_version": "v1", "inputs_predicted": 1, "rows_predicted": 5}'


def cronjob(namespace: str, script: str, *, every_minute: bool = False) -> dict[str, Any]:
    """``infer`` as the manifests schedule it (every minute, one successful Job kept), or
    suspended."""
    schedule: dict[str, Any] = (
        {"schedule": "* * * * *", "concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 1}
        if every_minute
        else {"schedule": "0 0 1 1 *", "suspend": True}
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "infer", "namespace": namespace},
        "spec": {
            **schedule,
            "jobTemplate": {
                "spec": {
                    "backoffLimit": 0,
                    "podFailurePolicy": {
                        "rules": [
                            {
                                "action": "FailJob",
                                "onExitCodes": {
                                    "containerName": "infer",
                                    "operator": "In",
                                    "values": [2, 3],
                                },
                            }
                        ]
                    },
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": "infer",
                                    "image": "busybox:1.36",
                                    "command": ["sh", "-c", script],
                                    "terminationMessagePolicy": "FallbackToLogsOnError",
                                }
                            ],
                        }
                    },
                }
            },
        },
    }


@pytest.fixture
def cluster(test_kubeconfig: str) -> Iterator[tuple[kube.Cluster, str]]:
    connected = kube.connect(test_kubeconfig)
    namespace = "taxi-job-test-" + secrets.token_hex(3)
    connected.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
    )
    try:
        yield connected, namespace
    finally:
        connected.core.delete_namespace(namespace)


def test_launch_wait_and_runs(cluster: tuple[kube.Cluster, str]) -> None:
    connected, ns = cluster
    script = f"echo hello; echo '{SUMMARY}' > /dev/termination-log"
    connected.batch.create_namespaced_cron_job(ns, cronjob(ns, script))
    lines: list[str] = []
    progress: list[launcher.Progress] = []

    job = launcher.launch(connected.batch, ns, "infer", settings={"TAXI_JOB_INPUT": "x"})
    result = launcher.wait(
        connected.batch,
        connected.core,
        ns,
        job.metadata.name,
        timeout=240,
        on_log=lines.append,
        on_progress=progress.append,
    )

    assert result.state == "succeeded"
    # Forward only, though the pod ends a moment before the Job controller counts it.
    order = ["pending", "running", "succeeded"]
    states = [p.state for p in progress]
    assert states == sorted(states, key=order.index), [(p.state, p.pod) for p in progress]
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


def watch_jobs(
    cluster: kube.Cluster, ns: str, done: Callable[[dict[str, set[str]]], bool], deadline_s: float
) -> dict[str, set[str]]:
    """Follow the namespace's Jobs (a watch, no polling) until ``done`` holds for what was
    seen: the names of the Jobs ``succeeded`` and ``deleted``."""
    seen: dict[str, set[str]] = {"succeeded": set(), "deleted": set()}
    end = time.monotonic() + deadline_s
    while not done(seen):
        left = end - time.monotonic()
        assert left > 0, f"gave up waiting after {deadline_s:g}s; saw {seen}"
        for event in kubernetes.watch.Watch().stream(
            cluster.batch.list_namespaced_job, ns, timeout_seconds=max(1, int(left))
        ):
            job = event["object"]
            if event["type"] == "DELETED":
                seen["deleted"].add(job.metadata.name)
            elif any(
                c.type == "Complete" and c.status == "True" for c in (job.status.conditions or [])
            ):
                seen["succeeded"].add(job.metadata.name)
            if done(seen):
                break
    return seen


def test_a_manual_run_outlives_the_cronjobs_history_until_its_ttl(
    cluster: tuple[kube.Cluster, str],
) -> None:
    """The CronJob controller trims its history (one successful Job kept) at each scheduled
    run; it must not take the manual runs with it. They go by their own TTL."""
    connected, ns = cluster
    script = f"echo '{SUMMARY}' > /dev/termination-log"
    connected.batch.create_namespaced_cron_job(ns, cronjob(ns, script, every_minute=True))

    kept = launcher.launch(connected.batch, ns, "infer").metadata.name
    brief = launcher.launch(connected.batch, ns, "infer", ttl=5).metadata.name
    for name in (kept, brief):
        launcher.wait(connected.batch, connected.core, ns, name, timeout=240)

    def scheduled(names: set[str]) -> set[str]:
        return {n for n in names if "-manual-" not in n}

    # Two scheduled runs succeed after the manual ones, and the history of one drops the first.
    seen = watch_jobs(
        connected,
        ns,
        lambda seen: (
            len(scheduled(seen["succeeded"])) >= 2
            and bool(scheduled(seen["deleted"]))
            and brief in seen["deleted"]
        ),
        deadline_s=240,
    )

    runs = {run.name: run for run in list_runs(connected.batch, connected.core, ns)}
    assert kept in runs, f"the manual run was deleted; saw {seen}"
    assert (runs[kept].trigger, runs[kept].state) == ("manual", "succeeded")
    assert runs[kept].summary["rows_predicted"] == 5
    assert brief not in runs  # its TTL of 5 s
