"""components/scale-out: training and the inference backlog as Indexed Jobs, checked like
the base (the same assertions on the rendered objects, strict schemas, checkov)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from job.errors import EXIT_BAD_INPUT, EXIT_NO_MODEL

from . import test_manifests as base
from .conftest import ROOT, Manifest, job_spec, pod_spec
from .test_checkers import KUBERNETES_VERSIONS

SHARDED = ("train", "infer-backlog")
INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
JOB_NAME = "metadata.labels['batch.kubernetes.io/job-name']"


@pytest.fixture
def variant(render: Callable[[Path], str], overlay: Callable[..., Path]) -> Callable[..., list]:
    """The manifests rendered with these components on top of the base."""

    def make(*components: str) -> list[Manifest]:
        text = render(overlay(components=list(components)))
        return [d for d in yaml.safe_load_all(text) if d]

    return make


def get(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    (found,) = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def env_of(workload: Manifest) -> dict[str, dict]:
    (container,) = pod_spec(workload)["containers"]
    return {item["name"]: item for item in container.get("env", [])}


def test_train_and_backlog_become_indexed_jobs_of_n_shards(variant, manifests) -> None:
    scaled = variant("components/scale-out")
    for name in SHARDED:
        spec = job_spec(get(scaled, "CronJob", name))
        assert spec["completionMode"] == "Indexed"
        env = env_of(get(scaled, "CronJob", name))
        # N in each place agrees, and the index is the pod's completion index
        assert spec["completions"] == spec["parallelism"] == int(env["TAXI_JOB_SHARDS"]["value"])
        assert spec["completions"] == 3
        assert env["TAXI_JOB_SHARD_INDEX"]["valueFrom"] == {"fieldRef": {"fieldPath": INDEX}}
        assert "TAXI_JOB_JOB_NAME" in env  # the base's env kept: the journal names the Job
        assert spec["backoffLimitPerIndex"] >= 1 and "backoffLimit" not in spec
        rules = spec["podFailurePolicy"]["rules"]
        base_rules = job_spec(get(manifests, "CronJob", name))["podFailurePolicy"]["rules"]
        # the base's rules kept, bad input and no model failing the index instead of the Job
        assert [r["action"] for r in base_rules] == ["FailJob", "Ignore", "Ignore"]
        assert [r["action"] for r in rules] == ["FailIndex", "Ignore", "Ignore"]
        assert rules[0]["onExitCodes"] == {
            **base_rules[0]["onExitCodes"],
            "values": [EXIT_BAD_INPUT, EXIT_NO_MODEL],
        }
        assert rules[1:] == base_rules[1:]
    train = job_spec(get(scaled, "CronJob", "train"))
    # one failed shard fails the training: there is no model without every partial
    assert train["maxFailedIndexes"] == 0
    assert env_of(get(scaled, "CronJob", "train"))["TAXI_JOB_RUN_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": JOB_NAME}
    }
    # backlog shards are independent: a bad file in one does not stop the others
    assert "maxFailedIndexes" not in job_spec(get(scaled, "CronJob", "infer-backlog"))


def test_one_number_sets_every_shard_count(render, tmp_path) -> None:
    """A copy of the component with another N in its one place (the training's
    completions): both Jobs run that many pods, each told that many shards. Numbers out of
    step would end the training green with nothing published."""
    component = yaml.safe_load((ROOT / "components/scale-out/kustomization.yaml").read_text())
    [train] = [p for p in component["patches"] if p["target"]["name"] == "train"]
    operations = yaml.safe_load(train["patch"])
    [completions] = [o for o in operations if o["path"] == "/spec/jobTemplate/spec/completions"]
    completions["value"] = 5
    train["patch"] = yaml.safe_dump(operations)
    copy = tmp_path / "my-scale-out"
    copy.mkdir()
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(component), encoding="utf-8")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {"resources": [os.path.relpath(ROOT, mine)], "components": ["../my-scale-out"]}
        ),
        encoding="utf-8",
    )

    scaled = [d for d in yaml.safe_load_all(render(mine)) if d]

    for name in SHARDED:
        spec = job_spec(get(scaled, "CronJob", name))
        shards = env_of(get(scaled, "CronJob", name))["TAXI_JOB_SHARDS"]["value"]
        assert (name, spec["completions"], spec["parallelism"], shards) == (name, 5, 5, "5")


def test_the_component_only_patches_the_two_jobs(variant, manifests) -> None:
    scaled = variant("components/scale-out")
    assert len(scaled) == len(manifests)
    for before in manifests:
        if before["metadata"]["name"] not in SHARDED:
            assert get(scaled, before["kind"], before["metadata"]["name"]) == before


@pytest.mark.parametrize(
    "components",
    [["components/scale-out"], ["components/scale-out", "components/rwx"]],
    ids=["alone", "with-rwx"],
)
def test_the_base_checks_hold_for_the_scaled_manifests(variant, components) -> None:
    """The same assertions as tests/k8s/test_manifests.py makes on the base."""
    scaled = variant(*components)
    workloads = [m for m in scaled if m["kind"] in ("CronJob", "Job", "Pod", "Deployment")]

    def by_kind_name(kind: str, name: str) -> Manifest:
        return get(scaled, kind, name)

    base.test_security_settings(workloads)
    base.test_labels_reach_the_pod_templates(workloads)
    base.test_every_taxi_job_variable_is_a_cli_option(workloads, by_kind_name)
    base.test_every_container_runs_a_command_with_its_required_options(workloads, by_kind_name)
    for name in SHARDED:
        spec = pod_spec(by_kind_name("CronJob", name))
        (claim,) = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
        assert claim["persistentVolumeClaim"]["claimName"] == base.CLAIM
    if "components/rwx" in components:
        for workload in workloads:
            assert "affinity" not in pod_spec(workload)
    else:
        base.test_pods_on_a_readwriteonce_claim_follow_each_other(workloads)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_scaled_manifests_validate_strictly(
    tool, variant, render, overlay, tmp_path, version
) -> None:
    rendered = tmp_path / "scaled.yaml"
    rendered.write_text(
        render(overlay(components=["components/scale-out", "components/rwx"])), encoding="utf-8"
    )
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, str(rendered)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_finds_no_failure_in_the_scaled_manifests(tool, render, overlay, tmp_path) -> None:
    rendered = tmp_path / "scaled.yaml"
    rendered.write_text(render(overlay(components=["components/scale-out"])), encoding="utf-8")
    result = subprocess.run(
        [
            tool("checkov"),
            "--framework",
            "kubernetes",
            "--file",
            str(rendered),
            "--output",
            "json",
            "--skip-download",
            "--compact",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    report = json.loads(result.stdout)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0
