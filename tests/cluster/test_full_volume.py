"""A full volume on a real cluster: the project's claim bound to a PersistentVolume on a
48 MiB tmpfs that this test mounts on the node. An ``infer`` of a month whose predictions
cannot fit exits 75 with none of them published and no temporary left; a ``train`` on the
full volume exits 75 with ``CURRENT`` unchanged and no half version; ``taxi-job runs``
says so (failed, exit 75, "No space left on device"). Once space is freed, with no other
step by hand, a training's retry (the Job's back-off) publishes and the next scheduled
``infer`` predicts the month whole.

Runs only when TAXI_JOB_TEST_KUBECONFIG names a kubeconfig of a cluster whose node is this
machine (k8s-local: the tmpfs must be on the node) and TAXI_JOB_TEST_IMAGE an image the
node has, and as root (to mount). The namespace, the PersistentVolume and the mount are
removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from e2e import (
    APP_UID,
    IMAGE,
    KUBECONFIG,
    OWN_NAMESPACE_MARKS,
    SUSPEND_INFER,
    condition,
    create_job,
    exit_codes,
    job_ended,
    kubectl,
    own_namespace,
    run_job,
    small_requests,
    termination_summary,
    wait_job,
    write_overlay,
)

from job.errors import EXIT_TRANSIENT
from job.runs import INSTANTIATE_ANNOTATION

pytestmark = [
    *OWN_NAMESPACE_MARKS,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs on the node: needs root"),
]

TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))
SIZE_MIB = 48
VOLUME = "/var/lib/taxi-job"
#: 600,000 synthetic trips: about 15 MiB of input, 6 MiB of predictions.
MONTH = "yellow_tripdata_2021-04.parquet"
MONTH_ROWS = 600_000
#: What the other files on the volume leave free while the month waits: less than its
#: predictions need.
LEFT_FREE_MIB = 2
FILLER = "data/other-files"


@contextlib.contextmanager
def tmpfs(size_mib: int) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` mounted on a fresh folder of the node, owned by the pods'
    user and group (set-group-id, like a volume that the kubelet gave the fsGroup)."""
    folder = Path(tempfile.mkdtemp(prefix="taxi-job-full-volume-"))
    options = f"size={size_mib}m,mode=2775,uid={APP_UID},gid={APP_UID}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=False)
        folder.rmdir()


def this_machine() -> str:
    """The ``kubernetes.io/hostname`` of the cluster's one node, which must be this
    machine (k8s-local's is): the tmpfs mounted here is on it. A cluster of several nodes
    skips the test."""
    nodes = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
    if len(nodes) != 1:
        pytest.skip("needs a one-node cluster on this machine (k8s-local)")
    return str(nodes[0]["metadata"]["labels"]["kubernetes.io/hostname"])


def persistent_volume(name: str, path: Path, node: str) -> dict[str, Any]:
    """A ``local`` PersistentVolume on ``path`` of ``node``, with a storage class of its
    own (no StorageClass object: the claim that names it binds at once, and nothing else
    ever does)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": f"{SIZE_MIB}Mi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": name,
            "local": {"path": str(path)},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]},
            ]}]}},
        },
    }  # fmt: skip


def overlay_on(volume: str) -> Any:
    def overlay(directory: Path, namespace: str) -> Path:
        """The repository in ``namespace`` with its claim on ``volume``; the every-minute
        infer suspended until the test lets it run."""
        claim = {
            "target": {"kind": "PersistentVolumeClaim", "name": "taxi-job-data"},
            "patch": json.dumps([
                {"op": "add", "path": "/spec/storageClassName", "value": volume},
                {"op": "add", "path": "/spec/volumeName", "value": volume},
                {"op": "replace", "path": "/spec/resources/requests/storage",
                 "value": f"{SIZE_MIB}Mi"},
            ]),
        }  # fmt: skip
        patches = [claim, SUSPEND_INFER, small_requests("train"), small_requests("infer")]
        return write_overlay(directory, namespace, IMAGE, patches=patches)

    return overlay


@pytest.fixture
def full_volume(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(namespace, the volume's folder on the node)."""
    name = f"taxi-job-full-{secrets.token_hex(3)}"
    node = this_machine()
    with tmpfs(SIZE_MIB) as folder:
        kubectl("create", "-f", "-", stdin=json.dumps(persistent_volume(name, folder, node)))
        try:
            with own_namespace(overlay_on(name), tmp_path) as namespace:
                yield namespace, folder
            # the pods' bind mounts of the tmpfs go with the namespace
            kubectl("wait", "--for=delete", f"namespace/{namespace}", "--timeout=120s")
        finally:
            kubectl("delete", "pv", name, "--wait=false")


