"""The node's kubelet and containerd restarted under a running training and a running
scheduled infer, their containers killed as a reboot kills them (k8s-local, in a
namespace of its own; faults.py says how): the killed runs are retried, the model that
was current stays current until a whole training replaces it, the every-minute CronJob
starts Jobs again, and once the runs after the restart have swept the volume no
temporary, claim or half version is left, every input is predicted, whole, by one model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e import (
    IMAGE,
    SUSPEND_INFER,
    condition,
    cronjob_patch,
    exec_python,
    job_ended,
    kubectl,
    own_namespace,
    run_job,
    small_requests,
    write_overlay,
)
from faults import (
    FAULTS_MARKS,
    VOLUME,
    frozen_training,
    job_from,
    pods,
    read_volume,
    restart_node,
    taxi_job_runs,
    wait_until,
)
from test_e2e_volume import FROZEN

pytestmark = FAULTS_MARKS

BIG = "yellow_tripdata_2021-04.parquet"
BIG_ROWS = 2_000_000
SMALL = "yellow_tripdata_2021-03.parquet"
CONTAINER = "/spec/jobTemplate/spec/template/spec/containers/0"
#: The schedule's infer as a real `taxi-job infer` that freezes once, on the volume's first
#: run of it, with its first input's predictions written and claimed but not published:
#: the restart catches it there for sure, however fast it predicts (test_e2e_volume.py's
#: FROZEN). Its retries and later runs find the marker and run as they are.
FROZEN_INFER = cronjob_patch("infer", [
    {"op": "add", "path": f"{CONTAINER}/command", "value": ["python", "-c", FROZEN, "infer"]},
    {"op": "replace", "path": f"{CONTAINER}/args", "value": []},
])  # fmt: skip
#: The CronJob's own command again.
THAWED = [{"op": "remove", "path": f"{CONTAINER}/command"},
          {"op": "replace", "path": f"{CONTAINER}/args", "value": ["infer"]}]  # fmt: skip


def overlay(directory: Path, namespace: str) -> Path:
    """The repository in ``namespace`` on the test image, the every-minute infer suspended
    until the test turns it on, small requests (the machine is shared), and CPU limits that
    the schedule's first infer frozen before it publishes (:data:`FROZEN_INFER`)."""
    patches = [SUSPEND_INFER, FROZEN_INFER, small_requests("train"), small_requests("infer")]
    return write_overlay(directory, namespace, IMAGE, patches=patches)


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[str]:
    with own_namespace(overlay, tmp_path) as name:
        yield name


def scheduled_infers(ns: str, after: float = 0.0) -> list[str]:
    """The names of the Jobs the infer CronJob made (created after ``after``), oldest first."""
    import datetime as dt

    jobs = json.loads(kubectl("-n", ns, "get", "jobs", "-o", "json"))["items"]
    made = [
        (j["metadata"]["creationTimestamp"], j["metadata"]["name"])
        for j in jobs
        if any(o.get("name") == "infer" for o in j["metadata"].get("ownerReferences", []))
        and dt.datetime.fromisoformat(j["metadata"]["creationTimestamp"]).timestamp() > after
    ]
    return [name for _, name in sorted(made)]


