"""The manifests, the Dockerfile and the scripts pass the checkers CI installs
(.ci/setup-tools): kubernetes-validate, checkov, hadolint and shellcheck."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

#: The oldest Kubernetes minor version we support, and the newest we test.
KUBERNETES_VERSIONS = ("1.31.0", "1.35.0")

Tool = Callable[[str], str]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_strictly(tool: Tool, rendered_file: Path, version: str) -> None:
    result = run(
        tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, str(rendered_file)
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rwx_variant_validates_strictly(
    tool: Tool,
    render: Callable[[Path], str],
    overlay: Callable[..., Path],
    tmp_path: Path,
    version: str,
) -> None:
    rendered = tmp_path / "rwx.yaml"
    rendered.write_text(render(overlay(components=["components/rwx"])), encoding="utf-8")
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_finds_no_failure(tool: Tool, rendered_file: Path) -> None:
    result = run(
        tool("checkov"),
        "--framework",
        "kubernetes",
        "--file",
        str(rendered_file),
        "--output",
        "json",
        "--skip-download",
        "--compact",
    )
    report = json.loads(result.stdout)
    failed = [
        (c["check_id"], c["resource"], c["check_name"]) for c in report["results"]["failed_checks"]
    ]
    assert failed == []
    assert report["summary"]["passed"] > 0
    assert report["summary"]["parsing_errors"] == 0
    # a check we skip says why, next to the object it does not apply to
    for check in report["results"]["skipped_checks"]:
        assert len(check["check_result"].get("suppress_comment", "")) > 10, check["check_id"]


def test_checkov_would_catch_a_privileged_container(
    tool: Tool, tmp_path: Path, rendered_text: str
) -> None:
    """The checker really reads our objects: the same manifests, made worse, fail."""
    docs = [d for d in yaml.safe_load_all(rendered_text) if d]
    for doc in docs:
        if doc["kind"] == "CronJob":
            spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    worse = tmp_path / "worse.yaml"
    worse.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    result = run(
        tool("checkov"),
        "--framework",
        "kubernetes",
        "--file",
        str(worse),
        "--output",
        "json",
        "--skip-download",
        "--compact",
        "--quiet",
    )
    report = json.loads(result.stdout)
    assert "CKV_K8S_20" in {c["check_id"] for c in report["results"]["failed_checks"]}


def test_hadolint_reports_nothing_on_the_dockerfile(tool: Tool) -> None:
    result = run(tool("hadolint"), "--no-color", "Dockerfile")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def shell_scripts() -> list[Path]:
    scripts = sorted((ROOT / "scripts").glob("*.sh"))
    return [*scripts, ROOT / ".ci" / "setup-tools", ROOT / ".ci" / "build-image"]


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck_is_clean(tool: Tool, script: Path) -> None:
    result = run(tool("shellcheck"), "--shell=bash", "--severity=style", str(script))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
