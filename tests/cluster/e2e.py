"""The end-to-end suites' view of the cluster TAXI_JOB_TEST_KUBECONFIG names: the project's
kustomization applied into a namespace of their own, and the ways a user looks at it
(kubectl, ``taxi-job``, the volume through the volume-shell pod). ``Deployment`` is
test_e2e.py's one deployment; the other suites (models, volume, scale-out) each apply an
overlay of their own with :func:`own_namespace` and run Jobs with :func:`run_job`.

Every wait polls a condition until a timeout; when it runs out, the failure carries the
Job's description and its pods' log tails, so that a CI log explains itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from k8s.conftest import ROOT, find_tool

T = TypeVar("T")
Obj = dict[str, Any]

#: Where the workloads mount the volume (manifests/pvc.yaml).
VOLUME = "/var/lib/taxi-job"
ARTIFACTS = f"{VOLUME}/artifacts"
INCOMING = f"{VOLUME}/data/incoming"
#: The seeded input of the first inference (manifests/jobs/seed-sample-data.yaml).
SEEDED_INPUT = "yellow_tripdata_2021-03.parquet"
SEEDED_ROWS = 1000
#: The uid:gid every taxi-job pod runs as (Dockerfile USER, the manifests' securityContext).
APP_UID = 10001
#: A poll's pause: short against the seconds a pod takes to start.
POLL_S = 1.0
#: The cluster, and the image its node has (k8s-local: ``load-image``); .ci/run sets both.
KUBECONFIG = os.environ.get("TAXI_JOB_TEST_KUBECONFIG", "")
IMAGE = os.environ.get("TAXI_JOB_TEST_IMAGE", "")
#: The marks of a suite that deploys the project into a namespace of its own.
OWN_NAMESPACE_MARKS = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.skipif(not KUBECONFIG, reason="TAXI_JOB_TEST_KUBECONFIG names no cluster"),
    pytest.mark.skipif(not IMAGE, reason="TAXI_JOB_TEST_IMAGE names no image on the cluster"),
]


class WaitTimeout(AssertionError):
    """A condition was not met in time; the message explains what the cluster showed."""


def kustomization_image() -> str:
    """The image kustomization.yaml's images: names (``taxi-job:0.1.0``)."""
    kustomization = yaml.safe_load((ROOT / "kustomization.yaml").read_text(encoding="utf-8"))
    (entry,) = kustomization["images"]
    return f"{entry.get('newName', entry['name'])}:{entry['newTag']}"


def write_overlay(
    directory: Path,
    namespace: str,
    image: str,
    *,
    components: Sequence[str] = (),
    patches: Sequence[Obj] = (),
) -> Path:
    """A throw-away kustomization over this repository's: everything in ``namespace``
    (the Namespace object itself renamed, its Pod Security labels kept), running ``image``,
    with the repository's ``components`` (paths from its root) and extra ``patches``."""
    name, _, tag = image.rpartition(":")
    directory.mkdir(parents=True, exist_ok=True)
    body: Obj = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(ROOT, directory)],
        "namespace": namespace,
        "images": [{"name": "taxi-job", "newName": name, "newTag": tag}],
    }
    if components:
        body["components"] = [os.path.relpath(ROOT / c, directory) for c in components]
    if patches:
        body["patches"] = list(patches)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
    return directory


def cronjob_patch(cronjob: str, operations: list[Obj]) -> Obj:
    """A kustomize JSON patch of one CronJob of the base."""
    return {"target": {"kind": "CronJob", "name": cronjob}, "patch": yaml.safe_dump(operations)}


#: The every-minute infer suspended, for a suite that is not about it (the schedule would
#: race it for the volume's files).
SUSPEND_INFER = cronjob_patch("infer", [{"op": "add", "path": "/spec/suspend", "value": True}])


def small_requests(cronjob: str) -> Obj:
    """Small requests for a CronJob's container, so that several pods schedule side by side
    on a shared machine."""
    return cronjob_patch(cronjob, [{
        "op": "replace",
        "path": "/spec/jobTemplate/spec/template/spec/containers/0/resources/requests",
        "value": {"cpu": "50m", "memory": "128Mi"},
    }])  # fmt: skip