def test_node_restart_under_a_training_and_an_infer(namespace: str) -> None:
    ns = namespace
    run_job(ns, from_cronjob="seed-sample-data", name="seed")
    run_job(ns, from_cronjob="train", name="train-1")
    big = ["sample-data", "--month", "2021-04", "--rows", str(BIG_ROWS), f"{VOLUME}/data/incoming"]
    run_job(ns, job_from(ns, "train", "big", args=big))
    v1 = read_volume(ns, "read-before")["current"]

    # 1. The schedule's infer frozen before it publishes its first input (the oldest), and
    # a training of the big month frozen before it renames its version into place.
    kubectl("-n", ns, "patch", "cronjob", "infer", "-p", '{"spec":{"suspend":false}}')
    scheduled = wait_until("a scheduled infer", lambda: scheduled_infers(ns), 150)[0]
    marker = f"{VOLUME}/artifacts/frozen"
    probe = f"import os; print(open({marker!r}).read() if os.path.exists({marker!r}) else '')"
    frozen = wait_until(
        "the scheduled infer frozen before it publishes",
        lambda: exec_python(ns, scheduled, probe, check=False).strip(),
        300,
    )
    assert frozen == SMALL
    kubectl("-n", ns, "patch", "cronjob", "infer", "--type=json", "-p", json.dumps(THAWED))
    frozen_training(ns, "train-2", "--train-data", f"{VOLUME}/data/incoming/{BIG}")

    # 2. The node restarts; the two runs' containers die with it.
    back = restart_node(ns)
    after_restart = read_volume(ns, "read-after-restart")
    print("the volume after the restart:", json.dumps(after_restart))
    assert after_restart["current"] == v1, after_restart  # no half training published

    # 3. The killed runs: retried, each ends, and `taxi-job runs` says how.
    inferred = job_ended(ns, scheduled, 900)
    runs = {r["name"]: r for r in taxi_job_runs(ns)}  # before the history limit reaps it
    print("the killed infer:", json.dumps(inferred["status"]), json.dumps(runs[scheduled]))
    trained = job_ended(ns, "train-2", 900)
    assert condition(trained, "Complete"), trained["status"]
    first = pods(ns, "train-2")[0]["status"]["containerStatuses"][0]["state"]
    print("the killed training's first pod:", json.dumps(first))
    assert "terminated" in first and first["terminated"]["exitCode"] != 0, first
    runs |= {r["name"]: r for r in taxi_job_runs(ns)}
    assert runs["train-2"]["state"] == "succeeded", runs["train-2"]
    v2 = runs["train-2"]["summary"]["model_version"]
    assert v2 != v1
    if condition(inferred, "Complete"):  # retried: its new pod did the rest
        assert inferred["status"]["failed"] >= 1 and runs[scheduled]["state"] == "succeeded"
    else:
        assert runs[scheduled]["state"] == "failed" and runs[scheduled]["reason"], runs[scheduled]

    # 4. The schedule fires again after the restart.
    wait_until("an infer the CronJob started after the restart",
               lambda: scheduled_infers(ns, after=back), 240)  # fmt: skip

    # 5. The runs after the restart sweep what the killed ones left, and predict the input
    # the frozen run held with the new model once its claim has lapsed.
    def predicted_by_v2(name: str) -> bool:
        return any(
            r["command"] == "infer" and r["state"] == "succeeded"
            and r["summary"].get("model_version") == v2
            and any(o.endswith("/" + name) for o in r["summary"].get("outputs") or [])
            for r in taxi_job_runs(ns)
        )  # fmt: skip

    wait_until("the held input predicted by the new model", lambda: predicted_by_v2(SMALL), 900)
    kubectl("-n", ns, "patch", "cronjob", "infer", "-p", '{"spec":{"suspend":true}}')
    run_job(ns, job_from(ns, "infer", "sweep"))  # one more run: its sweep
    volume = read_volume(ns, "read-after")
    print(json.dumps({"after restart": after_restart, "after": volume}, indent=1))
    assert volume["hidden"] == [], volume["hidden"]  # no temporary, no claim
    assert volume["current"] == v2
    assert sorted(volume["models"]) == sorted([v1, v2])  # no half version
    assert [(h["version"], h.get("previous_version")) for h in volume["history"]] == [
        (v1, None), (v2, v1)]  # fmt: skip
    assert sorted(volume["outputs"]) == [SMALL, BIG]
    for output in volume["outputs"].values():  # whole, by one model
        assert output["versions"] == [output["footer"]] == [v2], output
        assert output["rows"] == output["input_rows"], output
    pairs = [tuple(p) for p in volume["predicted"]]
    assert len(pairs) == len(set(pairs)), pairs  # none predicted twice by one model
