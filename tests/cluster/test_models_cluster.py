"""The model lifecycle seen from a laptop, against the kmock stand-in: `taxi-job launch
models ...` (a rollback with no shell in a pod), and `taxi-job runs` showing a training
whose model failed the promotion gate as rejected, and a rollback."""

from __future__ import annotations

import json
from pathlib import Path

import kmock
import pytest
from click.testing import CliRunner
from kfake import CRONJOBS, JOBS, FakeCluster, FakeController, make_cronjob, make_job, make_pod
from test_rbac import role_grants, verb_of

from job.cli import cli

PODS = kmock.resource("", "v1", "pods")

REJECTED = {
    "model_version": "20250112T000231.118204Z-9f3c2a10", "rmse_train": 8.912, "rmse_eval": 9.4518,
    "promoted": False, "gate": "rejected", "champion_version": "20250105T000205.400112Z-14290af5",
    "rmse_eval_champion": 7.8119, "current_version": "20250105T000205.400112Z-14290af5",
}  # fmt: skip


def test_runs_shows_a_rejected_training(fake: FakeCluster, kubeconfig: Path) -> None:
    fake.put(
        JOBS,
        make_job(
            "train-1", state="succeeded", start="2025-01-12T00:00:00Z", end="2025-01-12T00:02:31Z"
        ),
    )
    fake.put(PODS, make_pod("train-1", message=json.dumps(REJECTED)))
    promoted = {**REJECTED, "promoted": True, "gate": "passed", "model_version": "v2"}
    fake.put(
        JOBS,
        make_job(
            "train-2", state="succeeded", start="2025-01-19T00:00:00Z", end="2025-01-19T00:02:31Z"
        ),
    )
    fake.put(PODS, make_pod("train-2", message=json.dumps(promoted)))  # fmt: skip

    result = CliRunner().invoke(cli, ["runs"])

    assert result.exit_code == 0, result.output
    by_name = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert by_name["train-1"][3] == "rejected"
    assert " ".join(by_name["train-1"][7:]).endswith(
        "rmse eval 9.452 train 8.912; kept 20250105T000205.400112Z-14290af5 (rmse eval 7.812)"
    )
    assert by_name["train-2"][3] == "succeeded"


def log(*stdout: object) -> bytes:
    """A models pod's log: JSON log lines on stderr, then the result on stdout."""
    lines = [json.dumps({"time": "t", "level": "info", "logger": "job.registry", "message": "m"})]
    lines += [json.dumps(s) for s in stdout]
    return ("\n".join(lines) + "\n").encode()


PROMOTED = {
    "time": "2025-01-13T09:00:00Z", "version": "v1", "previous_version": "v2",
    "cause": "rollback", "reason": "late data", "by": 'user "tester" (context "fake")',
    "rmse_eval": 7.8, "rmse_eval_previous": 9.4, "changed": True,
}  # fmt: skip


def test_launch_models_promote_is_a_rollback_from_a_laptop(
    fake: FakeCluster, kubeconfig: Path
) -> None:
    fake.put(CRONJOBS, make_cronjob("models"))
    fake.react(("get", PODS, kmock.subresource("log")), log(PROMOTED))

    with FakeController(fake, message=json.dumps(PROMOTED)):
        result = CliRunner().invoke(
            cli, ["launch", "models", "promote", "v1", "--reason", "late data", "--timeout", "30"]
        )

    assert result.exit_code == 0, result.output
    [body] = fake.created_jobs()
    [container] = body["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["models", "promote", "v1", "--reason", "late data"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TAXI_JOB_BY"] == 'user "tester" (context "fake")'  # who, for the history
    lines = result.stdout.splitlines()
    assert lines[0] == body["metadata"]["name"]  # the Job's name first, then the result
    fields = dict(line.split(None, 1) for line in lines[1:])
    assert (fields["cause"], fields["version"], fields["previous_version"]) == (
        "rollback", "v1", "v2")  # fmt: skip


@pytest.mark.parametrize("output_format", ["text", "json"])
def test_launch_models_list_prints_the_table_or_the_array(
    fake: FakeCluster, kubeconfig: Path, output_format: str
) -> None:
    versions = [
        {"version": "v2", "status": "rejected", "created": "2025-01-12T00:02:31Z",
         "rmse_train": 8.9, "rmse_eval": 9.4, "rows": 990, "train_inputs": ["/d/2021-02.parquet"],
         "verified": True},
        {"version": "v1", "status": "current", "created": "2025-01-05T00:02:05Z",
         "rmse_train": 7.6, "rmse_eval": 7.8, "rows": 995, "train_inputs": ["/d/2021-01.parquet"],
         "verified": True},
    ]  # fmt: skip
    fake.put(CRONJOBS, make_cronjob("models"))
    fake.react(("get", PODS, kmock.subresource("log")), log(versions))

    launch = ["launch", "models", "list", "--timeout", "30"]
    with FakeController(fake, message=json.dumps({"versions": versions})):
        text = CliRunner().invoke(cli, [*launch, "--output-format", output_format])

    assert text.exit_code == 0, text.output
    [body] = fake.created_jobs()
    assert body["spec"]["template"]["spec"]["containers"][0]["args"] == ["models", "list"]
    if output_format == "json":
        summary = json.loads(text.stdout.splitlines()[-1])
        assert (summary["command"], summary["args"], summary["state"]) == (
            "models", ["list"], "succeeded")  # fmt: skip
        assert summary["result"] == versions
        return
    header, *rows = text.stdout.splitlines()[1:]
    assert header.split()[:2] == ["VERSION", "STATUS"]
    assert [r.split()[:2] for r in rows] == [["v2", "rejected"], ["v1", "current"]]


