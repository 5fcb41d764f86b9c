"""components/monitoring on a real cluster: the Pushgateway Deployment runs (restricted Pod
Security, non-root), the CronJobs' pods push their metrics to it at the end of each run,
success or failure, and the test reads them back from the Pushgateway's Service.

The test cluster has no registry and no DNS (../shared/k8s-local/README.md):
- the component's ``prom/pushgateway`` cannot be pulled: .ci/build-pushgateway-image builds
  the same program from Debian's binary, loaded with ``load-image``, and the overlay points
  the component at it with an ``images:`` entry (TAXI_JOB_TEST_PUSHGATEWAY_IMAGE);
- the component's URL ``http://taxi-job-pushgateway:9091`` resolves nowhere: the CronJobs'
  pods get a ``hostAliases`` entry mapping that name to the Service's ClusterIP, so the URL
  the component ships is the one tested (docs/monitoring.md shows users the same).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from e2e import (
    IMAGE,
    OWN_NAMESPACE_MARKS,
    SUSPEND_INFER,
    Obj,
    create_job,
    job_ended,
    kubectl,
    own_namespace,
    run_job,
    small_requests,
    write_overlay,
)
from k8s.conftest import missing
from prometheus_client.parser import text_string_to_metric_families

pytestmark = OWN_NAMESPACE_MARKS

PUSHGATEWAY_IMAGE = os.environ.get("TAXI_JOB_TEST_PUSHGATEWAY_IMAGE", "")
SERVICE = "taxi-job-pushgateway"
#: The CronJobs whose pods this test runs, each given the hostAliases entry.
CRONJOBS = ("seed-sample-data", "train", "infer")


def overlay(directory: Path, namespace: str) -> Path:
    written = write_overlay(
        directory,
        namespace,
        IMAGE,
        components=["components/monitoring"],
        patches=[SUSPEND_INFER, small_requests("train")],
    )
    kustomization = yaml.safe_load((written / "kustomization.yaml").read_text(encoding="utf-8"))
    name, _, tag = PUSHGATEWAY_IMAGE.rpartition(":")
    kustomization["images"].append({"name": "prom/pushgateway", "newName": name, "newTag": tag})
    (written / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    return written


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[str]:
    if not PUSHGATEWAY_IMAGE:
        missing("TAXI_JOB_TEST_PUSHGATEWAY_IMAGE names no Pushgateway image on the cluster")
    with own_namespace(overlay, tmp_path) as name:
        yield name


def pushed(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The Pushgateway's exposition, as Prometheus would scrape it."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (s.name, frozenset((k, v) for k, v in s.labels.items() if v and k != "instance")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("taxi_job_")
    }


def group(command: str, **labels: str) -> frozenset[tuple[str, str]]:
    return frozenset({"job": "taxi-job", "command": command, **labels}.items())


def summary_of(namespace: str, job: str, container: str) -> Obj:
    pods = json.loads(
        kubectl("-n", namespace, "get", "pods", "-l", f"job-name={job}", "-o", "json")
    )["items"]
    for status in pods[-1]["status"]["containerStatuses"]:
        if status["name"] == container:
            message = status["state"]["terminated"]["message"]
            return json.loads(message)  # type: ignore[no-any-return]
    raise AssertionError(f"no {container} container in {job}'s pod")


def test_the_cronjobs_pods_push_to_the_in_cluster_pushgateway(namespace: str) -> None:
    kubectl("-n", namespace, "rollout", "status", f"deployment/{SERVICE}", "--timeout=180s")
    pod = json.loads(
        kubectl(
            "-n",
            namespace,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=pushgateway",
            "-o",
            "json",
        )  # fmt: skip
    )["items"][0]
    assert pod["spec"]["securityContext"]["runAsUser"] == 65534
    ip = json.loads(kubectl("-n", namespace, "get", "service", SERVICE, "-o", "json"))["spec"][
        "clusterIP"
    ]
    alias = [{"ip": ip, "hostnames": [SERVICE]}]
    for cronjob in CRONJOBS:
        kubectl(
            "-n", namespace, "patch", "cronjob", cronjob, "--type=json", "-p",
            json.dumps([{
                "op": "add",
                "path": "/spec/jobTemplate/spec/template/spec/hostAliases",
                "value": alias,
            }]),
        )  # fmt: skip
    config = json.loads(
        kubectl("-n", namespace, "get", "configmap", "taxi-job-config", "-o", "json")
    )
    assert config["data"]["TAXI_JOB_PUSHGATEWAY"] == f"http://{SERVICE}:9091"

    run_job(namespace, from_cronjob="seed-sample-data", name="seed")
    run_job(namespace, from_cronjob="train", name="train-1")
    run_job(namespace, from_cronjob="infer", name="infer-1")
    trained = summary_of(namespace, "train-1", "train")
    inferred = summary_of(namespace, "infer-1", "infer")
    # a training on a month that is not there: bad input, the Job fails at once
    kubectl(
        "-n", namespace, "patch", "configmap", "taxi-job-config", "--type=merge", "-p",
        json.dumps({"data": {"TAXI_JOB_TRAIN_DATA": "/var/lib/taxi-job/data/missing.parquet"}}),
    )  # fmt: skip
    failed = job_ended(namespace, create_job(namespace, from_cronjob="train", name="train-2"))
    assert failed["status"].get("failed")

    # The node is the host: kube-proxy's rules take its own connections to a ClusterIP too.
    url = f"http://{ip}:9091"
    deadline = time.monotonic() + 60
    series = pushed(url)
    while (("taxi_job_last_exit_code", group("train")), 2) not in series.items():
        assert time.monotonic() < deadline, f"the failed training's push never came: {series}"
        time.sleep(2)
        series = pushed(url)
    assert series[("taxi_job_last_exit_code", group("sample-data"))] == 0
    assert series[("taxi_job_train_rows_read", group("train"))] == trained["rows_read"]
    assert series[("taxi_job_train_rmse_seconds", group("train", dataset="eval"))] == (
        pytest.approx(trained["rmse_eval"] * 60, rel=1e-12)
    )
    version = trained["model_version"]
    assert series[("taxi_job_current_model_info", group("infer", version=version))] == 1
    assert series[("taxi_job_infer_rows_predicted", group("infer"))] == inferred["rows_predicted"]
    assert series[("taxi_job_last_exit_code", group("infer"))] == 0
    # the seeded input has drop-off times: the model's live error, from the pod's summary
    assert inferred["rows_scored"] > 0
    assert series[("taxi_job_infer_live_rmse_seconds", group("infer"))] == pytest.approx(
        inferred["rmse_live"] * 60, rel=1e-12
    )
    # the failure kept the success's time and counts as the first failure in a row
    assert series[("taxi_job_consecutive_failures", group("train"))] >= 1
    success = series[("taxi_job_last_success_timestamp_seconds", group("train"))]
    assert series[("taxi_job_last_failure_timestamp_seconds", group("train"))] > success
    # grouped by command, never by pod: one group per command whatever the pods' names
    commands = {
        dict(labels)["command"] for name, labels in series if name == "taxi_job_last_exit_code"
    }
    assert commands == {"sample-data", "train", "infer"}
