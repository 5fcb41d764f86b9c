"""The launcher's Role grants exactly the API calls it makes (recorded by the stand-in during
every flow), and the example Job runs it as that ServiceAccount, restricted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kmock
import yaml
from click.testing import CliRunner
from kfake import CRONJOBS, JOBS, FakeCluster, FakeController, make_cronjob, make_job, make_pod

from job.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def role_grants() -> set[tuple[str, str, str]]:
    docs = list(yaml.safe_load_all((ROOT / "manifests/launcher-rbac.yaml").read_text()))
    [role] = [d for d in docs if d["kind"] == "Role"]
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def verb_of(request: Any) -> tuple[str, str, str]:
    resource = request.resource.plural
    if request.subresource:
        resource += "/" + request.subresource
    if request.method == "POST":
        verb = "create"
    elif request.method != "GET":
        verb = request.method.lower()
    elif request.params.get("watch") == "true":
        verb = "watch"
    else:
        verb = "get" if request.name else "list"
    return (request.resource.group, resource, verb)


def test_the_role_grants_what_the_launcher_uses_and_nothing_else(
    fake: FakeCluster, kubeconfig: Path
) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))
    fake.put(JOBS, make_job("train-1", state="succeeded"))
    fake.put(kmock.resource("", "v1", "pods"), make_pod("train-1", message="{}"))
    fake.react(("get", kmock.resource("v1/pods"), kmock.subresource("log")), b"ok\n")
    runner = CliRunner()

    with FakeController(fake, message="{}"):
        assert runner.invoke(cli, ["launch", "train", "--logs"]).exit_code == 0
    assert runner.invoke(cli, ["runs"]).exit_code == 0

    used = {verb_of(r) for r in fake.requests() if r.resource is not None}
    assert used == role_grants()


def test_the_service_account_is_bound_to_the_role() -> None:
    docs = {
        d["kind"]: d
        for d in yaml.safe_load_all((ROOT / "manifests/launcher-rbac.yaml").read_text())
    }
    binding = docs["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": docs["Role"]["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": docs["ServiceAccount"]["metadata"]["name"]}
    ]


def test_rbac_is_applied_and_the_example_job_is_not() -> None:
    resources = yaml.safe_load((ROOT / "kustomization.yaml").read_text())["resources"]
    assert "manifests/launcher-rbac.yaml" in resources
    assert not any("launch-" in r for r in resources)


def test_the_example_job_launches_train_as_the_launcher_restricted() -> None:
    job = yaml.safe_load((ROOT / "manifests/jobs/launch-train.yaml").read_text())
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"][:3] == ["launch", "train", "--wait"]
    assert pod["serviceAccountName"] == "launcher"
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    # The launcher cannot be told to run anything but the CLI's launch.
    assert {c.get("name") for c in pod["containers"]} == {"launcher"}
