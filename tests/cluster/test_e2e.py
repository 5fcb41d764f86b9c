"""End to end on a real cluster (TAXI_JOB_TEST_KUBECONFIG; CI starts ../shared/k8s-local):
the project's own kustomization and image, deployed once by scripts/first-run.sh into a
fresh namespace (conftest.py ``deployment``), then what a user does and sees, in order:

1. the first run: seed, train, infer; the predictions on the volume;
2. the every-minute infer CronJob on its own: a new file predicted, then skipped;
3. ``taxi-job launch train --wait --logs`` from outside and from inside the cluster, and
   ``taxi-job runs``;
4. the overlap guard, and the training lock (exit 75, retried);
5. bad input: the Job fails at once (podFailurePolicy) and ``runs`` names the file; a bad
   file of the queue is set aside in ``data/rejected/``, the others predicted;
6. a training pod deleted mid-run: the previous model stays current, one model published;
7. the pods ran as uid 10001, read-only root, under the restricted Pod Security Standard.

The tests run in this order and build on each other's state (one namespace, one volume):
run the file, not one test of it, when the order matters (2 needs the schedule; from 3 on
the schedule is suspended so that only the suite's own runs touch the volume).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from e2e import (
    APP_UID,
    ARTIFACTS,
    INCOMING,
    SEEDED_INPUT,
    SEEDED_ROWS,
    VOLUME,
    Deployment,
    Obj,
    condition,
    exit_codes,
    termination_summary,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: The launcher's exit codes (job/launcher.py): the launched run failed; overlap refused.
EXIT_RUN_FAILED = 70
EXIT_TRANSIENT = 75
#: The CronJob's schedule is every minute: two minutes see at least one run start.
SCHEDULE_WAIT_S = 150


def first_run_summaries(output: str) -> dict[str, Obj]:
    """first-run.sh prints ``CONTAINER: {summary}`` for each Job it ran; the last wins."""
    found = {}
    for line in output.splitlines():
        name, sep, rest = line.partition(": ")
        if sep and rest.startswith("{"):
            found[name] = json.loads(rest)
    return found


def launched_name(result_stdout: str) -> str:
    """``taxi-job launch`` prints the Job's name first (alone without --wait)."""
    return result_stdout.strip().splitlines()[0]


def job_pod_running(deployment: Deployment, job: str) -> Obj | None:
    pods = [p for p in deployment.pods_of(job) if p["status"].get("phase") == "Running"]
    return pods[-1] if pods else None


def run_named(deployment: Deployment, name: str) -> Obj:
    runs = {r["name"]: r for r in deployment.runs()}
    assert name in runs, f"taxi-job runs does not list {name}: {sorted(runs)}"
    return runs[name]


# --- 1 ---------------------------------------------------------------------------------


def test_first_run_trains_and_predicts_the_seeded_input(deployment: Deployment) -> None:
    summaries = first_run_summaries(deployment.first_run_output)
    assert {"train-month", "eval-month", "incoming", "train", "infer"} <= set(summaries), (
        deployment.first_run_output
    )
    version = summaries["train"]["model_version"]
    assert summaries["train"]["rows_read"] == 100_000  # the seeded training month
    assert deployment.current_model() == version

    predictions = deployment.predictions(SEEDED_INPUT)
    assert predictions["rows"] == SEEDED_ROWS
    assert predictions["versions"] == [version]
    assert predictions["metadata_version"] == version


# --- 2 ---------------------------------------------------------------------------------


def scheduled_infer_runs(deployment: Deployment, seen: dict[str, Obj], before: set[str]) -> None:
    """Add to ``seen`` each finished scheduled infer Job created after ``before`` was
    taken, with its summary: the CronJob keeps one successful Job, so look often."""
    for job in deployment.get_list("jobs", "-l", "app.kubernetes.io/component=infer"):
        name = job["metadata"]["name"]
        manual = job["metadata"].get("annotations", {}).get("cronjob.kubernetes.io/instantiate")
        if (
            name in before
            or name in seen
            or manual
            or not (condition(job, "Complete") or condition(job, "Failed"))
        ):
            continue
        pods = deployment.pods_of(name)
        seen[name] = {
            "created": job["metadata"]["creationTimestamp"],
            "complete": bool(condition(job, "Complete")),
            "summary": termination_summary(pods[-1], "infer") if pods else {},
        }


