"""What the fault tests (marker ``faults``) do to the real cluster, and how they look at
the volume afterwards.

They disturb the node everybody's pods run on, so they run in a phase of their own
(.ci/run "fault tests"), never with ``-m cluster`` alone. Restarting the node's kubelet
and containerd needs root and the k8s-local cluster itself (``TAXI_JOB_K8S_LOCAL``, by
default ``../shared/k8s-local`` beside the checkout): its pid files say which processes
are the node's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e import OWN_NAMESPACE_MARKS, cronjob_patch, kubectl
from k8s.conftest import ROOT, require_tools

Obj = dict[str, Any]

K8S_LOCAL = Path(os.environ.get("TAXI_JOB_K8S_LOCAL") or ROOT.parent / "shared" / "k8s-local")
VOLUME = "/var/lib/taxi-job"

FAULTS_MARKS = [*OWN_NAMESPACE_MARKS, pytest.mark.faults]

#: Stop one of k8s-local's processes as its `down` does: its pid file says which; TERM to
#: its process group, KILL after 15 s. Nothing to do if it is not running.
STOP = r"""
set -uo pipefail
HERE=$1
. "$HERE/lib/common.sh"
stop() {
  local n=$1 p i
  p=$(pid_of "$n") && alive "$n" || return 0
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p"
  for ((i = 0; i < 150; i++)); do proc_running "$p" || return 0; sleep 0.1; done
  kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p"
}
"""

#: Stop the node's kubelet, kill the containers of one namespace's pods (what a reboot does
#: to them; the other namespaces' pods on this shared cluster live on, as they do across a
#: plain runtime restart: containerd's shims keep them), stop containerd, and start both
#: again. Stopping is what k8s-local's `down` does to each process. containerd is started
#: here, as `up` starts it, and the kubelet only once containerd's CRI serves: a kubelet
#: started a moment too early exits ("server is not initialized yet"), and `up`, which
#: otherwise starts containerd long before the kubelet, would wait 90 s for it in vain.
#: Then `up` (idempotent) starts the kubelet and returns once the node is Ready.
RESTART = (
    STOP
    + r"""
namespace=$2
stop kubelet
ids=$(kctr containers ls -q "labels.\"io.kubernetes.pod.namespace\"==$namespace")
for id in $ids; do kctr tasks kill -s KILL "$id" >/dev/null 2>&1; done
echo "killed: $(echo $ids | wc -w) containers of $namespace"
stop containerd
log=$LOG/containerd.log
echo "=== $(date -Is) start" >> "$log"
lines=$(wc -l < "$log")
setsid nohup "$(command -v containerd)" --config "$CONF/containerd.toml" \
  >> "$log" 2>&1 < /dev/null 9>&- &
echo $! > "$RUN/containerd.pid"
cri_serves() { tail -n "+$lines" "$log" | grep -q "Start streaming server"; }
wait_for 60 "containerd's CRI" cri_serves
sleep 1
# three tries: a started kubelet can exit once more, and `up` can fail in its bridge
# check (see k8s_local_up)
for attempt in 1 2 3; do
  "$HERE/up" && alive kubelet && exit 0
  echo "up, attempt $attempt: failed, or the kubelet is not running" >&2
done
exit 1
"""
)


#: A real `taxi-job train` that freezes once, on the volume's first run of it, with its
#: version written whole under its hidden name and not yet renamed into place: a fault
#: catches it there for sure, however fast it trains (a month in seconds). The marker
#: names that folder; its retries find the marker and run as they are. The frozen run
#: still ends on SIGTERM like any (exit 143, job.cli.main's handler).
FROZEN_TRAIN = f"""
import pathlib, time
from job import artifacts
from job.cli import main
sync = artifacts.fsync_dir
marker = pathlib.Path("{VOLUME}/artifacts/frozen-train")
def frozen(path):
    sync(path)
    if path.name.startswith(".tmp-") and not marker.exists():
        marker.write_text(path.name)
        while True:
            time.sleep(0.5)
