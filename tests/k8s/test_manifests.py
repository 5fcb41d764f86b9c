"""What matters in the rendered manifests, read from ``kubectl kustomize .``."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from job import __version__, journal
from job.cli import all_commands
from job.errors import (
    EXIT_BAD_INPUT,
    EXIT_NO_MODEL,
    EXIT_STOPPED,
    EXIT_TRANSIENT,
    EXIT_UNEXPECTED,
)

from .conftest import ROOT, Manifest, job_spec, pod_spec

DATA_MOUNT = "/var/lib/taxi-job"
CLAIM = "taxi-job-data"
CONFIGMAP = "taxi-job-config"
SCHEDULED = {"train": "0 0 * * 0", "infer": "* * * * *"}
TEMPLATES = ("seed-sample-data", "fetch-data", "infer-backlog", "models")

GetObject = Callable[[str, str], Manifest]


def leaf_commands() -> dict[str, click.Command]:
    """Every command that runs, a group's as ``models list``."""
    found: dict[str, click.Command] = {}
    for name, command in all_commands().items():
        if isinstance(command, click.Group):
            found.update({f"{name} {sub}": c for sub, c in command.commands.items()})
        else:
            found[name] = command
    return found


def cli_envvars() -> dict[str, set[str]]:
    """Each ``TAXI_JOB_*`` variable the CLI reads, and the commands that read it."""
    found: dict[str, set[str]] = {}
    for name, command in leaf_commands().items():
        for param in command.params:
            envvars = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
            for envvar in envvars:
                if envvar:
                    found.setdefault(envvar, set()).add(name)
    return found