def test_launch_models_reports_a_failed_promotion(fake: FakeCluster, kubeconfig: Path) -> None:
    fake.put(CRONJOBS, make_cronjob("models"))
    error = {"error": "/var/lib/taxi-job/artifacts/models/v1/model.json: checksum mismatch",
             "exit_code": 3}  # fmt: skip
    with FakeController(fake, outcome="failed", exit_code=3, message=json.dumps(error),
                        reason="PodFailurePolicy"):  # fmt: skip
        result = CliRunner().invoke(cli, ["launch", "models", "promote", "v1", "--timeout", "30"])

    assert result.exit_code == 70, result.output
    assert "checksum mismatch" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models"], "launch models needs a models command"),
        (["models", "frobnicate"], "got 'frobnicate'"),
        (["train", "--frobnicate"], "launch train takes no arguments"),
    ],
)
def test_launch_refuses_bad_arguments_before_calling_the_server(
    fake: FakeCluster, kubeconfig: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli, ["launch", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert fake.requests() == []


def test_runs_shows_a_rollback(fake: FakeCluster, kubeconfig: Path) -> None:
    fake.put(JOBS, make_job("models-manual-1", "models", trigger="manual", state="succeeded"))
    fake.put(PODS, make_pod("models-manual-1", message=json.dumps(PROMOTED)))

    result = CliRunner().invoke(cli, ["runs"])

    assert result.exit_code == 0, result.output
    (row,) = result.stdout.splitlines()[1:]
    assert row.split()[:4] == ["models-manual-1", "models", "manual", "succeeded"]
    assert row.endswith("rollback to v1 (was v2): late data")


def test_the_launcher_role_suffices_for_launch_models(fake: FakeCluster, kubeconfig: Path) -> None:
    fake.put(CRONJOBS, make_cronjob("models"))
    fake.react(("get", PODS, kmock.subresource("log")), log(PROMOTED))
    with FakeController(fake, message=json.dumps(PROMOTED)):
        launched = CliRunner().invoke(cli, ["launch", "models", "promote", "v1", "--timeout", "30"])
    assert launched.exit_code == 0, launched.output

    used = {verb_of(r) for r in fake.requests() if r.resource is not None}
    assert used <= role_grants()


def test_launch_report_writes_the_page_from_the_pods_log(
    fake: FakeCluster, kubeconfig: Path, tmp_path: Path
) -> None:
    from job.report.transport import frame

    page = "<!DOCTYPE html><title>taxi-job model report</title>" + "<p>v1</p>" * 500
    fake.put(CRONJOBS, make_cronjob("models"))
    pod_log = [json.dumps({"level": "info", "logger": "x", "message": "m"}), *frame(page)]
    fake.react(("get", PODS, kmock.subresource("log")), ("\n".join(pod_log) + "\n").encode())
    out = tmp_path / "report.html"

    with FakeController(fake, message=json.dumps({"output": "-", "bytes": len(page)})):
        result = CliRunner().invoke(
            cli, ["launch", "report", "--output", str(out), "--timeout", "30"]
        )

    assert result.exit_code == 0, result.output
    [body] = fake.created_jobs()
    assert body["metadata"]["name"].startswith("models-manual-")  # the models template
    assert body["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "report", "--output", "-"]  # fmt: skip
    assert out.read_text() == page
    fields = dict(line.split(None, 1) for line in result.stdout.splitlines()[1:])
    assert (fields["command"], fields["output"], fields["bytes"]) == (
        "report", str(out), str(len(page)))  # fmt: skip


def test_launch_report_with_a_cut_log_writes_nothing(
    fake: FakeCluster, kubeconfig: Path, tmp_path: Path
) -> None:
    from job.report.transport import frame

    page = "<!DOCTYPE html>" + "".join(f"<p>{n}</p>" for n in range(3000))
    fake.put(CRONJOBS, make_cronjob("models"))
    cut = frame(page)[:-3]  # the end of the page never came
    fake.react(("get", PODS, kmock.subresource("log")), ("\n".join(cut) + "\n").encode())
    out = tmp_path / "report.html"

    with FakeController(fake, message=json.dumps({"output": "-"})):
        result = CliRunner().invoke(
            cli, ["launch", "report", "--output", str(out), "--timeout", "30"]
        )

    assert result.exit_code == 70, result.output
    assert "the report was cut short" in result.stderr
    assert not out.exists()