def test_the_infer_schedule_predicts_a_new_file_then_skips_it(deployment: Deployment) -> None:
    before = {j["metadata"]["name"] for j in deployment.get_list("jobs")}
    # sample-data writes a hidden temporary and renames it: infer never sees half a file
    deployment.shell(f"taxi-job sample-data --month 2021-04 --rows 500 {INCOMING}")
    new = "yellow_tripdata_2021-04.parquet"
    seen: dict[str, Obj] = {}

    def predicted() -> Obj | None:
        scheduled_infer_runs(deployment, seen, before)
        return next(
            (
                r
                for r in seen.values()
                if r["complete"]
                and any(o.endswith("/" + new) for o in r["summary"].get("outputs", []))
            ),
            None,
        )

    first = deployment.wait_for(
        f"a scheduled infer run predicting {new}", predicted, SCHEDULE_WAIT_S
    )
    assert first["summary"]["inputs_predicted"] == 1

    def skipped() -> Obj | None:
        scheduled_infer_runs(deployment, seen, before)
        return next(
            (r for r in seen.values() if r["created"] > first["created"] and r["complete"]), None
        )

    second = deployment.wait_for("the next scheduled infer run", skipped, SCHEDULE_WAIT_S)
    assert second["summary"]["inputs_predicted"] == 0
    assert second["summary"]["inputs_skipped"] == 2  # the seeded input and the new one
    predictions = deployment.predictions(new)
    assert predictions["rows"] == 500
    assert predictions["versions"] == [deployment.current_model()]

    # Two scheduled runs finished after the first run's infer Job, and the CronJob keeps
    # one successful Job of those it controls: first-run.sh's Jobs are owned by their
    # CronJob but not controlled by it, so they are still there, for a week.
    first_run = {
        j["metadata"]["name"]: j
        for j in deployment.get_list("jobs")
        if j["metadata"]["name"] in before
        and j["metadata"].get("annotations", {}).get("cronjob.kubernetes.io/instantiate")
        == "manual"
    }
    assert sorted(name.rsplit("-", 1)[0] for name in first_run) == [
        "infer",
        "seed-sample-data",
        "train",
    ]
    for job in first_run.values():
        (owner,) = job["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["controller"]) == ("CronJob", False)
        assert job["spec"]["ttlSecondsAfterFinished"] == 7 * 24 * 3600
        assert condition(job, "Complete")


@pytest.fixture(scope="module")
def quiet(deployment: Deployment) -> Iterator[Deployment]:
    """The infer schedule suspended: from here on only the suite's runs touch the volume."""
    deployment.kubectl(
        "patch", "cronjob/infer", "--type=merge", "-p", '{"spec": {"suspend": true}}'
    )

    def idle() -> bool:
        jobs = deployment.get_list("jobs", "-l", "app.kubernetes.io/component=infer")
        return not any(j["status"].get("active") for j in jobs)

    deployment.wait_for("scheduled infer runs to end", idle, 120)
    yield deployment


# --- 3 ---------------------------------------------------------------------------------


def test_launch_train_from_outside_and_inside_then_runs(quiet: Deployment) -> None:
    outside = quiet.taxi_job("launch", "train", "--wait", "--logs", "--timeout", "300")
    assert outside.returncode == 0, outside.stdout + outside.stderr
    outside_job = launched_name(outside.stdout)
    # the pod's log, streamed: the training's own JSON log lines
    logged = [json.loads(line) for line in outside.stdout.splitlines() if line.startswith("{")]
    assert any(line.get("message", "").startswith("published model") for line in logged), (
        outside.stdout
    )
    # the summary, as aligned `key  value` lines
    shown = dict(re.findall(r"^(\w+) +(\S.*)$", outside.stdout, re.MULTILINE))
    assert shown["state"] == "succeeded"
    assert float(shown["rmse_eval"]) > 0
    assert quiet.current_model() == shown["model_version"]

    # From inside: the example Job, with the launcher ServiceAccount's token.
    launcher = quiet.apply_manifest("manifests/jobs/launch-train.yaml", "launcher", create=True)[
        "metadata"
    ]["name"]
    job = quiet.job_finished(launcher, timeout=300)
    assert condition(job, "Complete"), quiet.explain(launcher)
    (pod,) = quiet.pods_of(launcher)
    inside = termination_summary(pod, "launcher")
    assert inside["state"] == "succeeded"
    log = quiet.kubectl("logs", pod["metadata"]["name"]).stdout
    assert inside["job"] in log.splitlines()[0]  # the name, then the training's log
    assert "published model" in log
    assert quiet.current_model() == inside["model_version"] != shown["model_version"]

    for name, version in (
        (outside_job, shown["model_version"]),
        (inside["job"], inside["model_version"]),
    ):
        run = run_named(quiet, name)
        assert (run["command"], run["trigger"], run["state"]) == ("train", "manual", "succeeded")
        assert run["summary"]["model_version"] == version
        assert run["summary"]["rmse_eval"] > 0


# --- 4 ---------------------------------------------------------------------------------


def launch(deployment: Deployment, *args: str) -> str:
    result = deployment.taxi_job("launch", "train", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return launched_name(result.stdout)


def test_overlap_guard_then_the_lock_makes_the_second_training_retry(quiet: Deployment) -> None:
    # The lock held from the volume shell stands for a long training (ours take a second):
    # the first waits for it (the ConfigMap's TAXI_JOB_LOCK_TIMEOUT, 60 s), the second is
    # told not to wait (lock-timeout=0).
    with quiet.holding_training_lock():
        first = launch(quiet)
        quiet.wait_for(f"{first}'s pod to run", lambda: job_pod_running(quiet, first), 120, first)

        refused = quiet.taxi_job("launch", "train")
        assert refused.returncode == EXIT_TRANSIENT, refused.stdout + refused.stderr
        assert f"{first} (manual" in refused.stderr

        second = launch(quiet, "--allow-overlap", "--set", "lock-timeout=0")
        quiet.wait_for(
            f"{second} to exit 75",
            lambda: EXIT_TRANSIENT in exit_codes(quiet.pods_of(second), "train"),
            120,
            second,
        )

    done = {name: quiet.job_finished(name) for name in (first, second)}
    for name, job in done.items():
        assert condition(job, "Complete"), quiet.explain(name)
    # the first waited for the lock and went on; the second's Job retried it
    assert exit_codes(quiet.pods_of(first), "train") == [0]
    pods = quiet.pods_of(second)
    assert exit_codes(pods, "train")[0] == EXIT_TRANSIENT
    assert exit_codes(pods, "train")[-1] == 0
    # the refusal names who holds the lock (here the suite's note in the lock file)
    refusal = quiet.kubectl("logs", pods[0]["metadata"]["name"]).stdout
    assert ".train.lock: held by the end-to-end suite; a training cannot run" in refusal
    versions = {termination_summary(quiet.pods_of(n)[-1], "train")["model_version"] for n in done}
    assert len(versions) == 2
    assert quiet.current_model() in versions


# --- 5 ---------------------------------------------------------------------------------


def failed_at_once(deployment: Deployment, name: str) -> Obj:
    """The Job failed through its podFailurePolicy, after one pod: no retry."""
    job = deployment.job_finished(name)
    failed = condition(job, "Failed")
    assert failed and failed["reason"] == "PodFailurePolicy", deployment.explain(name)
    assert job["status"].get("failed") == 1
    assert len(deployment.pods_of(name)) == 1
    return job


def test_bad_input_fails_the_job_at_once_and_runs_names_the_file(quiet: Deployment) -> None:
    # a corrupt file and a good one, each written under another name and then renamed:
    # the way a file should arrive
    corrupt = f"{INCOMING}/corrupt.parquet"
    quiet.shell(
        f"printf 'PAR1 not really parquet' > {INCOMING}/.c && mv {INCOMING}/.c {corrupt}"
        f" && taxi-job sample-data --month 2021-05 --rows 300 {INCOMING}"
    )
    good = "yellow_tripdata_2021-05.parquet"
    try:
        # --set settle-seconds=0: the file arrived by rename, whole; the scheduled run
        # (the ConfigMap's 30 s for files still being copied in) would reject it a run later.
        result = quiet.taxi_job(
            "launch", "infer", "--wait", "--timeout", "300", "--set", "settle-seconds=0"
        )
        assert result.returncode == EXIT_RUN_FAILED, result.stdout + result.stderr
        name = launched_name(result.stdout)
        failed_at_once(quiet, name)
        assert exit_codes(quiet.pods_of(name), "infer") == [2]
        run = run_named(quiet, name)
        assert run["state"] == "failed"
        assert "corrupt.parquet" in run["summary"]["error"]
        # the bad file set aside with the reason beside it, the good one predicted
        assert run["summary"]["inputs_rejected"] == 1
        # (the queue's older files too: a newer model has been trained since)
        assert f"{ARTIFACTS}/predictions/incoming/{good}" in run["summary"]["outputs"]
        rejected = f"{VOLUME}/data/rejected/corrupt.parquet"
        assert run["summary"]["rejected"][0]["moved_to"] == rejected
        note = json.loads(quiet.shell(f"cat {rejected}.json"))
        assert "corrupt.parquet" in note["error"]
        queue = quiet.shell(f"ls {INCOMING}").split()
        assert "corrupt.parquet" not in queue
        assert good in queue
        assert quiet.predictions(good)["rows"] == 300
    finally:
        quiet.shell(f"rm -f {corrupt}")
    # the next run is clean
    again = quiet.taxi_job("launch", "infer", "--wait", "--timeout", "300")
    assert again.returncode == 0, again.stdout + again.stderr

    model = quiet.current_model()
    missing = f"{VOLUME}/data/no-such-month.parquet"
    result = quiet.taxi_job("launch", "train", "--wait", "--set", f"train-data={missing}")
    assert result.returncode == EXIT_RUN_FAILED, result.stdout + result.stderr
    name = launched_name(result.stdout)
    failed_at_once(quiet, name)
    assert exit_codes(quiet.pods_of(name), "train") == [2]
    run = run_named(quiet, name)
    assert "no-such-month.parquet" in run["summary"]["error"]
    assert quiet.current_model() == model


# --- 6 ---------------------------------------------------------------------------------


def test_a_training_pod_deleted_mid_run_leaves_the_model_then_publishes_once(
    quiet: Deployment,
) -> None:
    model, versions = quiet.current_model(), quiet.model_versions()
    # The held lock keeps the training inside its run (started, nothing published yet)
    # until the pod is gone: ours take a second otherwise.
    with quiet.holding_training_lock():
        name = launch(quiet)
        pod = quiet.wait_for(
            f"{name}'s pod to run", lambda: job_pod_running(quiet, name), 120, name
        )["metadata"]["name"]
        quiet.kubectl("delete", "pod", pod, "--wait=true", "--timeout=60s")
        assert quiet.current_model() == model

        def replaced() -> Obj | None:
            return next((p for p in quiet.pods_of(name) if p["metadata"]["name"] != pod), None)

        quiet.wait_for(f"{name} to start another pod", replaced, 120, name)
        assert quiet.current_model() == model

    job = quiet.job_finished(name)
    assert condition(job, "Complete"), quiet.explain(name)
    published = sorted(set(quiet.model_versions()) - set(versions))
    assert len(published) == 1
    assert quiet.current_model() == published[0]
    assert termination_summary(quiet.pods_of(name)[-1], "train")["model_version"] == published[0]


# --- 7 ---------------------------------------------------------------------------------


def test_pods_ran_as_the_app_user_read_only_under_restricted(deployment: Deployment) -> None:
    namespace = deployment.get(f"namespace/{deployment.namespace}")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"

    # every train and infer pod of the run so far, as the API server admitted it
    pods = [
        p
        for p in deployment.get_list("pods", "-l", "taxi-job/data-volume=true")
        if p["metadata"]["name"] != "volume-shell"
    ]
    assert {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods} >= {
        "seed-sample-data",
        "train",
        "infer",
    }
    for pod in pods:
        spec = pod["spec"]
        assert spec["securityContext"]["runAsUser"] == APP_UID
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert any(0 in exit_codes([p], c["name"]) for p in pods for c in p["spec"]["containers"])

    # what the jobs wrote belongs to the app user, and a process of the image cannot
    # write outside the volume and /tmp
    written = deployment.predictions(SEEDED_INPUT)
    assert (written["uid"], written["gid"]) == (APP_UID, APP_UID)
    owners = deployment.shell(f"stat -c '%u:%g %n' {ARTIFACTS}/CURRENT {VOLUME}/data/*.parquet")
    assert {line.split()[0] for line in owners.splitlines()} == {f"{APP_UID}:{APP_UID}"}
    assert deployment.shell("id -u").strip() == str(APP_UID)
    refused = deployment.kubectl(
        "exec", "volume-shell", "--", "touch", "/opt/taxi-job/x", check=False
    )
    assert refused.returncode != 0
    assert "Read-only file system" in refused.stderr

    # the namespace refuses a pod that would run as root
    root_pod = deployment.kubectl(
        "run",
        "as-root",
        "--image",
        deployment.image,
        "--restart=Never",
        "--dry-run=server",
        "--overrides",
        json.dumps({"spec": {"securityContext": {"runAsUser": 0}}}),
        "--command",
        "--",
        "id",
        check=False,
    )
    assert root_pod.returncode != 0
    assert "violates PodSecurity" in root_pod.stderr
