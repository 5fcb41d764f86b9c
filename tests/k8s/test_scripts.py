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

# `kubectl -n NS get job/CRONJOB-TIME -o jsonpath=...` answers the Job's true conditions,
# one line of $STATES/CRONJOB per call, then those of a Job that completed (on 1.31+).
# `sleep` returns at once.
STUB = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$CALLS"
case "$(basename "$0") $1" in
    "kind get") echo other-cluster ;;
    "kubectl -n")
        if [[ $3 == get && $4 == job/* ]]; then
            job=${4#job/}
            states="$STATES/${job%-*}"
            if [[ -s $states ]]; then
                head -n 1 "$states"
                sed -i 1d "$states"
            else
                echo "SuccessCriteriaMet Complete"
            fi
        fi ;;
esac
exit 0
"""

Calls = list[list[str]]


@pytest.fixture
def fake_tools(tmp_path: Path) -> Callable[..., Calls]:
    """``fake_tools("scripts/kind.sh")`` runs a script with recording stand-ins first on
    PATH and returns the commands it ran. ``states={"train": ["", "Failed"]}`` gives the
    conditions the train Job shows at each look; ``code`` is the exit code expected."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("kubectl", "kind", "docker", "podman", "minikube", "sleep"):
        stub = bin_dir / name
        stub.write_text(STUB, encoding="utf-8")
        stub.chmod(0o755)
    calls = tmp_path / "calls"
    states_dir = tmp_path / "states"
    states_dir.mkdir()

    def run(script: str, states: dict[str, list[str]] | None = None, code: int = 0) -> Calls:
        for cronjob, lines in (states or {}).items():
            (states_dir / cronjob).write_text("".join(f"{line}\n" for line in lines))
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls),
               "STATES": str(states_dir)}
        env.pop("KIND_EXPERIMENTAL_PROVIDER", None)
        result = subprocess.run(["bash", str(ROOT / script)], env=env, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == code, result.stderr
        return [shlex.split(line) for line in calls.read_text(encoding="utf-8").splitlines()]

    return run


def kustomize_image() -> str:
    kustomization = yaml.safe_load((ROOT / "kustomization.yaml").read_text(encoding="utf-8"))
    (entry,) = kustomization["images"]
    return f"{entry.get('newName', entry['name'])}:{entry['newTag']}"


def started_jobs(calls: list[list[str]]) -> list[str]:
    return [arg.removeprefix("--from=cronjob/") for call in calls for arg in call
            if arg.startswith("--from=cronjob/")]


def looks(calls: Calls) -> list[str]:
    """The Jobs whose conditions the script read, one entry a look."""
    return [c[4].removeprefix("job/") for c in calls
            if c[:2] == ["kubectl", "-n"] and c[3:4] == ["get"] and c[4].startswith("job/")]


def test_first_run_applies_then_seeds_trains_and_predicts(
    fake_tools: Callable[..., Calls], manifests: list[Manifest]
) -> None:
    calls = fake_tools("scripts/first-run.sh")
    assert calls[0] == ["kubectl", "apply", "-k", "."]
    assert started_jobs(calls) == ["seed-sample-data", "train", "infer"]
    cronjobs = {m["metadata"]["name"] for m in manifests if m["kind"] == "CronJob"}
    assert set(started_jobs(calls)) <= cronjobs
    assert [job.rsplit("-", 1)[0] for job in looks(calls)] == [
        "seed-sample-data", "train", "infer"]
    assert not any("wait" in c for c in calls)  # kubectl wait hangs on a failed Job


def test_first_run_polls_until_the_job_completes(fake_tools: Callable[..., Calls]) -> None:
    calls = fake_tools("scripts/first-run.sh", states={"train": ["", "", "Suspended"]})

    assert started_jobs(calls) == ["seed-sample-data", "train", "infer"]
    assert [job.rsplit("-", 1)[0] for job in looks(calls)].count("train") == 4
    assert calls.count(["sleep", "5"]) == 3


def test_first_run_stops_at_a_failed_job_with_its_logs(fake_tools: Callable[..., Calls]) -> None:
    calls = fake_tools("scripts/first-run.sh", code=1,
                       states={"train": ["", "FailureTarget", "FailureTarget Failed"]})

    # train failed: no infer, and no waiting out the timeout
    assert started_jobs(calls) == ["seed-sample-data", "train"]
    (train,) = {job for job in looks(calls) if job.startswith("train-")}
    assert looks(calls).count(train) == 3
    assert calls.count(["sleep", "5"]) == 2
    assert ["kubectl", "-n", "taxi-job", "logs", f"job/{train}", "--all-containers",
            "--tail=20"] in calls


def test_kind_builds_and_loads_the_image_the_manifests_name(
    fake_tools: Callable[..., Calls],
) -> None:
    calls = fake_tools("scripts/kind.sh")
    assert ["kind", "create", "cluster", "--name", "taxi-job"] in calls
    (build,) = [c for c in calls if c[:2] == ["docker", "build"]]
    # a name without a registry is docker.io/library/ to the nodes' containerd
    assert build[build.index("-t") + 1] == f"docker.io/library/{kustomize_image()}"
    assert any(c[:3] == ["kind", "load", "image-archive"] for c in calls)
    assert started_jobs(calls) == ["seed-sample-data", "train", "infer"]


def test_minikube_builds_the_image_the_manifests_name(
    fake_tools: Callable[..., Calls],
) -> None:
    calls = fake_tools("scripts/minikube.sh")
    (build,) = [c for c in calls if c[:3] == ["minikube", "image", "build"]]
    assert build[build.index("-t") + 1] == kustomize_image()
    assert started_jobs(calls) == ["seed-sample-data", "train", "infer"]
