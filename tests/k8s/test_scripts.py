"""scripts/*.sh cannot make a cluster here: run them against stand-ins for kubectl, kind,
docker and minikube that record their arguments, and check what they would do."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, Manifest

# `kubectl -n NS get job/CRONJOB-TIME -o jsonpath=...` answers the Job's name and true
# conditions, one line of $STATES/CRONJOB per call (GONE: nothing, as --ignore-not-found
# answers for a deleted Job), then those of a Job that completed (on 1.31+).
# `sleep` returns at once.
STUB = """#!/usr/bin/env bash
{ printf '%q ' "$(basename "$0")" "$@"; echo; } >> "$CALLS"
case "$(basename "$0") $1" in
    "kind get") echo other-cluster ;;
    "kubectl -n")
        if [[ $3 == get && $4 == events ]]; then echo "${REFUSED:-}"; fi
        if [[ $3 == get && $4 == job/* ]]; then
            job=${4#job/}
            states="$STATES/${job%-*}"
            if [[ -s $states ]]; then
                state=$(head -n 1 "$states")
                sed -i 1d "$states"
                if [[ $state != GONE ]]; then echo "$job $state"; fi
            else
                echo "$job SuccessCriteriaMet Complete"
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
    conditions the train Job shows at each look; ``code`` is the exit code expected;
    ``stderr=[]`` collects what the script printed there."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("kubectl", "kind", "docker", "podman", "minikube", "sleep"):
        stub = bin_dir / name
        stub.write_text(STUB, encoding="utf-8")
        stub.chmod(0o755)
    calls = tmp_path / "calls"
    states_dir = tmp_path / "states"
    states_dir.mkdir()

    def run(
        script: str,
        states: dict[str, list[str]] | None = None,
        code: int = 0,
        args: tuple[str, ...] = (),
        stderr: list[str] | None = None,
        **env: str,
    ) -> Calls:
        for cronjob, lines in (states or {}).items():
            (states_dir / cronjob).write_text("".join(f"{line}\n" for line in lines))
        extra = env
        environ = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "CALLS": str(calls),
            "STATES": str(states_dir),
            **extra,
        }
        environ.pop("KIND_EXPERIMENTAL_PROVIDER", None)
        if "TAXI_JOB_NAMESPACE" not in extra:
            environ.pop("TAXI_JOB_NAMESPACE", None)
        result = subprocess.run(
            ["bash", str(ROOT / script), *args],
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == code, result.stderr
        if stderr is not None:
            stderr.append(result.stderr)
        return [shlex.split(line) for line in calls.read_text(encoding="utf-8").splitlines()]

    return run


def kustomize_image() -> str:
    kustomization = yaml.safe_load((ROOT / "kustomization.yaml").read_text(encoding="utf-8"))
    (entry,) = kustomization["images"]
    return f"{entry.get('newName', entry['name'])}:{entry['newTag']}"


def started_jobs(calls: list[list[str]]) -> list[str]:
    return [
        arg.removeprefix("--from=cronjob/")
        for call in calls
        for arg in call
        if arg.startswith("--from=cronjob/")
    ]


def looks(calls: Calls) -> list[str]:
    """The Jobs whose conditions the script read, one entry a look."""
    return [
        c[4].removeprefix("job/")
        for c in calls
        if c[:2] == ["kubectl", "-n"] and c[3:4] == ["get"] and c[4].startswith("job/")
    ]


def test_first_run_applies_then_seeds_trains_and_predicts(
    fake_tools: Callable[..., Calls], manifests: list[Manifest]
) -> None:
    calls = fake_tools("scripts/first-run.sh")
    assert calls[0] == ["kubectl", "apply", "-k", "."]
    assert started_jobs(calls) == ["seed-sample-data", "train", "infer"]
    cronjobs = {m["metadata"]["name"] for m in manifests if m["kind"] == "CronJob"}
    assert set(started_jobs(calls)) <= cronjobs
    assert [job.rsplit("-", 1)[0] for job in looks(calls)] == ["seed-sample-data", "train", "infer"]
    assert not any("wait" in c for c in calls)  # kubectl wait hangs on a failed Job


def test_first_run_polls_until_the_job_completes(fake_tools: Callable[..., Calls]) -> None:
    calls = fake_tools("scripts/first-run.sh", states={"train": ["", "", "Suspended"]})

    assert started_jobs(calls) == ["seed-sample-data", "train", "infer"]
    assert [job.rsplit("-", 1)[0] for job in looks(calls)].count("train") == 4
    assert calls.count(["sleep", "5"]) == 3


def test_first_run_stops_at_a_failed_job_with_its_logs(fake_tools: Callable[..., Calls]) -> None:
    calls = fake_tools(
        "scripts/first-run.sh",
        code=1,
        states={"train": ["", "FailureTarget", "FailureTarget Failed"]},
    )

    # train failed: no infer, and no waiting out the timeout
    assert started_jobs(calls) == ["seed-sample-data", "train"]
    (train,) = {job for job in looks(calls) if job.startswith("train-")}
    assert looks(calls).count(train) == 3
    assert calls.count(["sleep", "5"]) == 2
    assert [
        "kubectl",
        "-n",
        "taxi-job",
        "logs",
        f"job/{train}",
        "--all-containers",
        "--tail=20",
    ] in calls


def test_first_run_keeps_its_jobs_out_of_the_cronjob_history(
    fake_tools: Callable[..., Calls],
) -> None:
    """`kubectl create job --from` makes the CronJob the Job's controller, and the infer
    CronJob (one successful Job kept, a run a minute) deletes it once a later scheduled run
    finishes, possibly before the script has read it: each Job is made client-side, turned
    into an uncontrolled one that expires after a week, then created."""
    calls = fake_tools("scripts/first-run.sh")
    made = [c for c in calls if any(a.startswith("--from=cronjob/") for a in c)]
    assert len(made) == 3
    assert all(c[-3:] == ["--dry-run=client", "-o", "json"] for c in made)
    patches = [c for c in calls if c[:3] == ["kubectl", "patch", "--local"]]
    assert len(patches) == 3
    ops = yaml.safe_load(patches[0][patches[0].index("-p") + 1])
    assert {
        "op": "replace",
        "path": "/metadata/ownerReferences/0/controller",
        "value": False,
    } in ops
    assert {"op": "add", "path": "/spec/ttlSecondsAfterFinished", "value": 604800} in ops
    assert calls.count(["kubectl", "-n", "taxi-job", "create", "-f", "-"]) == 3


def test_first_run_stops_when_its_job_is_deleted(fake_tools: Callable[..., Calls]) -> None:
    """A Job deleted before it finished (by hand, or by a controller) will never complete:
    say so at once instead of waiting out the timeout."""
    stderr: list[str] = []
    calls = fake_tools(
        "scripts/first-run.sh", code=1, states={"infer": ["", "GONE"]}, stderr=stderr
    )
    (infer,) = {job for job in looks(calls) if job.startswith("infer-")}
    assert looks(calls).count(infer) == 2
    assert calls.count(["sleep", "5"]) == 1
    assert f"job/{infer} was deleted before it finished" in stderr[0]


def test_first_run_takes_the_namespace_and_the_kustomization(
    fake_tools: Callable[..., Calls],
) -> None:
    """As the cluster suite runs it: an overlay of its own, a namespace of its own."""
    calls = fake_tools(
        "scripts/first-run.sh", args=("/tmp/overlay",), TAXI_JOB_NAMESPACE="taxi-job-e2e-1"
    )
    assert calls[0] == ["kubectl", "apply", "-k", "/tmp/overlay"]
    assert started_jobs(calls) == ["seed-sample-data", "train", "infer"]
    assert {c[2] for c in calls if c[:2] == ["kubectl", "-n"]} == {"taxi-job-e2e-1"}


def test_first_run_stops_at_a_pod_the_namespace_refuses(fake_tools: Callable[..., Calls]) -> None:
    """The Job controller cannot create a pod that violates the Pod Security level, and
    would try until the timeout: the script stops at its event instead."""
    refused = (
        'Error creating: pods "seed-sample-data-1-x" is forbidden: violates '
        'PodSecurity "restricted:latest": runAsUser=0'
    )
    calls = fake_tools(
        "scripts/first-run.sh", code=1, states={"seed-sample-data": [""]}, REFUSED=refused
    )
    assert started_jobs(calls) == ["seed-sample-data"]
    assert not calls.count(["sleep", "5"])


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


# .ci/run, in a copy of the repository beside a stand-in ../shared/k8s-local: every step a
# recording stub, so the order of the phases and the trap that stops the cluster are checked
# without installing anything or touching a real cluster.
CI_STUB = """#!/usr/bin/env bash
{ printf '%q ' "$(basename "$0")" "$@"; echo; } >> "$CALLS"
if [ "$(basename "$0") $1" = "make test" ]; then
    echo "env REQUIRE=$TAXI_JOB_REQUIRE_TOOLS IMAGE=${TAXI_JOB_TEST_IMAGE:-} \\
KUBECONFIG=${TAXI_JOB_TEST_KUBECONFIG:-}" >> "$CALLS"
fi
case " $(basename "$0") $* " in *"$FAIL"*) exit 3 ;; esac
case " $(basename "$0") $* " in *"$FAIL_ONCE"*)
    if [ ! -e "$CALLS.failed" ]; then touch "$CALLS.failed"; exit 3; fi ;;
esac
if [ "$(basename "$0")" = env ]; then echo "export KUBECONFIG=/stub/kubeconfig"; fi
exit 0
"""

#: .ci/in-private-clone records its call, then runs the command it was given (no clone).
CI_PRIVATE_CLONE_STUB = """#!/usr/bin/env bash
{ printf '%q ' "$(basename "$0")" "$@"; echo; } >> "$CALLS"
exec "$@"
"""


@pytest.fixture
def ci_run(tmp_path: Path) -> Callable[..., tuple[int, Calls, str]]:
    """``ci_run(FAIL=" up ", TAXI_JOB_KEEP_CLUSTER="1")``: run the copy; a stub whose
    command line (`` NAME ARGS ``) contains FAIL exits 3. Returns the exit code, the calls
    and the output."""
    repo, shared, bin_dir = tmp_path / "repo", tmp_path / "shared" / "k8s-local", tmp_path / "bin"
    for folder in (repo / ".ci", shared, bin_dir):
        folder.mkdir(parents=True)
    (repo / ".ci" / "run").write_text((ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    (repo / "kustomization.yaml").write_text(
        (ROOT / "kustomization.yaml").read_text(encoding="utf-8")
    )
    for stub in (
        repo / ".ci" / "setup-tools",
        repo / ".ci" / "build-image",
        repo / ".ci" / "build-pushgateway-image",
        bin_dir / "make",
        *(shared / name for name in ("up", "down", "env", "load-image")),
    ):
        stub.write_text(CI_STUB, encoding="utf-8")
        stub.chmod(0o755)
    (repo / ".ci" / "in-private-clone").write_text(CI_PRIVATE_CLONE_STUB, encoding="utf-8")
    calls = tmp_path / "calls"
    calls.touch()

    def run(shared_cluster: bool = True, **env: str) -> tuple[int, Calls, str]:
        if not shared_cluster:
            for name in ("up", "down", "env", "load-image"):
                (shared / name).unlink()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TAXI_JOB_")}
        environ.update(
            PATH=f"{bin_dir}:{os.environ['PATH']}",
            CALLS=str(calls),
            FAIL=env.pop("FAIL", "nothing-fails"),
            FAIL_ONCE=env.pop("FAIL_ONCE", "nothing-fails"),
            **env,
        )
        result = subprocess.run(
            ["bash", str(repo / ".ci" / "run")],
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        recorded = [shlex.split(line) for line in calls.read_text().splitlines()]
        return result.returncode, recorded, result.stdout + result.stderr

    return run


def test_ci_runs_the_suite_on_the_shared_cluster_then_purges_it(
    ci_run: Callable[..., tuple[int, Calls, str]],
) -> None:
    code, calls, output = ci_run()
    image = f"localhost/{kustomize_image()}"
    assert code == 0, output
    assert [c[:2] for c in calls] == [
        ["make", "install"],
        ["setup-tools"],
        ["make", "lint"],
        ["build-image", image],
        ["up"],
        ["env"],
        ["load-image", image],
        # the monitoring suite's Pushgateway, built and loaded once the cluster is up
        ["build-pushgateway-image", "localhost/taxi-job-pushgateway:debian"],
        ["load-image", "localhost/taxi-job-pushgateway:debian"],
        ["in-private-clone", "make"],
        ["make", "test"],
        ["env", "REQUIRE=1"],
        ["make", "test"],
        ["env", "REQUIRE=1"],
        ["make", "test"],
        ["env", "REQUIRE=1"],
        ["down", "--purge"],
    ]
    tests = [c for c in calls if c[:2] == ["make", "test"]]
    assert tests == [
        ["make", "test", "PYTEST_ARGS=-m 'not cluster and not faults'"],
        ["make", "test", "PYTEST_ARGS=-m 'cluster and not faults'"],
        ["make", "test", "PYTEST_ARGS=-m faults"],
    ]
    # one image for the image tests and the cluster, and the cluster's kubeconfig
    assert ["env", "REQUIRE=1", f"IMAGE={image}", "KUBECONFIG=/stub/kubeconfig"] in calls
    for name in (
        "tools",
        "image",
        "cluster",
        "unit tests",
        "cluster tests",
        "fault tests",
        "cluster down",
    ):
        assert re.search(rf"^  {name} +\d+ s$", output, re.MULTILINE), output


@pytest.mark.parametrize(
    "fail", [" up ", " load-image ", "not cluster", "cluster and not faults", "-m faults"]
)
def test_ci_stops_the_cluster_whatever_failed(
    ci_run: Callable[..., tuple[int, Calls, str]],
    fail: str,
) -> None:
    code, calls, output = ci_run(FAIL=fail)
    assert code == 3, output
    assert calls[-1] == ["down", "--purge"]


def test_ci_tries_up_again_when_it_fails_once(
    ci_run: Callable[..., tuple[int, Calls, str]],
) -> None:
    """k8s-local's `up` fails now and then in its bridge check (see .ci/run); a second
    `up` passes it, and the run goes on as if the first had."""
    code, calls, output = ci_run(FAIL_ONCE=" up ")
    assert code == 0, output
    assert [c for c in calls if c[0] in ("up", "down")] == [["up"], ["up"], ["down", "--purge"]]
    assert ".ci/run: k8s-local up failed (attempt 1 of 3); up again" in output
    assert ["make", "test", "PYTEST_ARGS=-m faults"] in calls


def test_ci_gives_up_after_three_failed_ups(
    ci_run: Callable[..., tuple[int, Calls, str]],
) -> None:
    code, calls, output = ci_run(FAIL=" up ")
    assert code == 3, output
    assert [c for c in calls if c[0] in ("up", "down")] == [["up"]] * 3 + [["down", "--purge"]]
    assert not [c for c in calls if c[:2] == ["make", "test"]]


def test_ci_keeps_the_cluster_when_asked(ci_run: Callable[..., tuple[int, Calls, str]]) -> None:
    code, calls, output = ci_run(TAXI_JOB_KEEP_CLUSTER="1", FAIL="cluster and not faults")
    assert code == 3
    assert ["up"] in calls
    assert not [c for c in calls if c[0] == "down"]
    assert "TAXI_JOB_KEEP_CLUSTER=1: the cluster stays up" in output


def test_ci_without_the_shared_cluster_still_runs_the_cluster_tests(
    ci_run: Callable[..., tuple[int, Calls, str]],
) -> None:
    """They fail there (TAXI_JOB_REQUIRE_TOOLS=1) rather than pass by skipping."""
    code, calls, _ = ci_run(shared_cluster=False)
    assert code == 0
    assert not [c for c in calls if c[0] in ("up", "down", "build-image")]
    assert ["make", "test", "PYTEST_ARGS=-m 'cluster and not faults'"] in calls
    assert ["make", "test", "PYTEST_ARGS=-m faults"] in calls
    assert ["env", "REQUIRE=1", "IMAGE=", "KUBECONFIG="] in calls