artifacts.fsync_dir = frozen
main()
"""


def frozen_training(ns: str, name: str, *args: str, **spec: Any) -> str:
    """Start a Job of the train template running :data:`FROZEN_TRAIN` with ``args``; once
    it is frozen, the name of its pod."""
    from e2e import create_job, exec_python

    command = ["python", "-c", FROZEN_TRAIN, "train", *args]
    create_job(ns, job_from(ns, "train", name, command=command, owned=True, **spec))
    marker = f"{VOLUME}/artifacts/frozen-train"
    probe = f"import os; print(open({marker!r}).read() if os.path.exists({marker!r}) else '')"
    wait_until(
        f"{name} frozen before it publishes",
        lambda: exec_python(ns, name, probe, check=False).strip(),
        300,
    )
    return str(pods(ns, name)[-1]["metadata"]["name"])


def slowed(cronjob: str, cpu: str) -> Obj:
    """A CPU limit for a CronJob's container: its run lasts long enough to be caught
    mid-run on a fast machine."""
    return cronjob_patch(cronjob, [{
        "op": "replace",
        "path": "/spec/jobTemplate/spec/template/spec/containers/0/resources/limits/cpu",
        "value": cpu,
    }])  # fmt: skip


def restart_node(namespace: str) -> float:
    """Restart the node's kubelet and containerd, ``namespace``'s pods dying with them;
    the time when the node is back (wall clock). Whatever fails, the node is started
    again (`up`) before this returns or raises."""
    need_k8s_local("restarting the node")
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", "-c", RESTART, "restart", str(K8S_LOCAL), namespace],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:  # the node back whatever happened: the cluster is shared
        up = k8s_local_up()
    print(f"node restarted in {time.monotonic() - started:.0f} s; {done.stdout.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr + up.stdout + up.stderr
    assert "killed: 0 " not in done.stdout, done.stdout  # our pods were running
    return time.time()


#: Stop the cluster's kube-apiserver, and the relay that gives pods its address on the
#: node (the `kubernetes` Service's endpoint, on the same port: `up` would not start the
#: API server while the relay holds it). `up` starts both again.
STOP_API_SERVER = (
    STOP
    + r"""
for n in api-relay kube-apiserver; do
  alive "$n" || { echo "$n is not running" >&2; exit 1; }
done
stop api-relay && stop kube-apiserver
"""
)


def k8s_local_up(attempts: int = 3) -> subprocess.CompletedProcess[str]:
    """k8s-local's `up` (idempotent), tried up to ``attempts`` times; the last result.

    `up` checks the node's bridge address with ``ip addr show | grep -q`` under
    ``pipefail``: when grep has matched and exits before ``ip`` has written its last
    line, ``ip`` dies of SIGPIPE (141), the check says "no address", and `up` fails with
    "Error: ipv4: Address already assigned." One to two checks in 100 do that while the
    bridge exists, which is every `up` after a fault (a CI run failed of it). The script
    is shared and read-only here; a second `up` runs the check again.
    """
    for attempt in range(1, attempts + 1):
        up = subprocess.run([str(K8S_LOCAL / "up")], capture_output=True, text=True,
                            timeout=300, check=False)  # fmt: skip
        if up.returncode == 0:
            return up
        print(f"k8s-local up, attempt {attempt} of {attempts}: {up.stderr.strip()}")
    return up


def need_k8s_local(doing: str) -> None:
    """Fail (in CI) or skip unless this process can disturb k8s-local's processes."""
    if os.geteuid() != 0 or not (K8S_LOCAL / "up").exists():
        message = f"{doing} needs root and k8s-local at {K8S_LOCAL}"
        if require_tools():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@contextlib.contextmanager
