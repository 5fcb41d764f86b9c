"""Fixtures for the checks of the image and the manifests: the checkers, and the
kustomization rendered once per session.

A check whose tool is missing is skipped with the reason, unless TAXI_JOB_REQUIRE_TOOLS=1
(CI sets it): then it fails, so that CI never passes by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
#: Where .ci/setup-tools puts the checkers, when they are not on PATH.
TOOLS_VENV = Path(os.environ.get("TAXI_JOB_TOOLS_VENV", "/opt/taxi-job-tools"))

Manifest = dict[str, Any]


def require_tools() -> bool:
    return os.environ.get("TAXI_JOB_REQUIRE_TOOLS", "") not in ("", "0")


def missing(reason: str) -> None:
    """Skip the test, or fail it where the tools are required."""
    if require_tools():
        pytest.fail(f"{reason} (TAXI_JOB_REQUIRE_TOOLS is set: run .ci/setup-tools)")
    pytest.skip(reason)


def find_tool(name: str) -> str:
    """The path of an executable: on PATH, beside this Python, or in the tools venv."""
    for candidate in (
        shutil.which(name),
        shutil.which(name, path=str(Path(sys.executable).parent)),
        shutil.which(name, path=str(TOOLS_VENV / "bin")),
    ):
        if candidate:
            return candidate
    missing(f"{name} is not installed")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    """``tool("checkov")``: the checker's path, or skip (fail in CI) when it is missing."""
    return find_tool


def kustomize(directory: Path) -> str:
    """``kubectl kustomize DIRECTORY``: the rendered YAML."""
    kubectl = find_tool("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="session")
def render() -> Callable[[Path], str]:
    """Render a kustomization directory to YAML text."""
    return kustomize


@pytest.fixture(scope="session")
def rendered_text() -> str:
    """``kubectl kustomize .``: what ``kubectl apply -k .`` would apply."""
    return kustomize(ROOT)


@pytest.fixture(scope="session")
def rendered_file(rendered_text: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rendered") / "taxi-job.yaml"
    path.write_text(rendered_text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def manifests(rendered_text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(rendered_text) if doc]


@pytest.fixture(scope="session")
def by_kind_name(manifests: list[Manifest]) -> Callable[[str, str], Manifest]:
    """``by_kind_name("CronJob", "train")``: one rendered object."""

    def get(kind: str, name: str) -> Manifest:
        found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
        return found[0]

    return get


def pod_spec(workload: Manifest) -> Manifest:
    """The pod spec of a CronJob, a Job or a Pod."""
    if workload["kind"] == "Pod":
        return workload["spec"]  # type: ignore[no-any-return]
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def job_spec(workload: Manifest) -> Manifest:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]  # type: ignore[no-any-return]
    return workload["spec"]  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def workloads(manifests: list[Manifest]) -> list[Manifest]:
    """Every rendered object that runs pods."""
    return [m for m in manifests if m["kind"] in ("CronJob", "Job", "Pod", "Deployment")]


@pytest.fixture
def overlay(tmp_path: Path) -> Callable[..., Path]:
    """A kustomization of a user's own, on top of this repository: returns its directory."""

    def make(**fields: Any) -> Path:
        directory = tmp_path / "overlay"
        directory.mkdir()
        up = Path(os.path.relpath(ROOT, directory))
        body = {"resources": [str(up)]}
        for key, paths in fields.items():
            body[key] = [str(up / p) for p in paths]
        (directory / "kustomization.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
        return directory

    return make


@pytest.fixture
def podman_volume() -> Iterator[Callable[[str], str]]:
    """``podman_volume("name")`` creates a podman volume, removed after the test."""
    created: list[str] = []
    podman = find_tool("podman")

    def make(name: str) -> str:
        subprocess.run([podman, "volume", "rm", "--force", name], capture_output=True, check=False)
        subprocess.run([podman, "volume", "create", name], capture_output=True, check=True)
        created.append(name)
        return name

    yield make
    for name in created:
        subprocess.run([podman, "volume", "rm", "--force", name], capture_output=True, check=False)
