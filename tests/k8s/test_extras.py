"""The manifests applied by hand, outside the kustomization: the launcher example Job
(manifests/jobs/launch-train.yaml) and the volume shell (manifests/tools/volume-shell.yaml).
Kustomize does not touch them, so they name the image themselves and carry their own
namespace: checked here against kustomization.yaml, the checkers, and the restricted
Pod Security Standard the namespace enforces."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, Manifest, pod_spec
from .test_checkers import KUBERNETES_VERSIONS, run
from .test_manifests import CLAIM, DATA_MOUNT, dockerfile_user

#: Each extra manifest, and the name of its one container.
EXTRAS = {
    "manifests/jobs/launch-train.yaml": "launcher",
    "manifests/tools/volume-shell.yaml": "shell",
}
SHELL = "manifests/tools/volume-shell.yaml"

Tool = Callable[[str], str]
GetObject = Callable[[str, str], Manifest]


def load(path: str) -> Manifest:
    return yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def the_container(path: str) -> Manifest:
    (container,) = pod_spec(load(path))["containers"]
    assert container["name"] == EXTRAS[path]
    return container  # type: ignore[no-any-return]


def kustomization_image() -> str:
    kustomization = yaml.safe_load((ROOT / "kustomization.yaml").read_text(encoding="utf-8"))
    (entry,) = kustomization["images"]
    return f"{entry.get('newName', entry['name'])}:{entry['newTag']}"


def test_extras_are_not_applied_with_the_kustomization() -> None:
    kustomization = yaml.safe_load((ROOT / "kustomization.yaml").read_text(encoding="utf-8"))
    assert not set(EXTRAS) & set(kustomization["resources"])


@pytest.mark.parametrize("path", EXTRAS)
def test_extras_name_the_kustomization_image_in_its_namespace(path: str) -> None:
    assert the_container(path)["image"] == kustomization_image()
    assert load(path)["metadata"]["namespace"] == "taxi-job"


@pytest.mark.parametrize("path", EXTRAS)
def test_set_image_points_an_extra_at_another_build(tool: Tool, path: str) -> None:
    """The documented way to run it with the image `kustomize edit set image` chose."""
    other = "registry.example.com/taxi-job@sha256:" + "0" * 64
    result = run(
        tool("kubectl"),
        "set",
        "image",
        "--local",
        "-f",
        path,
        f"{EXTRAS[path]}={other}",
        "-o",
        "yaml",
    )
    assert result.returncode == 0, result.stderr
    (container,) = pod_spec(yaml.safe_load(result.stdout))["containers"]
    assert container["image"] == other


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", EXTRAS)
def test_extras_validate_strictly(tool: Tool, path: str, version: str) -> None:
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_finds_no_failure_in_the_extras(
    tool: Tool, rendered_text: str, tmp_path: Path
) -> None:
    # With the kustomization, whose NetworkPolicy covers their pods too (CKV2_K8S_6).
    together = tmp_path / "with-extras.yaml"
    texts = [rendered_text, *((ROOT / p).read_text(encoding="utf-8") for p in EXTRAS)]
    together.write_text("\n---\n".join(texts), encoding="utf-8")
    result = run(
        tool("checkov"),
        "--framework",
        "kubernetes",
        "--file",
        str(together),
        "--output",
        "json",
        "--skip-download",
        "--compact",
    )
    report = json.loads(result.stdout)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0
    checked = {c["resource"] for c in report["results"]["passed_checks"]}
    assert "Pod.taxi-job.volume-shell" in checked
    # launch-train has a generateName: checkov names it by its labels
    assert any(r.startswith("Job.taxi-job.") and "launcher" in r for r in checked)
    for check in report["results"]["skipped_checks"]:
        assert len(check["check_result"].get("suppress_comment", "")) > 10, check["check_id"]


@pytest.mark.parametrize("path", EXTRAS)
def test_extras_meet_the_restricted_standard(path: str) -> None:
    uid, gid = dockerfile_user()
    spec = pod_spec(load(path))
    assert spec["restartPolicy"] == "Never"
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    container = the_container(path)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    volumes = {v["name"]: v for v in spec["volumes"]}
    (tmp,) = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp]
    assert not any(key in volume for volume in volumes.values() for key in ("hostPath", "secret"))


def test_volume_shell_holds_the_claim_as_the_cronjobs_do(by_kind_name: GetObject) -> None:
    shell = load(SHELL)
    spec = pod_spec(shell)
    train = pod_spec(by_kind_name("CronJob", "train"))
    # no token, no API calls; the volume's group, as every workload
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["fsGroup"] == train["securityContext"]["fsGroup"]
    # the ReadWriteOnce claim: the same podAffinity, and the label it selects
    assert spec["affinity"] == train["affinity"]
    (term,) = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"].items() <= shell["metadata"]["labels"].items()
    container = the_container(SHELL)
    volumes = {v["name"]: v for v in spec["volumes"]}
    (data,) = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == DATA_MOUNT]
    assert volumes[data] == {"name": data, "persistentVolumeClaim": {"claimName": CLAIM}}
    # not the taxi-job entry point: a process that waits, from the base image
    assert container["command"] == ["sleep", "3600"]
    assert "args" not in container