def container_env(container: Manifest, by_kind_name: GetObject) -> dict[str, str]:
    """The environment a container gets: its ConfigMaps (envFrom), then its own env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        configmap = by_kind_name("ConfigMap", source["configMapRef"]["name"])
        env.update(configmap["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "")  # valueFrom: known only in the cluster
    return env


def containers(workload: Manifest) -> list[Manifest]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_renders_every_object_in_the_namespace(manifests: list[Manifest]) -> None:
    kinds = sorted((m["kind"], m["metadata"]["name"]) for m in manifests)
    assert ("Namespace", "taxi-job") in kinds
    assert ("PersistentVolumeClaim", CLAIM) in kinds
    assert ("ConfigMap", CONFIGMAP) in kinds
    assert {("CronJob", name) for name in (*SCHEDULED, *TEMPLATES)} <= set(kinds)
    for manifest in manifests:
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == "taxi-job", manifest["metadata"]


def test_namespace_enforces_the_restricted_pod_security_standard(by_kind_name: GetObject) -> None:
    labels = by_kind_name("Namespace", "taxi-job")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize(("name", "schedule"), sorted(SCHEDULED.items()))
def test_schedules(by_kind_name: GetObject, name: str, schedule: str) -> None:
    spec = by_kind_name("CronJob", name)["spec"]
    assert spec["schedule"] == schedule
    assert spec["timeZone"] == "Etc/UTC"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec.get("suspend", False) is False
    assert spec["startingDeadlineSeconds"] >= 10
    assert spec["successfulJobsHistoryLimit"] >= 1
    assert spec["failedJobsHistoryLimit"] >= 1


@pytest.mark.parametrize("name", TEMPLATES)
def test_one_off_templates_never_run_by_themselves(by_kind_name: GetObject, name: str) -> None:
    assert by_kind_name("CronJob", name)["spec"]["suspend"] is True


def test_one_image_set_once_through_kustomize(workloads: list[Manifest]) -> None:
    kustomization = yaml.safe_load((ROOT / "kustomization.yaml").read_text(encoding="utf-8"))
    (entry,) = kustomization["images"]
    expected = f"{entry.get('newName', entry['name'])}:{entry['newTag']}"
    images = {c["image"] for w in workloads for c in containers(w)}
    assert images == {expected}


@pytest.mark.parametrize("name", [*SCHEDULED, *TEMPLATES])
def test_every_workload_mounts_the_one_claim_at_the_same_path(
    manifests: list[Manifest], by_kind_name: GetObject, name: str
) -> None:
    claims = [m for m in manifests if m["kind"] == "PersistentVolumeClaim"]
    assert [c["metadata"]["name"] for c in claims] == [CLAIM]
    assert claims[0]["spec"]["accessModes"] == ["ReadWriteOnce"]

    workload = by_kind_name("CronJob", name)
    volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
    (data,) = [n for n, v in volumes.items() if "persistentVolumeClaim" in v]
    assert volumes[data]["persistentVolumeClaim"]["claimName"] == CLAIM
    for container in containers(workload):
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts[data] == DATA_MOUNT
        # the root filesystem is read-only: /tmp is the one writable place besides the data
        assert "emptyDir" in volumes[next(n for n, p in mounts.items() if p == "/tmp")]


def test_configured_paths_lie_on_the_volume(by_kind_name: GetObject) -> None:
    data = by_kind_name("ConfigMap", CONFIGMAP)["data"]
    for key in (
        "TAXI_JOB_TRAIN_DATA",
        "TAXI_JOB_EVAL_DATA",
        "TAXI_JOB_ARTIFACTS",
        "TAXI_JOB_INPUT",
        "TAXI_JOB_PREDICTIONS",
    ):
        assert data[key].startswith(DATA_MOUNT + "/"), key
    assert data["TAXI_JOB_TERMINATION_LOG"] == "/dev/termination-log"


def test_pods_on_a_readwriteonce_claim_follow_each_other(workloads: list[Manifest]) -> None:
    """Every pod that mounts the claim carries the label its podAffinity selects, so it is
    co-located with any other such pod, and the first one can schedule (self-match)."""
    for workload in workloads:
        spec = pod_spec(workload)
        if not any("persistentVolumeClaim" in v for v in spec["volumes"]):
            continue
        labels = job_spec(workload)["template"]["metadata"]["labels"]
        (term,) = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        selector = term["labelSelector"]["matchLabels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]


def test_labels_reach_the_pod_templates(workloads: list[Manifest]) -> None:
    for workload in workloads:
        name = workload["metadata"]["name"]
        for labels in (
            workload["metadata"]["labels"],
            workload["spec"]["jobTemplate"]["metadata"]["labels"],
            job_spec(workload)["template"]["metadata"]["labels"],
        ):
            assert labels["app.kubernetes.io/name"] == "taxi-job"
            assert labels["app.kubernetes.io/part-of"] == "taxi-job"
            assert labels["app.kubernetes.io/component"] == name
            assert labels["app.kubernetes.io/version"] == __version__


def dockerfile_user() -> tuple[int, int]:
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    (user,) = [line.split()[1] for line in lines if line.startswith("USER ")]
    uid, gid = user.split(":")
    return int(uid), int(gid)


def test_security_settings(workloads: list[Manifest]) -> None:
    uid, gid = dockerfile_user()
    for workload in workloads:
        spec = pod_spec(workload)
        assert spec["restartPolicy"] == "Never"
        assert spec["automountServiceAccountToken"] is False
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid)
        assert pod["fsGroup"] == gid
        # Always would chown every file at each pod start, changing the ctime in the
        # inputs' fingerprints: infer would predict everything again every minute.
        assert pod["fsGroupChangePolicy"] == "OnRootMismatch"
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys()
            assert {"cpu", "memory"} <= resources["limits"].keys()


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 2**20


def test_training_fits_in_one_gibibyte(by_kind_name: GetObject) -> None:
    (container,) = containers(by_kind_name("CronJob", "train"))
    assert mebibytes(container["resources"]["limits"]["memory"]) <= 1024


@pytest.mark.parametrize("name", sorted(SCHEDULED))
def test_pod_failure_policy_uses_the_cli_exit_codes(by_kind_name: GetObject, name: str) -> None:
    spec = job_spec(by_kind_name("CronJob", name))
    (container,) = containers(by_kind_name("CronJob", name))
    rules = spec["podFailurePolicy"]["rules"]
    fail_now = [r for r in rules if r["action"] == "FailJob"]
    (rule,) = fail_now
    assert rule["onExitCodes"] == {
        "containerName": container["name"],
        "operator": "In",
        "values": sorted([EXIT_BAD_INPUT, EXIT_NO_MODEL]),
    }
    # transient and unexpected failures are left to backoffLimit
    assert EXIT_TRANSIENT not in rule["onExitCodes"]["values"]
    assert EXIT_UNEXPECTED not in rule["onExitCodes"]["values"]
    assert spec["backoffLimit"] >= 1
    ignore = [r for r in rules if r["action"] == "Ignore"]
    # not the job's fault: an eviction or preemption, and a pod deleted (SIGTERM, 143)
    assert ignore == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {
            "action": "Ignore",
            "onExitCodes": {
                "containerName": container["name"],
                "operator": "In",
                "values": [EXIT_STOPPED],
            },
        },
    ]
    assert spec["activeDeadlineSeconds"] > 0


def test_every_taxi_job_variable_is_a_cli_option(
    workloads: list[Manifest], by_kind_name: GetObject
) -> None:
    # ...or who runs, from the downward API, for the run journal (not an option).
    known = {**cli_envvars(), **dict.fromkeys(journal.JOB_ENV)}
    set_somewhere = set(by_kind_name("ConfigMap", CONFIGMAP)["data"])
    for workload in workloads:
        for container in containers(workload):
            set_somewhere |= set(container_env(container, by_kind_name))
    taxi_job = {v for v in set_somewhere if v.startswith("TAXI_JOB_")}
    assert taxi_job, "the manifests set no TAXI_JOB_ variable"
    assert taxi_job <= known.keys(), sorted(taxi_job - known.keys())


def test_every_container_runs_a_command_with_its_required_options(
    workloads: list[Manifest], by_kind_name: GetObject
) -> None:
    for workload in workloads:
        for container in containers(workload):
            command_name, *args = container["args"]
            command = all_commands()[command_name]
            if isinstance(command, click.Group):  # `models list`: the subcommand's options
                command = command.commands[args[0]]
                args = args[1:]
            env = container_env(container, by_kind_name)
            ctx = click.Context(command)
            # parse as the container would: its args, then its environment
            with pytest.MonkeyPatch.context() as patch:
                for key, value in env.items():
                    patch.setenv(key, value)
                command.parse_args(ctx, list(args))
            for param in command.params:
                if param.required:
                    assert ctx.params.get(param.name) not in (None, ()), (
                        f"{workload['metadata']['name']}/{container['name']}: {param.name}"
                    )


def test_dockerfile_runs_the_cli_as_a_numeric_user() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["taxi-job"]' in text
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim-bookworm$", text, re.MULTILINE)
    uid, gid = dockerfile_user()
    assert uid >= 10000 and gid >= 10000


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_lock_pins_every_runtime_dependency() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project: dict[str, Any] = pyproject["project"]
    wanted = {requirement_name(d) for d in project["dependencies"]}
    wanted |= {requirement_name(d) for d in project["optional-dependencies"]["http"]}
    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    pinned = {
        m.group(1).lower(): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, re.MULTILINE)
    }
    assert wanted <= pinned.keys(), sorted(wanted - pinned.keys())
    assert "--hash=sha256:" in lock


def test_rwx_component_only_patches(
    render: Callable[[Path], str], overlay: Callable[..., Path], manifests: list[Manifest]
) -> None:
    rwx = [d for d in yaml.safe_load_all(render(overlay(components=["components/rwx"]))) if d]
    assert len(rwx) == len(manifests)
    (claim,) = [m for m in rwx if m["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for cronjob in (m for m in rwx if m["kind"] == "CronJob"):
        assert "affinity" not in pod_spec(cronjob)
