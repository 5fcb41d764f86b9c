"""scripts/*.sh cannot make a cluster here: run them against stand-ins for kubectl, kind,
docker and minikube that record their arguments, and check what they would do."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, Manifest

STUB = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$CALLS"
case "$(basename "$0") $1" in
    "kind get") echo other-cluster ;;
esac
exit 0
"""


@pytest.fixture
def fake_tools(tmp_path: Path) -> Callable[[str], list[list[str]]]:
    """``fake_tools("scripts/kind.sh")`` runs a script with recording stand-ins first on
    PATH and returns the commands it ran."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("kubectl", "kind", "docker", "podman", "minikube"):
        stub = bin_dir / name
        stub.write_text(STUB, encoding="utf-8")
        stub.chmod(0o755)
    calls = tmp_path / "calls"

    def run(script: str) -> list[list[str]]:
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls)}
        env.pop("KIND_EXPERIMENTAL_PROVIDER", None)
        result = subprocess.run(["bash", str(ROOT / script)], env=env, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        return [shlex.split(line) for line in calls.read_text(encoding="utf-8").splitlines()]

    return run


def kustomize_image() -> str:
    kustomization = yaml.safe_load((ROOT / "kustomization.yaml").read_text(encoding="utf-8"))
    (entry,) = kustomization["images"]
    return f"{entry.get('newName', entry['name'])}:{entry['newTag']}"


def started_jobs(calls: list[list[str]]) -> list[str]:
    return [arg.removeprefix("--from=cronjob/") for call in calls for arg in call
            if arg.startswith("--from=cronjob/")]


def test_first_run_applies_then_seeds_trains_and_predicts(
    fake_tools: Callable[[str], list[list[str]]], manifests: list[Manifest]
) -> None:
    calls = fake_tools("scripts/first-run.sh")
    assert calls[0] == ["kubectl", "apply", "-k", "."]
    assert started_jobs(calls) == ["seed-sample-data", "train", "infer"]
    cronjobs = {m["metadata"]["name"] for m in manifests if m["kind"] == "CronJob"}
    assert set(started_jobs(calls)) <= cronjobs
    waits = [c for c in calls if c[:2] == ["kubectl", "-n"] and "wait" in c]
    assert len(waits) == 3


def test_kind_builds_and_loads_the_image_the_manifests_name(
    fake_tools: Callable[[str], list[list[str]]],
) -> None:
    calls = fake_tools("scripts/kind.sh")
    assert ["kind", "create", "cluster", "--name", "taxi-job"] in calls
    (build,) = [c for c in calls if c[:2] == ["docker", "build"]]
    # a name without a registry is docker.io/library/ to the nodes' containerd
    assert build[build.index("-t") + 1] == f"docker.io/library/{kustomize_image()}"
    assert any(c[:3] == ["kind", "load", "image-archive"] for c in calls)
    assert started_jobs(calls) == ["seed-sample-data", "train", "infer"]


def test_minikube_builds_the_image_the_manifests_name(
    fake_tools: Callable[[str], list[list[str]]],
) -> None:
    calls = fake_tools("scripts/minikube.sh")
    (build,) = [c for c in calls if c[:3] == ["minikube", "image", "build"]]
    assert build[build.index("-t") + 1] == kustomize_image()
    assert started_jobs(calls) == ["seed-sample-data", "train", "infer"]