def api_server_stopped() -> Iterator[None]:
    """The cluster's real API server stopped for the block (every client's connections
    cut, new ones refused; the kubelet runs its pods on, the controllers wait), then
    started again by `up`, which returns once it serves and the node is Ready. It is
    started again whatever happens in the block: the cluster is shared."""
    need_k8s_local("stopping the API server")
    stop = subprocess.run(
        ["bash", "-c", STOP_API_SERVER, "stop", str(K8S_LOCAL)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    try:
        assert stop.returncode == 0, stop.stdout + stop.stderr
        yield
    finally:
        up = k8s_local_up()
        assert up.returncode == 0, up.stdout + up.stderr


def job_from(
    ns: str,
    cronjob: str,
    name: str,
    *,
    args: list[str] | None = None,
    command: list[str] | None = None,
    owned: bool = False,
    **spec: Any,
) -> Obj:
    """A Job made from ``cronjob``'s template, with other args or another command and other
    Job spec fields (``backoffLimit=0``). ``owned``: owned by the CronJob, as `kubectl
    create job --from=cronjob/...` makes it, so that `taxi-job runs` lists it (and the
    CronJob's history limit may reap it)."""
    cron = json.loads(kubectl("-n", ns, "get", "cronjob", cronjob, "-o", "json"))
    template = cron["spec"]["jobTemplate"]
    body = template["spec"] | spec
    (container,) = body["template"]["spec"]["containers"]
    if args is not None:
        container["args"] = args
    if command is not None:
        container["command"], container["args"] = command, []
    metadata: Obj = {"name": name, "labels": template.get("metadata", {}).get("labels", {})}
    if owned:
        metadata["ownerReferences"] = [{
            "apiVersion": "batch/v1", "kind": "CronJob", "name": cronjob,
            "uid": cron["metadata"]["uid"], "controller": True,
        }]  # fmt: skip
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": body}


def pods(ns: str, job: str) -> list[Obj]:
    """The pods of Job ``job``, oldest first."""
    found = json.loads(kubectl("-n", ns, "get", "pods", "-l", f"job-name={job}", "-o", "json"))
    return sorted(found["items"], key=lambda p: p["metadata"]["creationTimestamp"])


def running_for(pod: Obj) -> float:
    """How long the pod's one container has been running; 0 when it is not running."""
    for status in pod.get("status", {}).get("containerStatuses", []):
        started = (status.get("state") or {}).get("running", {}).get("startedAt")
        if started:
            return (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(started)).total_seconds()
    return 0.0


def wait_until(what: str, check: Any, timeout_s: float) -> Any:
    """Poll ``check()`` until it returns something true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(2)  # polling the cluster's state, not timing it
    return result


#: Everything a user checks on the volume after a fault: the model store (CURRENT, the
#: versions, the history) and each predictions file (its model, its rows against its
#: input's), and every dot-file left in those folders (temporaries, claims).
READ_VOLUME = f"""
import json, os, pyarrow.parquet as pq
from job import artifacts
root = "{VOLUME}/artifacts"
preds = root + "/predictions/incoming"
out = {{"current": artifacts.current_version(root),
       "models": sorted(os.listdir(root + "/models")),
       "history": [json.loads(l) for l in open(root + "/history.jsonl")]
                  if os.path.exists(root + "/history.jsonl") else [],
       "hidden": sorted(n for d in (root, root + "/models", preds) if os.path.isdir(d)
                        for n in os.listdir(d) if n.startswith((".tmp-", ".claim-"))),
       "outputs": {{}}}}
for name in sorted(os.listdir(preds)) if os.path.isdir(preds) else []:
    if name.startswith("."):
        continue
    table = pq.read_table(preds + "/" + name, columns=["model_version"])
    footer = pq.read_schema(preds + "/" + name).metadata[b"taxi_job.model_version"].decode()
    rows = pq.read_metadata("{VOLUME}/data/incoming/" + name).num_rows
    out["outputs"][name] = {{"footer": footer, "rows": table.num_rows, "input_rows": rows,
                            "versions": table["model_version"].unique().to_pylist()}}
# every input each infer run of the journal predicted, and with which model
out["predicted"] = []
for day in sorted(os.listdir(root + "/runs")) if os.path.isdir(root + "/runs") else []:
    if os.path.isdir(root + "/runs/" + day):
        for entry in sorted(os.listdir(root + "/runs/" + day)):
            if entry.startswith(".") or not entry.endswith(".json"):
                continue
            run = json.load(open(root + "/runs/" + day + "/" + entry))
            summary = run.get("summary") or {{}}
            if run["command"] == "infer":
                out["predicted"] += [[os.path.basename(o), summary.get("model_version")]
                                     for o in summary.get("outputs") or []]
print(json.dumps(out))
"""


def read_volume(ns: str, name: str) -> Obj:
    """What :data:`READ_VOLUME` sees, from a Job of the infer template (its mounts, its
    user)."""
    from e2e import run_job

    run_job(ns, job_from(ns, "infer", name, command=["python", "-c", READ_VOLUME]))
    return json.loads(kubectl("-n", ns, "logs", f"job/{name}").splitlines()[-1])  # type: ignore[no-any-return]


def taxi_job_runs(ns: str) -> list[Obj]:
    """`taxi-job runs` as a user runs it from a laptop, as JSON."""
    import sys

    from e2e import KUBECONFIG

    env = {**os.environ, "TAXI_JOB_KUBECONFIG": KUBECONFIG, "TAXI_JOB_NAMESPACE": ns}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("taxi-job")), "runs", "--output-format", "json"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])["runs"]  # type: ignore[no-any-return]