@dataclass
class Deployment:
    """One namespace on the test cluster holding the whole project."""

    kubeconfig: str
    namespace: str
    image: str
    workdir: Path
    kubectl_path: str = field(default_factory=lambda: find_tool("kubectl"))
    first_run_output: str = ""
    """What scripts/first-run.sh printed: each Job's JSON summary, per container."""

    @classmethod
    def fresh(cls, kubeconfig: str, workdir: Path) -> Deployment:
        image = os.environ.get("TAXI_JOB_TEST_IMAGE") or kustomization_image()
        namespace = "taxi-job-e2e-" + secrets.token_hex(3)
        return cls(kubeconfig, namespace, image, workdir)

    # --- running things -------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig, "TAXI_JOB_NAMESPACE": self.namespace}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl_path, "--kubeconfig", self.kubeconfig, "-n", self.namespace, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)}: exit {result.returncode}\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def taxi_job(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The CLI as a user runs it from outside the cluster, with the kubeconfig."""
        exe = Path(sys.executable).with_name("taxi-job")
        return subprocess.run(
            [str(exe), *args, "--kubeconfig", self.kubeconfig, "-n", self.namespace],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={k: v for k, v in self.env().items() if not k.startswith("TAXI_JOB_")},
        )

    def get(self, what: str) -> Obj:
        return json.loads(self.kubectl("get", what, "-o", "json").stdout)  # type: ignore[no-any-return]

    def get_list(self, kind: str, *selector: str) -> list[Obj]:
        out = self.kubectl("get", kind, *selector, "-o", "json").stdout
        return json.loads(out)["items"]  # type: ignore[no-any-return]

    def pods_of(self, job: str) -> list[Obj]:
        pods = self.get_list("pods", "-l", f"job-name={job}")
        return sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"])

    def apply_manifest(self, path: str, container: str, create: bool = False) -> Obj:
        """One of the hand-applied manifests (manifests/jobs, manifests/tools), in this
        namespace, with this image: what their comments tell a user to do, and the name."""
        doc = yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))
        doc["metadata"]["namespace"] = self.namespace
        spec = doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
        for c in spec["containers"]:
            if c["name"] == container:
                c["image"] = self.image
        verb = "create" if create else "apply"
        out = self.kubectl(verb, "-f", "-", "-o", "json", input=json.dumps(doc)).stdout
        return json.loads(out)  # type: ignore[no-any-return]

    # --- the volume, through the volume-shell pod -------------------------------------

    def shell(self, script: str, check: bool = True, timeout: float = 120) -> str:
        """``sh -c SCRIPT`` in the volume-shell pod (the taxi-job image: python, pyarrow)."""
        result = self.kubectl(
            "exec", "volume-shell", "--", "sh", "-c", script, check=check, timeout=timeout
        )
        return result.stdout

    def python(self, code: str) -> Any:
        """Run ``code`` with the image's Python in the volume-shell pod; it prints JSON."""
        out = self.kubectl("exec", "volume-shell", "--", "python", "-c", code).stdout
        return json.loads(out.strip().splitlines()[-1])

    def current_model(self) -> str | None:
        out = self.shell(f"cat {ARTIFACTS}/CURRENT 2>/dev/null || true").strip()
        return out or None

    def model_versions(self) -> list[str]:
        out = self.shell(f"ls {ARTIFACTS}/models 2>/dev/null || true")
        return sorted(n for n in out.split() if not n.startswith("."))

    def predictions(self, name: str) -> Obj:
        """The predictions file of input ``name``: rows, model versions, owner, mode."""
        path = f"{ARTIFACTS}/predictions/incoming/{name}"
        return self.python(
            "import json, os, pyarrow.parquet as pq\n"
            f"p = {path!r}\n"
            "t = pq.read_table(p)\n"
            "st = os.stat(p)\n"
            "print(json.dumps({'rows': t.num_rows,\n"
            "    'versions': sorted(set(t.column('model_version').to_pylist())),\n"
            "    'metadata_version': (pq.read_schema(p).metadata or {})\n"
            "        .get(b'taxi_job.model_version', b'').decode(),\n"
            "    'uid': st.st_uid, 'gid': st.st_gid}))"
        )

    @contextlib.contextmanager
    def holding_training_lock(self) -> Iterator[None]:
        """Hold the artifact store's training lock (the flock a training takes first) from
        the volume-shell pod, as a training that runs for a while would: a training started
        meanwhile waits for it, or exits 75 once its --lock-timeout passes."""
        release = f"/tmp/release-{secrets.token_hex(4)}"
        code = (
            "import fcntl, os, sys, time\n"
            f"os.makedirs({ARTIFACTS!r}, exist_ok=True)\n"
            f"fd = os.open({ARTIFACTS + '/.train.lock'!r}, os.O_RDWR | os.O_CREAT, 0o664)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.ftruncate(fd, 0); os.pwrite(fd, b'the end-to-end suite', 0)\n"
            "print('held', flush=True)\n"
            f"while not os.path.exists({release!r}): time.sleep(0.2)\n"
        )
        holder = subprocess.Popen(
            [
                self.kubectl_path,
                "--kubeconfig",
                self.kubeconfig,
                "-n",
                self.namespace,
                "exec",
                "volume-shell",
                "--",
                "python",
                "-c",
                code,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            line = holder.stdout.readline()  # blocks until the lock is held (or exec failed)
            if line.strip() != "held":
                error = holder.stderr.read() if holder.stderr else ""
                raise AssertionError(f"cannot hold the training lock: {line}{error}")
            yield
        finally:
            self.shell(f"touch {release}", check=False)
            try:
                holder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()

    # --- waiting, and explaining a failure --------------------------------------------

    def explain(self, job: str | None) -> str:
        """What a user would look at: the Job's description, its pods' log tails, and the
        namespace's recent events."""
        parts = []
        if job:
            parts.append(self.kubectl("describe", f"job/{job}", check=False).stdout[-3000:])
            for pod in self.pods_of(job)[-3:]:
                name = pod["metadata"]["name"]
                log = self.kubectl("logs", name, "--all-containers", "--tail=20", check=False)
                parts.append(f"--- log of pod {name}:\n{log.stdout}{log.stderr}")
        events = self.kubectl("get", "events", "--sort-by=.lastTimestamp", check=False)
        parts.append("--- events:\n" + "\n".join(events.stdout.splitlines()[-15:]))
        return "\n".join(parts)

    def wait_for(
        self,
        what: str,
        check: Callable[[], T | None],
        timeout: float,
        job: str | Callable[[], str | None] | None = None,
    ) -> T:
        """Poll ``check`` until it returns something other than None (or False)."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result is not None and result is not False:
                return result
            if time.monotonic() >= deadline:
                name = job() if callable(job) else job
                raise WaitTimeout(f"{what}: not within {timeout:.0f} s\n{self.explain(name)}")
            time.sleep(POLL_S)

    def job_finished(self, job: str, timeout: float = 300) -> Obj:
        """Wait until ``job`` is Complete or Failed; return it."""

        def done() -> Obj | None:
            obj = self.get(f"job/{job}")
            types = {
                c["type"] for c in obj["status"].get("conditions", []) if c["status"] == "True"
            }
            return obj if types & {"Complete", "Failed"} else None

        return self.wait_for(f"job/{job} to finish", done, timeout, job)

    def runs(self) -> list[Obj]:
        """``taxi-job runs`` as JSON."""
        result = self.taxi_job("runs", "--output-format", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])["runs"]  # type: ignore[no-any-return]


# --- the suites with a namespace of their own --------------------------------------------


def kubectl(*args: str, stdin: str | None = None, timeout: float = 120) -> str:
    """``kubectl ARGS`` on the test cluster; its output (the test fails if it fails)."""
    result = subprocess.run(
        ["kubectl", "--kubeconfig", KUBECONFIG, *args], input=stdin, capture_output=True,
        text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def exec_python(namespace: str, job: str, code: str, *, check: bool = True) -> str:
    """``python -c code`` in Job ``job``'s running pod; its output."""
    result = subprocess.run(
        ["kubectl", "--kubeconfig", KUBECONFIG, "-n", namespace, "exec", f"job/{job}", "--",
         "python", "-c", code],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0 or not check, result.stderr
    return result.stdout


@contextlib.contextmanager
def own_namespace(overlay: Callable[[Path, str], Path], workdir: Path) -> Iterator[str]:
    """Apply ``overlay(directory, namespace)`` (a :func:`write_overlay`) into a fresh
    namespace (prefix TAXI_JOB_TEST_NAMESPACE_PREFIX); delete it at the end."""
    prefix = os.environ.get("TAXI_JOB_TEST_NAMESPACE_PREFIX", "taxi-job-test")
    name = f"{prefix}-{secrets.token_hex(3)}"
    kubectl("apply", "-k", str(overlay(workdir / "overlay", name)))
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false")


def create_job(namespace: str, job: Obj | None = None, *, from_cronjob: str = "",
               name: str = "") -> str:  # fmt: skip
    """Create a Job (from an object, or from a CronJob's template); its name."""
    if job is not None:
        kubectl("-n", namespace, "create", "-f", "-", stdin=json.dumps(job))
        return str(job["metadata"]["name"])
    kubectl("-n", namespace, "create", "job", name, f"--from=cronjob/{from_cronjob}")
    return name


def run_job(namespace: str, job: Obj | None = None, *, from_cronjob: str = "",
            name: str = "", timeout_s: int = 600) -> None:  # fmt: skip
    """Create a Job (from an object, or from a CronJob's template) and wait for it."""
    wait_job(namespace, create_job(namespace, job, from_cronjob=from_cronjob, name=name),
             timeout_s)  # fmt: skip


def job_ended(namespace: str, name: str, timeout_s: float = 600) -> Obj:
    """Wait until the Job is Complete or Failed, and return it; fail the test with its pods
    and logs if it has not ended in time."""
    job: Obj = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # polling the Job's state, not timing it
        job = json.loads(kubectl("-n", namespace, "get", "job", name, "-o", "json"))
        if condition(job, "Complete") or condition(job, "Failed"):
            return job
        time.sleep(2)
    pytest.fail(f"job {name} did not end in {timeout_s:g} s: {json.dumps(job.get('status'))}\n"
                f"{_pods_and_logs(namespace, name)}")  # fmt: skip


def wait_job(namespace: str, name: str, timeout_s: float = 600) -> None:
    """Wait until the Job completes; fail the test with its pods and logs if it fails."""
    job = job_ended(namespace, name, timeout_s)
    if not condition(job, "Complete"):
        pytest.fail(f"job {name} did not complete: {json.dumps(job['status'])}\n"
                    f"{_pods_and_logs(namespace, name)}")  # fmt: skip


def _pods_and_logs(namespace: str, name: str) -> str:
    pods = kubectl("-n", namespace, "get", "pods", "-l", f"job-name={name}", "-o", "wide")
    logs = subprocess.run(
        ["kubectl", "--kubeconfig", KUBECONFIG, "-n", namespace, "logs", "--tail=5",
         "-l", f"job-name={name}", "--all-containers"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    return f"{pods}\n{logs}"


def condition(job: Obj, kind: str) -> Obj | None:
    """The Job's condition of type ``kind`` when it is True."""
    for c in job["status"].get("conditions", []):
        if c["type"] == kind and c["status"] == "True":
            return c  # type: ignore[no-any-return]
    return None


def exit_codes(pods: list[Obj], container: str) -> list[int]:
    """The exit codes of ``container`` in ``pods``, oldest pod first (terminated ones)."""
    codes = []
    for pod in pods:
        for status in pod.get("status", {}).get("containerStatuses", []):
            terminated = (status.get("state") or {}).get("terminated")
            if status["name"] == container and terminated:
                codes.append(int(terminated["exitCode"]))
    return codes


def termination_summary(pod: Obj, container: str) -> Obj:
    for status in pod.get("status", {}).get("containerStatuses", []):
        terminated = (status.get("state") or {}).get("terminated")
        if status["name"] == container and terminated and terminated.get("message"):
            return json.loads(terminated["message"])  # type: ignore[no-any-return]
    return {}
