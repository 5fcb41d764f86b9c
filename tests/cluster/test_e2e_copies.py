"""Two copies of the project in one namespace under kustomize ``namePrefix``es (``blue-``,
``green-``), on the real cluster: the launcher finds a command's CronJob by its label,
refuses to guess between the copies, and ``--prefix`` chooses one for ``launch`` and
``runs``; each copy's launcher ServiceAccount may list CronJobs and get none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from e2e import (
    IMAGE,
    KUBECONFIG,
    OWN_NAMESPACE_MARKS,
    SUSPEND_INFER,
    kubectl,
    own_namespace,
    run_job,
    write_overlay,
)

pytestmark = OWN_NAMESPACE_MARKS

TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))


def copy_overlay(prefix: str) -> object:
    def overlay(directory: Path, namespace: str) -> Path:
        path = write_overlay(directory / prefix, namespace, IMAGE, patches=[SUSPEND_INFER])
        body = yaml.safe_load((path / "kustomization.yaml").read_text(encoding="utf-8"))
        body["namePrefix"] = prefix
        (path / "kustomization.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
        return path

    return overlay


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[str]:
    blue, green = copy_overlay("blue-"), copy_overlay("green-")
    with own_namespace(blue, tmp_path) as name:  # type: ignore[arg-type]
        # The same namespace, a second copy: its Namespace object is the same one.
        kubectl("apply", "-k", str(green(tmp_path / "overlay", name)))  # type: ignore[operator]
        # The blue copy's volume gets its months (green's stays empty: it is only launched).
        run_job(name, from_cronjob="blue-seed-sample-data", name="blue-seed")
        yield name


def taxi_job(namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TAXI_JOB_KUBECONFIG": KUBECONFIG, "TAXI_JOB_NAMESPACE": namespace}
    return subprocess.run(
        [TAXI_JOB, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_two_prefixed_copies_in_one_namespace(namespace: str) -> None:
    cronjobs = kubectl("-n", namespace, "get", "cronjobs", "-o", "name").split()
    assert "cronjob.batch/blue-train" in cronjobs and "cronjob.batch/green-train" in cronjobs

    refused = taxi_job(namespace, "launch", "train")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip() == (
        f'taxi-job: error: 2 CronJobs run train in namespace "{namespace}": blue-train, '
        "green-train; choose one with --prefix (one of 'blue-', 'green-')"
    )

    launched = taxi_job(
        namespace, "launch", "train", "--prefix", "blue-", "--wait", "--output-format", "json"
    )
    assert launched.returncode == 0, launched.stderr
    trained = json.loads(launched.stdout.splitlines()[-1])
    job = trained["job"]
    assert job.startswith("blue-train-manual-") and trained["state"] == "succeeded"
    body = json.loads(kubectl("-n", namespace, "get", "job", job, "-o", "json"))
    assert [o["name"] for o in body["metadata"]["ownerReferences"]] == ["blue-train"]

    # launch models and launch infer: the same lookup, refusal and choice. The blue copy's
    # registry lists the model its training made, on its own volume.
    refused = taxi_job(namespace, "launch", "models", "list")
    assert refused.returncode == 2 and "2 CronJobs run models" in refused.stderr, refused.stderr
    listed = taxi_job(
        namespace, "launch", "models", "list", "--prefix", "blue-", "--output-format", "json"
    )
    assert listed.returncode == 0, listed.stderr
    models = json.loads(listed.stdout.splitlines()[-1])
    assert models["job"].startswith("blue-models-manual-")
    assert [v["version"] for v in models["result"]] == [trained["model_version"]]
    refused = taxi_job(namespace, "launch", "infer")
    assert refused.returncode == 2 and "2 CronJobs run infer" in refused.stderr, refused.stderr
    inferred = taxi_job(
        namespace, "launch", "infer", "--prefix", "green-", "--output-format", "json"
    )
    assert inferred.returncode == 0, inferred.stderr
    infer_job = json.loads(inferred.stdout.splitlines()[-1])["job"]
    body = json.loads(kubectl("-n", namespace, "get", "job", infer_job, "-o", "json"))
    assert [o["name"] for o in body["metadata"]["ownerReferences"]] == ["green-infer"]

    blue = [(models["job"], "models"), (job, "train")]
    for prefix, expected in (("blue-", blue), ("green-", [(infer_job, "infer")])):
        listed = taxi_job(namespace, "runs", "--prefix", prefix, "--output-format", "json")
        assert listed.returncode == 0, listed.stderr
        runs = json.loads(listed.stdout.splitlines()[-1])["runs"]
        assert [(r["name"], r["command"]) for r in runs] == expected

    # Each copy's launcher ServiceAccount: list CronJobs (the lookup by label), no get.
    account = f"system:serviceaccount:{namespace}:blue-launcher"
    for verb, answer in (("list", "yes"), ("get", "no")):
        result = subprocess.run(
            ["kubectl", "--kubeconfig", KUBECONFIG, "-n", namespace, "auth", "can-i", verb,
             "cronjobs.batch", "--as", account],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.stdout.strip() == answer, (verb, result.stdout, result.stderr)
