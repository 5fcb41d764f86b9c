"""The shared-volume protocol on a real cluster: a fresh install's first scheduled `infer`
succeeds while it waits for a model; three `infer` Jobs started while a fourth is frozen
before publishing (every pod pid 1) publish each output exactly once, whole; a bad file
in the queue goes to `rejected/`, the Job that found it fails at once, and the next run is
clean.

Runs only when TAXI_JOB_TEST_KUBECONFIG names a kubeconfig and TAXI_JOB_TEST_IMAGE an
image the cluster's node has (k8s-local: ``load-image``). Everything happens in a
namespace of its own (prefix TAXI_JOB_TEST_NAMESPACE_PREFIX), deleted at the end:
test_e2e_models's deployment, whose every-minute infer this test turns on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from e2e import OWN_NAMESPACE_MARKS, condition, exec_python, job_ended, kubectl, run_job
from test_e2e_models import namespace  # noqa: F401 - the fixture: the repository, deployed

from job.errors import EXIT_BAD_INPUT

pytestmark = OWN_NAMESPACE_MARKS

VOLUME = "/var/lib/taxi-job"
BIG = "yellow_tripdata_2021-04.parquet"
BIG_ROWS = 2_000_000

#: A real `taxi-job infer` frozen after writing its first input's predictions, before it
#: publishes them (it waits for a file on the volume): the other runs overlap it for sure,
#: however fast they predict, and it still holds, and renews, its claim.
FROZEN = f"""
import pathlib, sys, time
from job import inference
from job.cli import cli
predict = inference._predict_file
def frozen(source, *args, **kwargs):
    out = predict(source, *args, **kwargs)
    marker = pathlib.Path("{VOLUME}/artifacts/frozen")
    if not marker.exists():
        marker.write_text(source.name)
        while not pathlib.Path("{VOLUME}/artifacts/go").exists():
            time.sleep(0.2)
    return out
inference._predict_file = frozen
cli.main(sys.argv[1:], prog_name="taxi-job")
"""

READ_VOLUME = f"""
import json, os, pyarrow.parquet as pq
from job import artifacts
out = {{"current": artifacts.current_version("{VOLUME}/artifacts"), "outputs": {{}}}}
for folder in ("{VOLUME}/artifacts/predictions/incoming", "{VOLUME}/data/rejected"):
    out[folder] = sorted(os.listdir(folder))
for name in out["{VOLUME}/artifacts/predictions/incoming"]:
    if name.startswith("."):
        continue
    path = "{VOLUME}/artifacts/predictions/incoming/" + name
    table = pq.read_table(path, columns=["model_version"])
    footer = pq.read_schema(path).metadata[b"taxi_job.model_version"].decode()
    rows = pq.read_metadata("{VOLUME}/data/incoming/" + name).num_rows
    out["outputs"][name] = {{"footer": footer, "rows": table.num_rows, "input_rows": rows,
                            "versions": table["model_version"].unique().to_pylist()}}
