"""A backlog on a real cluster: 2,000 small files dropped into the volume's
``incoming/`` at once, drained by successive ``infer`` runs (Jobs from the infer CronJob's
template, given a small ``TAXI_JOB_BUDGET_SECONDS``): each file predicted exactly once by
the one model, the oldest first (every input of run k is older than every input of run
k+1), and ``inputs_waiting`` falling run after run to 0, in each run's termination
message and in ``taxi-job runs``.

Why 2,000 files and a 6-second budget, not 10,000 files: an infer pod here predicts
12 to 160 small files a second (one CPU, on a 2-core machine shared with the rest of the
suite and more), so 10,000 files take 1 to 14 minutes of predicting alone, over what this
suite gives one test under load (3,000 files with a 10-second budget took 4.4 minutes at a
load average of 11). 2,000 files with a small budget take the same drain over several
runs (3 when the machine is quiet, 30 when it is very busy), which is what is checked;
benchmarks/backlog.py measures 20,000 on one machine.
The every-minute schedule is suspended: the test starts each run itself, one after the
other, as the schedule would (``concurrencyPolicy: Forbid``), without waiting a minute
between them.

Runs only when TAXI_JOB_TEST_KUBECONFIG names a kubeconfig and TAXI_JOB_TEST_IMAGE an
image the cluster's node has (k8s-local: ``load-image``). Everything happens in a
namespace of its own (prefix TAXI_JOB_TEST_NAMESPACE_PREFIX), deleted at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from e2e import (
    IMAGE,
    OWN_NAMESPACE_MARKS,
    SUSPEND_INFER,
    condition,
    create_job,
    cronjob_patch,
    job_ended,
    kubectl,
    own_namespace,
    run_job,
    small_requests,
    termination_summary,
    write_overlay,
)
from test_e2e_models import taxi_job

pytestmark = OWN_NAMESPACE_MARKS

VOLUME = "/var/lib/taxi-job"
INCOMING = f"{VOLUME}/data/incoming"
PREDICTIONS = f"{VOLUME}/artifacts/predictions/incoming"
#: The seeded month already in the queue (manifests/jobs/seed-sample-data.yaml).
SEEDED = "yellow_tripdata_2021-03.parquet"
FILES = 2000
ROWS = 100
BUDGET_S = 6
#: More runs than this and the backlog is not draining: the test stops there.
MAX_RUNS = 60

#: FILES copies of ROWS trips of the seeded month, written beside the queue and renamed
#: into it together (dropped at once). Each gets its own modification time, seconds apart
#: (more than a run takes: the oldest waiting one gets younger run after run) and older by
#: name (the order ``infer`` must take them in), all in the past; the
#: seeded month, older still, comes first.
DROP = f"""
import os, shutil, time, pyarrow.parquet as pq
incoming, stage = {INCOMING!r}, {VOLUME!r} + "/data/.stage"
os.makedirs(stage, exist_ok=True)
first = stage + "/first"
pq.write_table(pq.read_table(incoming + "/" + {SEEDED!r}).slice(0, {ROWS}), first)
now = time.time()
os.utime(incoming + "/" + {SEEDED!r}, (now - {3 * FILES} - 7200,) * 2)
names = []
for i in range({FILES}):
    name = "trips-%05d.parquet" % i
    shutil.copyfile(first, stage + "/" + name)
    os.utime(stage + "/" + name, (now - {3 * FILES} - 600 + 3 * i,) * 2)
    names.append(name)
os.remove(first)
for name in names:
    os.rename(stage + "/" + name, incoming + "/" + name)
print(len(os.listdir(incoming)))
"""

#: What is on the volume once drained: every output's model version (its footer) and rows,
#: leftovers (claims, temporaries), the current model, and the journal's record of each
#: run (the whole summary: every output in the order predicted, which a termination
#: message of 4 KiB cuts).
READ_VOLUME = f"""
import json, os, pathlib, pyarrow.parquet as pq
from job import artifacts, journal
root = {VOLUME!r} + "/artifacts"
outputs = {{}}
for name in os.listdir({PREDICTIONS!r}):
    if name.startswith("."):
        continue
    meta = pq.read_metadata({PREDICTIONS!r} + "/" + name)
    outputs[name] = [meta.metadata[b"taxi_job.model_version"].decode(), meta.num_rows]
runs = {{r["job"]: r["summary"]["outputs"] for r in journal.read(pathlib.Path(root))
        if r.get("command") == "infer" and r.get("summary")}}
