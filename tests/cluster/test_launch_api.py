"""The launcher against a Kubernetes API stand-in over HTTP (kmock): the Job it creates,
the overlap guard, waiting (with a watch that expires), and the API's refusals."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

import kmock
import pytest
from kfake import CRONJOBS, JOBS, NS, FakeCluster, FakeController, make_cronjob, make_job

from job import launcher
from job.kube import ClusterError, ClusterForbiddenError


def test_launch_creates_the_job_kubectl_would(fake: FakeCluster) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))

    created = launcher.launch(
        fake.batch,
        NS,
        "train",
        settings={"TAXI_JOB_TRAIN_DATA": "/data/2024-02.parquet"},
        launched_by="tester",
    )

    [body] = fake.created_jobs()
    name = body["metadata"]["name"]
    assert created.metadata.name == name
    assert re.fullmatch(r"train-manual-\d{8}-\d{6}-[a-z0-9]{4}", name)
    template = make_cronjob("train")["spec"]["jobTemplate"]
    expected_spec = template["spec"]
    expected_spec["template"]["spec"]["containers"][0]["env"].append(
        {"name": "TAXI_JOB_TRAIN_DATA", "value": "/data/2024-02.parquet"}
    )
    assert body == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/name": "taxi-job",
                "app.kubernetes.io/component": "train",
                "taxi-job/trigger": "manual",
            },
            "annotations": {
                "cronjob.kubernetes.io/instantiate": "manual",
                "taxi-job/docs": "docs/launcher.md",
                "taxi-job/launched-by": "tester",
            },
            # Owned (deleting the CronJob deletes it), not controlled (the CronJob
            # controller leaves it out of its history, which it trims).
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": "train",
                    "uid": "uid-of-cronjob",
                    "controller": False,
                }
            ],
        },
        "spec": {**expected_spec, "ttlSecondsAfterFinished": 7 * 24 * 3600},
    }
    # POSTed to the collection of the right namespace, after reading the CronJob.
    [post] = fake.requests("post", JOBS)
    assert post.url.path == f"/apis/batch/v1/namespaces/{NS}/jobs"
    # Listed and found by its component label, not read by name (a namePrefix renames it).
    [found] = fake.requests("get", CRONJOBS)
    assert found.url.path == f"/apis/batch/v1/namespaces/{NS}/cronjobs"


def test_set_replaces_an_env_of_the_template_rather_than_doubling_it(fake: FakeCluster) -> None:
    fake.put(CRONJOBS, make_cronjob("infer"))

    launcher.launch(fake.batch, NS, "infer", settings={"TAXI_JOB_TERMINATION_LOG": "/tmp/t"})

    [body] = fake.created_jobs()
    env = body["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "TAXI_JOB_TERMINATION_LOG", "value": "/tmp/t"}]


def test_a_running_train_blocks_another_and_is_named(fake: FakeCluster) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))
    fake.put(JOBS, make_job("train-28979360", state="running"))
    fake.put(JOBS, make_job("train-28969280", state="succeeded"))

    with pytest.raises(launcher.OverlapError) as caught:
        launcher.launch(fake.batch, NS, "train")

    assert "train-28979360 (scheduled, started" in str(caught.value)
    assert "train-28969280" not in str(caught.value)
    assert "--allow-overlap" in str(caught.value)
    assert caught.value.exit_code == 75
    assert fake.created_jobs() == []


def test_a_manual_train_blocks_too_and_allow_overlap_overrides(fake: FakeCluster) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))
    fake.put(JOBS, make_job("train-manual-x", trigger="manual", state="running"))

    with pytest.raises(launcher.OverlapError, match=r"train-manual-x \(manual"):
        launcher.launch(fake.batch, NS, "train")
    launcher.launch(fake.batch, NS, "train", allow_overlap=True)

    assert len(fake.created_jobs()) == 1


def test_infer_is_not_guarded_but_warns(
    fake: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    fake.put(CRONJOBS, make_cronjob("infer"))
    fake.put(JOBS, make_job("infer-29000001", "infer", state="running"))
    fake.put(JOBS, make_job("infer-manual-x", "infer", trigger="manual", state="running"))
    fake.put(JOBS, make_job("infer-29000000", "infer", state="succeeded"))

    launcher.launch(fake.batch, NS, "infer")

    assert len(fake.created_jobs()) == 1
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert re.fullmatch(
        r"starting infer while infer-29000001 \(scheduled, started \d+m ago\), "
        r"infer-manual-x \(manual, started \d+m ago\) still active",
        warning.getMessage(),
    )


def test_a_lone_infer_does_not_warn(fake: FakeCluster, caplog: pytest.LogCaptureFixture) -> None:
    fake.put(CRONJOBS, make_cronjob("infer"))
    fake.put(JOBS, make_job("infer-29000000", "infer", state="succeeded"))

    launcher.launch(fake.batch, NS, "infer")

    assert len(fake.created_jobs()) == 1
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []


def test_the_ttl_is_the_jobs(fake: FakeCluster) -> None:
    fake.put(CRONJOBS, make_cronjob("infer"))

    launcher.launch(fake.batch, NS, "infer", ttl=600)

    [body] = fake.created_jobs()
    assert body["spec"]["ttlSecondsAfterFinished"] == 600


def test_a_missing_cronjob_says_to_apply_the_manifests(fake: FakeCluster) -> None:
    with pytest.raises(ClusterError) as caught:
        launcher.launch(fake.batch, NS, "train")

    assert str(caught.value) == (
        "no CronJob labelled app.kubernetes.io/component=train or named train in namespace "
        '"taxi-job": '
        "apply the manifests first (kubectl apply -k .)"
    )
    assert caught.value.exit_code == 69


def test_a_name_that_exists_is_a_conflict(fake: FakeCluster) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))
    fake.put(JOBS, make_job("train-manual-1", state="succeeded"))

    with pytest.raises(
        ClusterError,
        match=r'jobs.batch "train-manual-1" in namespace '
        r'"taxi-job" already exists',
    ) as caught:
        launcher.launch(fake.batch, NS, "train", name="train-manual-1")
    assert caught.value.exit_code == 69


def test_rbac_denial_names_verb_resource_and_identity(fake: FakeCluster) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))
    fake.react(
        ("post", JOBS),
        kmock.KubernetesError(
            status=403,
            reason="Forbidden",
            message='jobs.batch is forbidden: User "system:serviceaccount:taxi-job:launcher" '
            'cannot create resource "jobs" in API group "batch" in the namespace "taxi-job"',
        ),
    )

    with pytest.raises(ClusterForbiddenError) as caught:
        launcher.launch(fake.batch, NS, "train", allow_overlap=True)

    assert str(caught.value) == (
        'RBAC denies "system:serviceaccount:taxi-job:launcher" to create jobs.batch in '
        'namespace "taxi-job": grant it in a Role (see manifests/launcher-rbac.yaml)'
    )
    assert caught.value.exit_code == 77


def test_wait_follows_the_job_to_success_with_logs(fake: FakeCluster) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))
    fake.react(
        ("get", kmock.resource("v1/pods"), kmock.subresource("log")),
        b"reading 2 files\ntrained on 1000 rows\n",
    )
    job = launcher.launch(fake.batch, NS, "train")
    progress: list[launcher.Progress] = []
    lines: list[str] = []

    with FakeController(fake, message='{"model_version": "v7", "rmse_eval": 4.2}'):
        result = launcher.wait(
            fake.batch,
            fake.core,
            NS,
            job.metadata.name,
            timeout=20,
            on_progress=progress.append,
            on_log=lines.append,
            tick=1,
        )

    assert result.state == "succeeded"
    assert result.summary == {"model_version": "v7", "rmse_eval": 4.2}
    assert lines == ["reading 2 files", "trained on 1000 rows"]
    [log] = [r for r in fake.requests("get") if r.subresource == "log"]
    assert log.params["container"] == "train"  # not the sidecar listed first
    assert log.params["follow"] == "true"
    assert progress[0].state == "pending"
    assert distinct(p.state for p in progress) == ["pending", "running", "succeeded"]


def distinct(states: Iterable[str]) -> list[str]:
    """``states`` without repeats in a row."""
    return [state for state, _ in itertools.groupby(states)]


def test_progress_never_goes_back_when_the_pod_ends_before_the_job_counts_it(
    fake: FakeCluster,
) -> None:
    """The Job controller may show no active pod and no condition for a moment after the
    pod succeeded: that is not ``pending`` again."""
    fake.put(CRONJOBS, make_cronjob("infer"))
    job = launcher.launch(fake.batch, NS, "infer")
    progress: list[launcher.Progress] = []

    with FakeController(fake, message="{}", uncounted=True):
        launcher.wait(
            fake.batch,
            fake.core,
            NS,
            job.metadata.name,
            timeout=20,
            on_progress=progress.append,
            tick=1,
        )

    seen = [(p.state, p.pod) for p in progress]
    assert distinct(p.state for p in progress) == ["pending", "running", "succeeded"], seen
    assert ("running", "Succeeded") in seen


def test_an_expired_watch_is_resumed(fake: FakeCluster) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))
    gone = (
        b'{"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", '
        b'"status": "Failure", "code": 410, "reason": "Expired", '
        b'"message": "too old resource version: 1 (42)"}}\n'
    )
    fake.react_first(("get", JOBS, {"watch": "true"}), gone)
    job = launcher.launch(fake.batch, NS, "train")

    with FakeController(fake, message='{"model_version": "v8"}'):
        result = launcher.wait(fake.batch, fake.core, NS, job.metadata.name, timeout=20, tick=1)

    assert result.state == "succeeded"
    watches = [r for r in fake.requests("get", JOBS) if r.params.get("watch") == "true"]
    assert len(watches) >= 2


@pytest.mark.parametrize(
    ("reason", "sentence"),
    [
        (
            "PodFailurePolicy",
            "Container taxi-job for pod taxi-job/x failed with exit code 3 "
            "matching FailJob rule at index 0",
        ),
        ("BackoffLimitExceeded", "Job has reached the specified backoff limit"),
        ("DeadlineExceeded", "Job was active longer than specified deadline"),
    ],
)
def test_a_failed_job_fails_with_its_reason(fake: FakeCluster, reason: str, sentence: str) -> None:
    fake.put(CRONJOBS, make_cronjob("infer"))
    job = launcher.launch(fake.batch, NS, "infer")

    with (
        pytest.raises(launcher.RunFailedError) as caught,
        FakeController(
            fake,
            outcome="failed",
            exit_code=3,
            reason=reason,
            failure=sentence,
            message='{"error": "no current model in /artifacts", "exit_code": 3}',
        ),
    ):
        launcher.wait(fake.batch, fake.core, NS, job.metadata.name, timeout=20, tick=1)

    assert str(caught.value) == (
        f"job {job.metadata.name} failed: {reason}: {sentence}; "
        "the run said: no current model in /artifacts"
    )
    assert caught.value.exit_code == 70


def test_wait_gives_up_after_the_timeout(fake: FakeCluster) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))
    job = launcher.launch(fake.batch, NS, "train")
    fake.controller_batch.patch_namespaced_job_status(  # running, and it stays so
        job.metadata.name, NS, {"status": {"active": 1, "ready": 1}}
    )

    with pytest.raises(launcher.WaitTimeoutError, match="still running after 1.5s") as caught:
        launcher.wait(fake.batch, fake.core, NS, job.metadata.name, timeout=1.5, tick=0.5)
    assert caught.value.exit_code == 124


def test_a_deleted_job_ends_the_wait(fake: FakeCluster) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))
    job = launcher.launch(fake.batch, NS, "train")
    name = job.metadata.name
    fake.react_first(
        ("get", JOBS, {"watch": "true"}),
        (
            b'{"type": "DELETED", "object": {"apiVersion": "batch/v1", "kind": "Job", '
            b'"metadata": {"name": "' + name.encode() + b'", "namespace": "taxi-job"}}}\n'
        ),
    )

    with pytest.raises(launcher.RunFailedError, match="was deleted before it finished"):
        launcher.wait(fake.batch, fake.core, NS, name, timeout=10, tick=1)