def job_with_args(namespace: str, cronjob: str, name: str, args: list[str]) -> str:
    """Create a Job from ``cronjob``'s template running other ``args`` (not a run of the
    history: a tool on the volume); its name."""
    template = json.loads(kubectl("-n", namespace, "get", "cronjob", cronjob, "-o", "json"))
    spec = template["spec"]["jobTemplate"]["spec"]
    spec["template"]["spec"]["containers"][0]["args"] = args
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}
    kubectl("-n", namespace, "create", "-f", "-", stdin=json.dumps(job))
    return name


def without_retries(namespace: str, cronjob: str, name: str) -> str:
    """``kubectl create job NAME --from=cronjob/CRONJOB`` (a manual run, in ``taxi-job
    runs``) with ``backoffLimit: 0``: while the volume stays full each retry would fail the
    same way, and the failed Job is what this test looks at; its name."""
    job = json.loads(kubectl("-n", namespace, "create", "job", name, f"--from=cronjob/{cronjob}",
                             "--dry-run=client", "-o", "json"))  # fmt: skip
    job["spec"]["backoffLimit"] = 0
    kubectl("-n", namespace, "create", "-f", "-", stdin=json.dumps(job))
    return name


def ended(namespace: str, name: str) -> tuple[str, int, dict[str, Any]]:
    """Wait for Job ``name``; its end, its (one) pod's exit code and termination summary."""
    job = job_ended(namespace, name, 300)
    pods = json.loads(kubectl("-n", namespace, "get", "pods", "-l", f"job-name={name}",
                              "-o", "json"))["items"]  # fmt: skip
    (pod,) = pods
    (status,) = pod["status"]["containerStatuses"]
    state = "Complete" if condition(job, "Complete") else "Failed"
    return (
        state,
        status["state"]["terminated"]["exitCode"],
        termination_summary(pod, status["name"]),
    )


def runs(namespace: str, *, text: bool = False) -> Any:
    """``taxi-job runs`` as a user runs it from a laptop (a real process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAXI_JOB_")}
    env.update(TAXI_JOB_KUBECONFIG=KUBECONFIG, TAXI_JOB_NAMESPACE=namespace)
    result = subprocess.run(
        [TAXI_JOB, "runs", "--output-format", "text" if text else "json"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    if text:
        return result.stdout
    return {r["name"]: r for r in json.loads(result.stdout.splitlines()[-1])["runs"]}


def leftovers(folder: Path) -> list[str]:
    """Temporaries and claims anywhere on the volume."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.startswith((".tmp-", ".claim-"))
    )


def fill(folder: Path, leave_mib: int) -> None:
    """Other files on the volume take all but ``leave_mib`` of it (a tmpfs allocates the
    pages of ``fallocate`` at once)."""
    stat = os.statvfs(folder)
    grow = stat.f_bavail * stat.f_frsize - leave_mib * 2**20
    fd = os.open(folder / FILLER, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, os.fstat(fd).st_size, grow)
    finally:
        os.close(fd)


def scheduled_infer(namespace: str) -> str | None:
    """The name of a Job the infer CronJob started by itself (not ``kubectl create job
    --from``, which sets the same owner and an annotation), if any."""
    jobs = json.loads(kubectl("-n", namespace, "get", "jobs", "-o", "json"))["items"]
    for job in jobs:
        owners = job["metadata"].get("ownerReferences") or []
        manual = (job["metadata"].get("annotations") or {}).get(INSTANTIATE_ANNOTATION)
        if not manual and any(o["kind"] == "CronJob" and o["name"] == "infer" for o in owners):
            return str(job["metadata"]["name"])
    return None


