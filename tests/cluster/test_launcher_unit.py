"""The launcher's domain functions with injected API objects (no HTTP): building the Job,
settings, the guard, reading results, and the error messages."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import pytest
from kfake import make_cronjob, make_job, make_pod
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from job import kube, launcher, runs
from job.cli.cluster import ProgressPrinter
from job.errors import BadInputError

_api = client.ApiClient()


def model(data: dict[str, Any], kind: str) -> Any:
    """A typed model from JSON, as the client deserializes it."""
    return _api.deserialize(json.dumps(data), kind, "application/json")


class FakeBatch:
    """A BatchV1Api stand-in that records what it is asked."""

    def __init__(self, cronjob: dict[str, Any], jobs: list[dict[str, Any]]) -> None:
        self.cronjob = model(cronjob, "V1CronJob")
        self.jobs = [model(j, "V1Job") for j in jobs]
        self.created: list[Any] = []

    def list_namespaced_cron_job(self, namespace: str) -> Any:
        return client.V1CronJobList(items=[self.cronjob])

    def list_namespaced_job(self, namespace: str) -> Any:
        return client.V1JobList(items=self.jobs)

    def create_namespaced_job(self, namespace: str, body: Any) -> Any:
        self.created.append(body)
        return body


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        ("train-data=/d/2024-02.parquet", {"TAXI_JOB_TRAIN_DATA": "/d/2024-02.parquet"}),
        ("TAXI_JOB_TRAIN_DATA=x", {"TAXI_JOB_TRAIN_DATA": "x"}),
        ("eval_data=a=b", {"TAXI_JOB_EVAL_DATA": "a=b"}),
        ("input=", {"TAXI_JOB_INPUT": ""}),
    ],
)
def test_parse_settings(pair: str, expected: dict[str, str]) -> None:
    assert launcher.parse_settings([pair]) == expected


@pytest.mark.parametrize("pair", ["train-data", "=x", "bad key=x", "9lives=x"])
def test_parse_settings_rejects(pair: str) -> None:
    with pytest.raises(BadInputError, match="expected KEY=VALUE"):
        launcher.parse_settings([pair])


def test_build_job_is_typed_and_leaves_the_template_alone() -> None:
    cronjob = model(make_cronjob("train"), "V1CronJob")

    job = launcher.build_job(cronjob, name="train-manual-1", settings={"TAXI_JOB_X": "1"})

    assert isinstance(job, client.V1Job)
    assert isinstance(job.metadata, client.V1ObjectMeta)
    [owner] = job.metadata.owner_references
    assert isinstance(owner, client.V1OwnerReference)
    assert (owner.kind, owner.name, owner.uid, owner.controller, owner.block_owner_deletion) == (
        "CronJob",
        "train",
        "uid-of-cronjob",
        False,
        None,
    )
    assert job.spec.ttl_seconds_after_finished == 7 * 24 * 3600
    assert job.metadata.annotations["cronjob.kubernetes.io/instantiate"] == "manual"
    assert job.metadata.labels["taxi-job/trigger"] == "manual"
    env = job.spec.template.spec.containers[0].env
    assert [(e.name, e.value) for e in env][-1] == ("TAXI_JOB_X", "1")
    # a deep copy: the CronJob's template is unchanged
    template_env = cronjob.spec.job_template.spec.template.spec.containers[0].env
    assert [e.name for e in template_env] == ["TAXI_JOB_TERMINATION_LOG"]
    assert "taxi-job/trigger" not in cronjob.spec.job_template.metadata.labels


def test_job_names_are_unique_and_fit_a_label() -> None:
    now = dt.datetime(2025, 1, 6, 12, 5, 1, tzinfo=dt.UTC)
    names = {launcher.job_name("train", now) for _ in range(50)}
    assert len(names) > 45
    assert all(n.startswith("train-manual-20250106-120501-") for n in names)
    assert len(launcher.job_name("x" * 80, now)) <= 63


def test_launch_with_an_injected_api_refuses_overlap() -> None:
    batch = FakeBatch(make_cronjob("train"), [make_job("train-2", state="running")])

    with pytest.raises(launcher.OverlapError, match="train-2"):
        launcher.launch(batch, "taxi-job", "train")
    assert batch.created == []

    job = launcher.launch(batch, "taxi-job", "train", allow_overlap=True)
    assert batch.created == [job]


def test_launch_ignores_finished_and_foreign_jobs() -> None:
    foreign = make_job("other", state="running")
    foreign["metadata"]["ownerReferences"] = []
    batch = FakeBatch(
        make_cronjob("train"),
        [
            make_job("train-1", state="succeeded"),
            make_job("train-0", state="failed"),
            make_job("infer-1", "infer", state="running"),
            foreign,
        ],
    )

    launcher.launch(batch, "taxi-job", "train")

    assert len(batch.created) == 1


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("running", "running"),
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("pending", "pending"),
    ],
)
def test_job_state(state: str, expected: str) -> None:
    assert runs.job_state(model(make_job("j", state=state), "V1Job")).state == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"active": 1, "ready": 0}, "pending"),  # a pod waits to be scheduled or pulled
        ({"active": 1, "ready": 1}, "running"),
        ({"active": 0, "ready": 0, "uncountedTerminatedPods": {"succeeded": ["uid-1"]}}, "running"),
        (
            {"active": 0, "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]},
            "running",
        ),
        ({"active": 0, "conditions": [{"type": "FailureTarget", "status": "True"}]}, "running"),
        ({"active": 0, "failed": 1}, "pending"),  # waits to retry
        ({"conditions": [{"type": "Suspended", "status": "True"}]}, "suspended"),
    ],
)
def test_job_state_between_the_pod_and_the_job(status: dict[str, Any], expected: str) -> None:
    job = make_job("j", state="pending")
    job["status"] = status
    assert runs.job_state(model(job, "V1Job")).state == expected


@pytest.mark.parametrize(
    ("state", "phases", "shown", "expected"),
    [
        ("pending", [], None, "pending"),
        ("pending", ["Pending"], None, "pending"),
        ("pending", ["Succeeded"], "running", "running"),  # ended, not counted yet
        ("pending", ["Succeeded"], None, "running"),
        ("pending", [], "running", "running"),
        ("running", [], "succeeded", "succeeded"),
        ("succeeded", ["Succeeded"], "running", "succeeded"),
        ("suspended", ["Running"], "running", "suspended"),
        ("pending", [], "suspended", "pending"),  # resumed
    ],
)
def test_progress_state_never_goes_back(
    state: str, phases: list[str], shown: str | None, expected: str
) -> None:
    pods = [model(make_pod("j", phase=phase), "V1Pod") for phase in phases]
    assert launcher.progress_state(state, pods, shown) == expected


def test_termination_summary_tolerates_a_log_tail() -> None:
    pod = model(make_pod("train-1", message="line 1\n  File x\nValueError: bad month"), "V1Pod")
    assert runs.termination_summary(pod) == {"message": "ValueError: bad month"}
    assert runs.termination_summary(model(make_pod("train-1", message='["a"]'), "V1Pod")) == {
        "message": '["a"]'
    }
    assert runs.termination_summary(model(make_pod("train-1", phase="Running"), "V1Pod")) == {}
    assert runs.termination_summary(model(make_pod("train-1"), "V1Pod")) == {}


@pytest.mark.parametrize(("command", "summary", "text"), [
    ("infer", {"inputs_predicted": 1, "rows_predicted": 1, "model_version": "v"},
     "1 input, 1 row (model v)"),
    ("infer", {"inputs_predicted": 2, "rows_predicted": 0, "inputs_skipped": 1},
     "2 inputs, 0 rows, 1 skipped"),
    ("models", {"versions": [{"version": "v", "status": "current"}]}, "1 version, current v"),
    ("models", {"pruned": ["a", "b"], "kept": ["c"]}, "pruned 2 versions"),
    ("train", {"error": "/v/models: cannot write model version v: No space left on device",
               "exit_code": 75},
     "error (exit 75, transient error, a later run retries): /v/models: cannot write model "
     "version v: No space left on device"),
    ("infer", {"error": "/v/x.parquet: not a parquet file", "exit_code": 2},
     "error (exit 2, bad input): /v/x.parquet: not a parquet file"),
    ("infer", {"message": "Traceback ...", "error": "boom"}, "error: boom"),
])  # fmt: skip
def test_run_summaries_count_in_words(command: str, summary: dict[str, Any], text: str) -> None:
    assert runs.describe_summary(command, summary) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (4.4, "4s"),
        (125, "2m05s"),
        (7322, "2h02m"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert runs.format_duration(seconds) == text


def api_error(status: int, message: str = "") -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body = json.dumps({"kind": "Status", "code": status, "message": message})
    return exc


@pytest.mark.parametrize(
    ("status", "cls", "text"),
    [
        (
            403,
            kube.ClusterForbiddenError,
            'RBAC denies the current credentials to list pods in namespace "ns"',
        ),
        (404, kube.ClusterError, 'pods in namespace "ns" not found: gone'),
        (409, kube.ClusterError, 'pods in namespace "ns" already exists: exists'),
        (422, kube.ClusterError, 'the API server rejected pods in namespace "ns" as invalid'),
        (429, kube.ClusterUnavailableError, "failed to list pods"),
        (503, kube.ClusterUnavailableError, "failed to list pods"),
        (400, kube.ClusterError, 'cannot list pods in namespace "ns" (400)'),
    ],
)
def test_explain(status: int, cls: type[kube.ClusterError], text: str) -> None:
    message = {404: "gone", 409: "exists"}.get(status, "nope")
    error = kube.explain(api_error(status, message), object(), "list", "pods", namespace="ns")
    assert type(error) is cls
    assert text in str(error)
    assert "\n" not in str(error)


def test_progress_on_a_terminal_rewrites_one_line_around_the_logs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = io.StringIO()
    printer = ProgressPrinter(err, tty=True)

    printer.progress(launcher.Progress("j", "running", "Running", 3.2))
    printer.log("hello")
    printer.progress(launcher.Progress("j", "succeeded", "Succeeded", 5))
    printer.close()

    assert err.getvalue() == (
        "\r\x1b[Kj: running, 3s, pod Running"
        "\r\x1b[K"
        "j: running, 3s, pod Running"
        "\r\x1b[Kj: succeeded, 5s, pod Succeeded"
        "\n"
    )
    assert capsys.readouterr().out == "hello\n"


def test_progress_elsewhere_prints_a_line_at_each_change() -> None:
    err = io.StringIO()
    printer = ProgressPrinter(err, tty=False)

    for elapsed in (1, 2, 3):
        printer.progress(launcher.Progress("j", "running", "Running", elapsed))
    printer.progress(launcher.Progress("j", "succeeded", "Succeeded", 4))

    assert err.getvalue() == "j: running, 1s, pod Running\nj: succeeded, 4s, pod Succeeded\n"


def test_progress_on_a_terminal_is_clipped_to_its_width() -> None:
    """A wrapped line could not be rewritten in place."""
    err = io.StringIO()
    printer = ProgressPrinter(err, tty=True, width=30)

    printer.progress(launcher.Progress("j", "pending", "Pending: Unschedulable: 0/3 nodes", 7))

    assert err.getvalue() == "\r\x1b[Kj: pending, 7s, pod Pending:…"
    assert len(err.getvalue()) - len("\r\x1b[K") == 29


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ({"phase": "Running"}, "Running"),
        (
            {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": "train",
                        "image": "i",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": "ImagePullBackOff"}},
                    }
                ],
            },
            "Pending (ImagePullBackOff)",
        ),
        (
            {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": "train",
                        "image": "i",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": "ContainerCreating"}},
                    }
                ],
            },
            "Pending",
        ),
        (
            {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": (
                            "0/1 nodes are available: 1 node(s) didn't match pod affinity rules.\n"
                        ),
                    }
                ],
            },
            "Pending: Unschedulable: 0/1 nodes are available: 1 node(s) didn't match pod affinity "
            "rules.",
        ),
        (
            {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}
                ],
            },
            "Pending: SchedulingGated",
        ),
        (
            {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}]},
            "Running",
        ),
    ],
)
def test_pod_phase_says_why_a_pod_waits(status: dict[str, Any], phase: str) -> None:
    pod = make_pod("train-1")
    pod["status"] = status
    assert launcher.pod_phase(model(pod, "V1Pod")) == phase