print(json.dumps(out))
"""


def infer_job(ns: str, name: str, args: list[str] | None = None,
              command: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """A Job made from the infer CronJob's template, as a user's manual run (no owner, so
    the CronJob's history limit does not reap it), with other args or another command."""
    infer = json.loads(kubectl("-n", ns, "get", "cronjob", "infer", "-o", "json"))
    spec = infer["spec"]["jobTemplate"]["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    # The bad file arrives by rename, whole: judged at once rather than after the
    # ConfigMap's settle time (30 s) for files that may still be being copied in.
    container.setdefault("env", []).append({"name": "TAXI_JOB_SETTLE_SECONDS", "value": "0"})
    if args is not None:
        container["args"] = args
    if command is not None:
        container["command"], container["args"] = command, []
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def finished(ns: str, name: str, timeout_s: float = 600) -> tuple[str, int, dict]:
    """Wait for Job ``name`` to end; its condition, its pod's exit code and summary."""
    job = job_ended(ns, name, timeout_s)
    done = "Complete" if condition(job, "Complete") else "Failed"
    pods = json.loads(kubectl("-n", ns, "get", "pods", "-l", f"job-name={name}",
                              "-o", "json"))["items"]  # fmt: skip
    state = pods[-1]["status"]["containerStatuses"][0]["state"]["terminated"]
    return done, state["exitCode"], json.loads(state.get("message") or "{}")


def test_first_minute_overlapping_infers_and_quarantine(namespace: str) -> None:  # noqa: F811
    # 1. A fresh install: the schedule's first infer runs before any model, and succeeds.
    kubectl("-n", namespace, "patch", "cronjob", "infer", "-p", '{"spec":{"suspend":false}}')

    def first_scheduled() -> str | None:
        jobs = json.loads(kubectl("-n", namespace, "get", "jobs", "-o", "json"))["items"]
        names = [j["metadata"]["name"] for j in jobs if j["metadata"]["name"].startswith("infer-")]
        return names[0] if names else None

    deadline = time.monotonic() + 180
    while (scheduled := first_scheduled()) is None:
        assert time.monotonic() < deadline, "the infer CronJob started no Job"
        time.sleep(2)
    kubectl("-n", namespace, "patch", "cronjob", "infer", "-p", '{"spec":{"suspend":true}}')
    state, code, summary = finished(namespace, scheduled)
    assert (state, code) == ("Complete", 0), summary
    assert summary["waiting_for_model"] is True and summary["model_version"] is None

    # 2. Data, a model, a big input and a bad one in the queue.
    run_job(namespace, from_cronjob="seed-sample-data", name="seed")
    run_job(namespace, from_cronjob="train", name="train")
    big = ["sample-data", "--month", "2021-04", "--rows", str(BIG_ROWS), f"{VOLUME}/data/incoming"]
    run_job(namespace, infer_job(namespace, "big", big))
    bad = f"{VOLUME}/data/incoming/bad.parquet"
    put = f"printf 'PAR1 not parquet' > {bad}.part && mv {bad}.part {bad}"
    run_job(namespace, infer_job(namespace, "put-bad", command=["sh", "-c", put]))

    # 3. Three infer runs while a fourth is frozen before publishing its first input:
    # that input is busy for all three; every other input predicted by exactly one, the
    # bad file rejected by exactly one (its Job fails at once), nobody fails confusingly.
    kubectl("-n", namespace, "create", "-f", "-", stdin=json.dumps(
        infer_job(namespace, "frozen", command=["python", "-c", FROZEN, "infer"])))  # fmt: skip
    marker = f"{VOLUME}/artifacts/frozen"
    read_marker = f"import os; print(open({marker!r}).read() if os.path.exists({marker!r}) else '')"
    deadline = time.monotonic() + 300
    while not (held := exec_python(namespace, "frozen", read_marker, check=False).strip()):
        assert time.monotonic() < deadline, "the frozen infer never reached its publish"
        time.sleep(2)  # polling the volume's state, not timing the runs
    names = [f"infer-by-hand-{k}" for k in range(3)]
    for name in names:
        kubectl("-n", namespace, "create", "-f", "-",
                stdin=json.dumps(infer_job(namespace, name)))  # fmt: skip
    results = [finished(namespace, name) for name in names]
    assert all(r[2]["inputs_busy"] >= 1 for r in results), results  # they overlapped it
    exec_python(namespace, "frozen", f"open('{VOLUME}/artifacts/go', 'w')")
    results.append(finished(namespace, "frozen"))
    assert results[-1][2]["outputs"][0].endswith("/" + held), results[-1]
    rejecting = [r for r in results if r[2].get("inputs_rejected")]
    assert len(rejecting) == 1, results
    assert rejecting[0][:2] == ("Failed", EXIT_BAD_INPUT)
    assert rejecting[0][2]["rejected"][0]["moved_to"] == f"{VOLUME}/data/rejected/bad.parquet"
    assert all(r[:2] == ("Complete", 0) for r in results if r is not rejecting[0]), results
    predicted = [o for r in results for o in r[2]["outputs"]]
    assert sorted(Path(o).name for o in predicted) == sorted(
        [BIG, "yellow_tripdata_2021-03.parquet"]
    ), results

    # 4. What is on the volume: whole outputs of the current model, the bad file set
    # aside with its note, no temporary and no claim left.
    reader = infer_job(namespace, "read-volume", command=["python", "-c", READ_VOLUME])
    run_job(namespace, reader)
    volume = json.loads(kubectl("-n", namespace, "logs", "job/read-volume").splitlines()[-1])
    assert volume[f"{VOLUME}/data/rejected"] == ["bad.parquet", "bad.parquet.json"]
    queue = volume[f"{VOLUME}/artifacts/predictions/incoming"]
    assert [n for n in queue if n.startswith(".")] == [".predicted.json"]  # no temporary
    assert sorted(volume["outputs"]) == sorted([BIG, "yellow_tripdata_2021-03.parquet"])
    for output in volume["outputs"].values():
        assert output["versions"] == [output["footer"]] == [volume["current"]]
        assert output["rows"] == output["input_rows"]

    # 5. The next run is clean.
    kubectl("-n", namespace, "create", "-f", "-", stdin=json.dumps(infer_job(namespace, "next")))
    state, code, summary = finished(namespace, "next")
    assert (state, code) == ("Complete", 0), summary
    assert (summary["inputs_skipped"], summary["inputs_rejected"]) == (2, 0)