def test_a_full_volume_fails_runs_transiently_and_they_recover(full_volume) -> None:
    namespace, folder = full_volume
    artifacts = folder / "artifacts"
    predicted = artifacts / "predictions" / "incoming"

    # 1. Data, a model, and a month of 600,000 trips waiting in the queue.
    run_job(namespace, from_cronjob="seed-sample-data", name="seed")
    run_job(namespace, from_cronjob="train", name="train-first")
    first = (artifacts / "CURRENT").read_text().strip()
    make = [
        "sample-data",
        "--month",
        "2021-04",
        "--rows",
        str(MONTH_ROWS),
        f"{VOLUME}/data/incoming",
    ]
    wait_job(namespace, job_with_args(namespace, "infer", "arrives", make))

    # 2. Other files leave too little room for the month's predictions: infer exits 75,
    # nothing of the month published, no temporary or claim left behind.
    fill(folder, LEFT_FREE_MIB)
    state, code, summary = ended(namespace, without_retries(namespace, "infer", "full-infer"))
    assert (state, code) == ("Failed", EXIT_TRANSIENT), summary
    assert summary["exit_code"] == EXIT_TRANSIENT
    assert summary["error"].startswith(f"{VOLUME}/artifacts/predictions/incoming: cannot write")
    assert summary["error"].endswith("No space left on device"), summary["error"]
    assert not (predicted / MONTH).exists()
    assert leftovers(folder) == []

    # 3. The volume full to the last byte: a training exits 75, CURRENT unchanged, no half
    # version left (nor the space it took).
    fill(folder, 0)
    state, code, summary = ended(namespace, without_retries(namespace, "train", "full-train"))
    assert (state, code) == ("Failed", EXIT_TRANSIENT), summary
    assert summary["error"].startswith(f"{VOLUME}/artifacts/models: cannot write model version")
    assert summary["error"].endswith("No space left on device"), summary["error"]
    assert (artifacts / "CURRENT").read_text().strip() == first
    assert sorted(p.name for p in (artifacts / "models").iterdir()) == [first]
    assert leftovers(folder) == []

    # 4. What a user sees from a laptop: both runs failed, exit 75, the full volume named.
    history = runs(namespace)
    for name in ("full-infer", "full-train"):
        run = history[name]
        assert (run["state"], run["reason"]) == ("failed", "BackoffLimitExceeded"), run
        assert run["summary"]["exit_code"] == EXIT_TRANSIENT
        assert "No space left on device" in run["summary"]["error"]
    table = {line.split()[0]: line for line in runs(namespace, text=True).splitlines()[1:]}
    assert "failed (BackoffLimitExceeded)" in table["full-infer"]
    for name in ("full-infer", "full-train"):
        assert "error (exit 75, transient error, a later run retries): " in table[name], table
        assert table[name].endswith("No space left on device"), table
    print(runs(namespace, text=True))

    # 5. A training as the CronJob makes it (retries with a back-off) meets the full
    # volume; space is freed meanwhile (and the every-minute infer let run): its next
    # attempt publishes, CURRENT changes only now.
    create_job(namespace, from_cronjob="train", name="train-retried")

    def attempts() -> list[int]:
        """The exit codes of the training's ended attempts, oldest first."""
        pods = json.loads(kubectl("-n", namespace, "get", "pods", "-l", "job-name=train-retried",
                                  "-o", "json"))["items"]  # fmt: skip
        return exit_codes(sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"]), "train")

    deadline = time.monotonic() + 120
    while not (codes := attempts()):
        assert time.monotonic() < deadline, "the training's first attempt did not end"
        time.sleep(1)  # polling the pod's state, not timing it
    assert codes == [EXIT_TRANSIENT]
    assert (artifacts / "CURRENT").read_text().strip() == first
    (folder / FILLER).unlink()
    kubectl("-n", namespace, "patch", "cronjob", "infer", "-p", '{"spec":{"suspend":false}}')
    job = job_ended(namespace, "train-retried", 300)
    assert condition(job, "Complete"), job["status"]
    assert attempts() == [EXIT_TRANSIENT, 0]
    second = (artifacts / "CURRENT").read_text().strip()
    assert second != first
    assert sorted(p.name for p in (artifacts / "models").iterdir()) == sorted([first, second])

    # 6. Nothing done by hand but the freeing: the next scheduled infer predicts the month,
    # whole, with the model current when it ran.
    deadline = time.monotonic() + 150
    while (scheduled := scheduled_infer(namespace)) is None:
        assert time.monotonic() < deadline, "the infer CronJob started no Job"
        time.sleep(2)  # polling the cluster's state, not timing the runs
    kubectl("-n", namespace, "patch", "cronjob", "infer", "-p", '{"spec":{"suspend":true}}')
    state, code, summary = ended(namespace, scheduled)
    assert (state, code) == ("Complete", 0), summary
    assert f"{VOLUME}/artifacts/predictions/incoming/{MONTH}" in summary["outputs"]
    assert summary["model_version"] in (first, second)
    table = pq.read_table(predicted / MONTH, columns=["model_version"])
    assert table.num_rows == MONTH_ROWS
    assert table.column("model_version").unique().to_pylist() == [summary["model_version"]]
    assert leftovers(folder) == []
    history = runs(namespace)
    assert history[scheduled]["state"] == history["train-retried"]["state"] == "succeeded"
    assert history["train-retried"]["summary"]["model_version"] == second