print(json.dumps({{
    "current": artifacts.current_version(root),
    "versions": artifacts.versions(root),
    "outputs": outputs,
    "hidden": sorted(n for n in os.listdir({PREDICTIONS!r}) if n.startswith(".")),
    "inputs": sorted(os.listdir({INCOMING!r})),
    "journal": runs,
}}))
"""


def overlay(directory: Path, namespace: str) -> Path:
    """The repository in ``namespace``, on the test image, the schedule suspended, and the
    infer CronJob's runs given a small budget (an env entry wins over the ConfigMap's)."""
    budget = cronjob_patch("infer", [{
        "op": "add",
        "path": "/spec/jobTemplate/spec/template/spec/containers/0/env/-",
        "value": {"name": "TAXI_JOB_BUDGET_SECONDS", "value": str(BUDGET_S)},
    }])  # fmt: skip
    return write_overlay(
        directory, namespace, IMAGE, patches=[SUSPEND_INFER, small_requests("train"), budget]
    )


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[str]:
    with own_namespace(overlay, tmp_path) as name:
        yield name


def run_infer(ns: str, name: str) -> dict[str, Any]:
    """Run one infer Job from the CronJob, as ``kubectl create job --from`` does, to its
    end; its summary (the pod's termination message)."""
    job = job_ended(ns, create_job(ns, from_cronjob="infer", name=name), timeout_s=300)
    pods = json.loads(kubectl("-n", ns, "get", "pods", "-l", f"job-name={name}", "-o", "json"))
    summary = termination_summary(pods["items"][-1], "infer")
    assert condition(job, "Complete"), (name, summary)
    return summary


def runs(ns: str) -> dict[str, dict[str, Any]]:
    """``taxi-job runs`` as a user runs it from a laptop, by run name."""
    return {r["name"]: r for r in taxi_job(ns, "runs")["runs"]}


def python_job(ns: str, name: str, code: str) -> str:
    """The last line ``python -c code`` printed, run in a Job of the infer template's pod
    (the volume mounted as the runs see it)."""
    infer = json.loads(kubectl("-n", ns, "get", "cronjob", "infer", "-o", "json"))
    spec = infer["spec"]["jobTemplate"]["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    container["command"], container["args"] = ["python", "-c", code], []
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}
    run_job(ns, job, timeout_s=300)
    return kubectl("-n", ns, "logs", f"job/{name}").strip().splitlines()[-1]


def test_a_dropped_backlog_drains_oldest_first_each_file_once(namespace: str) -> None:
    run_job(namespace, from_cronjob="seed-sample-data", name="seed")
    run_job(namespace, from_cronjob="train", name="train")
    assert int(python_job(namespace, "drop", DROP)) == FILES + 1

    summaries: dict[str, dict[str, Any]] = {}
    listed: dict[str, dict[str, Any]] = {}
    while not summaries or list(summaries.values())[-1]["inputs_waiting"] > 0:
        assert len(summaries) < MAX_RUNS, summaries
        name = f"backlog-{len(summaries) + 1:02d}"
        summaries[name] = run_infer(namespace, name)
        # Now, before the next run: the CronJob keeps one succeeded Job (its history limit).
        listed[name] = runs(namespace)[name]
    names = list(summaries)
    for name, s in summaries.items():  # the drain, for the CI log
        print(f"{name}: predicted {s['inputs_predicted']}, waiting {s['inputs_waiting']}, "
              f"oldest waiting {s['oldest_waiting_seconds']} s, {s['seconds']} s")  # fmt: skip
    waiting = [s["inputs_waiting"] for s in summaries.values()]
    predicted = [s["inputs_predicted"] for s in summaries.values()]
    # The budget split the drain over several runs; each run's summary says what waits,
    # and that falls run after run to none: the files no run has predicted yet.
    assert len(names) >= 2, summaries
    assert sum(predicted) == FILES + 1, predicted
    assert all(p > 0 for p in predicted), predicted
    assert waiting == [FILES + 1 - sum(predicted[: k + 1]) for k in range(len(names))]
    assert waiting[-1] == 0 and all(a > b for a, b in pairwise(waiting)), waiting
    ages = [s["oldest_waiting_seconds"] for s in summaries.values()]
    assert ages[-1] is None and all(a > b for a, b in pairwise(ages[:-1])), ages
    assert all(s["inputs_rejected"] == 0 and s["inputs_busy"] == 0 for s in summaries.values())

    # The next run finds nothing to do.
    after = run_infer(namespace, "after")
    assert (after["inputs_predicted"], after["inputs_skipped"]) == (0, FILES + 1), after
    assert (after["inputs_waiting"], after["oldest_waiting_seconds"]) == (0, None), after

    # `taxi-job runs`, asked after each run, showed the same progress.
    assert [listed[n]["summary"]["inputs_waiting"] for n in names] == waiting
    assert all((listed[n]["command"], listed[n]["state"]) == ("infer", "succeeded") for n in names)

    # The volume: one output per input, all of the one model, whole; the journal's full
    # summaries: together the inputs in the order they came, each once.
    volume = json.loads(python_job(namespace, "read-volume", READ_VOLUME))
    assert volume["versions"] == [volume["current"]]
    inputs = [n for n in volume["inputs"] if not n.startswith(".")]
    assert sorted(volume["outputs"]) == inputs
    assert {tuple(v) for n, v in volume["outputs"].items() if n != SEEDED} == {
        (volume["current"], ROWS)
    }
    assert volume["hidden"] == [".predicted.json"]  # no claim, no temporary left
    order = [Path(o).name for n in names for o in volume["journal"][n]]
    assert order == [SEEDED] + [f"trips-{i:05d}.parquet" for i in range(FILES)]
    assert [len(volume["journal"][n]) for n in names] == predicted
