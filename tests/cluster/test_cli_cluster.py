"""``taxi-job launch`` and ``taxi-job runs`` through click's CliRunner, against the kmock
stand-in: exit codes, the one-line errors, the text and JSON output."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import kmock
import pytest
from click.testing import CliRunner
from kfake import CRONJOBS, JOBS, NS, FakeCluster, FakeController, make_cronjob, make_job, make_pod

from job.cli import cli

PODS = kmock.resource("", "v1", "pods")


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_launch_no_wait_prints_the_job_name(fake: FakeCluster, kubeconfig: Path) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))

    code, out, err = run(
        "launch", "train", "--set", "train-data=/data/2024-02.parquet", "--output-format", "json"
    )

    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    [body] = fake.created_jobs()
    assert summary == {
        "job": body["metadata"]["name"],
        "namespace": NS,
        "command": "train",
        "settings": ["TAXI_JOB_TRAIN_DATA=/data/2024-02.parquet"],
    }
    assert (
        body["metadata"]["annotations"]["taxi-job/launched-by"] == 'user "tester" (context "fake")'
    )


def test_launch_in_text_prints_only_the_job_name(fake: FakeCluster, kubeconfig: Path) -> None:
    """So that ``JOB=$(taxi-job launch infer)`` works."""
    fake.put(CRONJOBS, make_cronjob("infer"))

    code, out, err = run("launch", "infer")

    assert code == 0, err
    [body] = fake.created_jobs()
    assert out == body["metadata"]["name"] + "\n"


@pytest.mark.parametrize("key", ["train-data", "TAXI_JOB_TRAIN_DATA", "eval_data", "lock-timeout"])
def test_set_takes_an_option_of_the_command_in_either_spelling(
    fake: FakeCluster, kubeconfig: Path, key: str
) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))

    code, out, err = run("launch", "train", "--set", f"{key}=x")

    assert code == 0, err
    [body] = fake.created_jobs()
    env = body["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[-1]["value"] == "x"
    assert env[-1]["name"] in ("TAXI_JOB_TRAIN_DATA", "TAXI_JOB_EVAL_DATA", "TAXI_JOB_LOCK_TIMEOUT")


def test_set_refuses_a_key_the_command_does_not_read(fake: FakeCluster, kubeconfig: Path) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))

    code, out, err = run("launch", "train", "--set", "trian-data=/data/2024-02.parquet")

    assert code == 2
    message = err.strip().splitlines()[-1]
    assert message.startswith(
        "Error: Invalid value for '--set': train has no setting "
        "trian-data (TAXI_JOB_TRIAN_DATA); it has: "
    )
    valid = message.split("it has: ")[1].split(", ")
    assert {"train-data", "eval-data", "artifacts", "min-duration"} <= set(valid)
    assert "input" not in valid  # infer's, not train's
    assert fake.requests() == []  # refused before contacting the server


def test_set_refuses_another_commands_setting(fake: FakeCluster, kubeconfig: Path) -> None:
    code, out, err = run("launch", "infer", "--set", "input=/x", "--set", "TAXI_JOB_TRAIN_DATA=/y")

    assert code == 2
    assert "infer has no setting train-data (TAXI_JOB_TRAIN_DATA); it has: " in err
    assert "input (" not in err  # a valid key is not named as unknown
    assert fake.requests() == []


def test_namespace_from_the_environment(
    fake: FakeCluster, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cronjob = make_cronjob("infer")
    cronjob["metadata"]["namespace"] = "elsewhere"
    fake.put(CRONJOBS, cronjob)
    monkeypatch.setenv("TAXI_JOB_NAMESPACE", "elsewhere")

    code, out, err = run("launch", "infer")

    assert code == 0, err
    [post] = fake.requests("post", JOBS)
    assert post.url.path == "/apis/batch/v1/namespaces/elsewhere/jobs"


def test_launch_wait_logs_succeeds_with_the_runs_summary(
    fake: FakeCluster, kubeconfig: Path
) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))
    fake.react(("get", PODS, kmock.subresource("log")), b"training\ndone\n")

    with FakeController(fake, message='{"model_version": "v9", "rmse_eval": 4.25}'):
        code, out, err = run("launch", "train", "--logs", "--timeout", "30")

    assert code == 0, err
    [body] = fake.created_jobs()
    name = body["metadata"]["name"]
    # The Job's name first (before the log), then the pod's log, then the result.
    assert out.splitlines()[:3] == [name, "training", "done"]
    fields = dict(line.split(None, 1) for line in out.splitlines()[3:])
    assert fields["state"] == "succeeded"
    assert fields["model_version"] == "v9"
    assert fields["rmse_eval"] == "4.2500"
    assert fields["job"] == name
    # Plain progress lines on a non-terminal: one a change, with the pod's phase.
    assert re.search(r"train-manual-\S+: (pending|running), \d+s, pod Running$", err, re.M)
    assert re.search(r"train-manual-\S+: succeeded, \d+s, pod Succeeded$", err, re.M)


def test_launch_wait_in_json_prints_one_object(fake: FakeCluster, kubeconfig: Path) -> None:
    fake.put(CRONJOBS, make_cronjob("infer"))

    with FakeController(fake, message='{"rows_predicted": 12}'):
        code, out, err = run("launch", "infer", "--wait", "--output-format", "json")

    assert code == 0, err
    [line] = out.splitlines()
    summary = json.loads(line)
    assert (summary["state"], summary["rows_predicted"]) == ("succeeded", 12)


def test_launch_wait_shows_why_the_pod_cannot_be_scheduled(
    fake: FakeCluster, kubeconfig: Path
) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))
    why = (
        "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are "
        "available: 1 No preemption victims found for incoming pod."
    )

    with FakeController(fake, outcome="unschedulable", message=why):
        code, out, err = run("launch", "train", "--wait", "--timeout", "1.5")

    assert code == 124
    [body] = fake.created_jobs()
    assert out == body["metadata"]["name"] + "\n"  # the name, though the wait timed out
    assert re.search(
        r"train-manual-\S+: pending, \ds, pod Pending: Unschedulable: " + re.escape(why) + "$",
        err,
        re.M,
    )


def test_launch_wait_exits_non_zero_with_the_reason(fake: FakeCluster, kubeconfig: Path) -> None:
    fake.put(CRONJOBS, make_cronjob("infer"))

    with FakeController(
        fake,
        outcome="failed",
        exit_code=3,
        reason="PodFailurePolicy",
        failure="Container taxi-job failed with exit code 3",
        message='{"error": "no model", "exit_code": 3}',
    ):
        code, out, err = run("launch", "infer", "--wait")

    assert code == 70
    assert err.splitlines()[-1].startswith("taxi-job: error: job infer-manual-")
    assert err.splitlines()[-1].endswith(
        "failed: PodFailurePolicy: Container taxi-job failed with exit code 3; "
        "the run said: no model"
    )


@pytest.mark.parametrize("how", ["flag", "env"])
def test_ttl_from_the_flag_or_the_environment(
    fake: FakeCluster, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    fake.put(CRONJOBS, make_cronjob("infer"))
    if how == "env":
        monkeypatch.setenv("TAXI_JOB_TTL", "3600")

    code, out, err = run("launch", "infer", *(["--ttl", "3600"] if how == "flag" else []))

    assert code == 0, err
    [body] = fake.created_jobs()
    assert body["spec"]["ttlSecondsAfterFinished"] == 3600


def test_launch_infer_beside_an_active_infer_warns_in_one_line(
    fake: FakeCluster, kubeconfig: Path
) -> None:
    fake.put(CRONJOBS, make_cronjob("infer"))
    fake.put(JOBS, make_job("infer-29000001", "infer"))

    code, out, err = run("launch", "infer")

    assert code == 0, err
    [body] = fake.created_jobs()
    assert out == body["metadata"]["name"] + "\n"
    [warning] = [line for line in err.splitlines() if "WARNING" in line]
    assert re.search(
        r"WARNING +starting infer while infer-29000001 \(scheduled, started "
        r"\d+m ago\) still active$",
        warning,
    )


def test_launch_refuses_an_overlapping_train(fake: FakeCluster, kubeconfig: Path) -> None:
    fake.put(CRONJOBS, make_cronjob("train"))
    fake.put(JOBS, make_job("train-28979360"))

    code, out, err = run("launch", "train")

    assert code == 75
    assert err.strip().startswith(
        "taxi-job: error: refusing to start train: train-28979360 (scheduled, started"
    )
    assert fake.created_jobs() == []


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (
            403,
            77,
            'taxi-job: error: RBAC denies "alice" to list cronjobs.batch in namespace '
            '"taxi-job": grant it in a Role (see manifests/launcher-rbac.yaml)',
        ),
        (401, 77, "the API server at http://127.0.0.1:"),
        (500, 75, 'failed to list cronjobs.batch in namespace "taxi-job" (500)'),
    ],
)
def test_api_refusals_are_one_line(
    fake: FakeCluster, kubeconfig: Path, status: int, code: int, message: str
) -> None:
    fake.react(
        ("get", CRONJOBS),
        kmock.KubernetesError(
            status=status,
            reason="Nope",
            message='cronjobs.batch "train" is forbidden: User "alice" cannot get resource',
        ),
    )

    exit_code, out, err = run("launch", "train")

    assert exit_code == code
    assert len(err.strip().splitlines()) == 1
    assert message in err


def test_401_names_the_kubeconfig_user(fake: FakeCluster, kubeconfig: Path) -> None:
    fake.react(("get", CRONJOBS), kmock.KubernetesError(status=401, reason="Unauthorized"))

    code, out, err = run("launch", "train")

    assert code == 77
    assert 'rejected the credentials of user "tester" (context "fake")' in err


def test_missing_cronjob(fake: FakeCluster, kubeconfig: Path) -> None:
    code, out, err = run("launch", "infer")

    assert code == 69
    assert err.strip() == (
        "taxi-job: error: no CronJob labelled app.kubernetes.io/component=infer or named "
        'infer in namespace "taxi-job": apply the manifests first (kubectl apply -k .)'
    )


def test_unreachable_server_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = FakeCluster()
    dead.url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("TAXI_JOB_KUBECONFIG", str(dead.kubeconfig(tmp_path / "kc")))

    code, out, err = run("runs")

    assert code == 75
    assert err.startswith(
        f"taxi-job: error: cannot reach the Kubernetes API server at http://127.0.0.1:{port}"
    )
    assert len(err.strip().splitlines()) == 1


def test_no_configuration_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("TAXI_JOB_KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    code, out, err = run("runs")

    assert code == 2
    assert "no kubeconfig at" in err and "not running in a cluster" in err


def test_unknown_context(fake: FakeCluster, kubeconfig: Path) -> None:
    code, out, err = run("runs", "--context", "nope")

    assert code == 2
    assert err.startswith(f"taxi-job: error: cannot use the kubeconfig {kubeconfig}")


def test_bad_set(fake: FakeCluster, kubeconfig: Path) -> None:
    code, out, err = run("launch", "train", "--set", "no-equals-sign")

    assert code == 2
    assert "expected KEY=VALUE" in err
    assert fake.requests() == []  # checked before contacting the server


@pytest.fixture
def history(fake: FakeCluster) -> FakeCluster:
    fake.put(
        JOBS,
        make_job(
            "train-28969280",
            state="succeeded",
            start="2025-01-05T00:00:00Z",
            end="2025-01-05T00:02:05Z",
        ),
    )
    fake.put(
        PODS,
        make_pod(
            "train-28969280",
            message=json.dumps(
                {
                    "model_version": "20250105T000205Z",
                    "rmse_train": 4.1234,
                    "rmse_eval": 4.3456,
                    "rows_read": 1000,
                    "rows_kept": 990,
                    "features": 60,
                }
            ),
        ),
    )
    fake.put(
        JOBS,
        make_job(
            "infer-29000001",
            "infer",
            state="succeeded",
            start="2025-01-06T10:01:00Z",
            end="2025-01-06T10:01:09Z",
        ),
    )
    fake.put(
        PODS,
        make_pod(
            "infer-29000001",
            message=json.dumps(
                {
                    "model_version": "20250105T000205Z",
                    "inputs_predicted": 2,
                    "inputs_skipped": 1,
                    "rows_predicted": 3456,
                    "outputs": ["a", "b"],
                }
            ),
        ),
    )
    fake.put(
        JOBS,
        make_job(
            "infer-manual-20250106-100500-abcd",
            "infer",
            trigger="manual",
            state="failed",
            start="2025-01-06T10:05:00Z",
            end="2025-01-06T10:05:30Z",
        ),
    )
    fake.put(
        PODS,
        make_pod(
            "infer-manual-20250106-100500-abcd",
            phase="Failed",
            exit_code=1,
            message="Traceback (most recent call last):\nBoom: disk full",
        ),
    )
    fake.put(
        JOBS,
        make_job(
            "train-manual-20250106-110000-wxyz",
            trigger="manual",
            state="running",
            start="2025-01-06T11:00:00Z",
        ),
    )
    other = make_job("unrelated-job", state="succeeded")
    other["metadata"]["ownerReferences"] = []
    fake.put(JOBS, other)
    return fake


def test_runs_text(history: FakeCluster, kubeconfig: Path) -> None:
    code, out, err = run("runs")

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "COMMAND",
        "TRIGGER",
        "STATE",
        "START",
        "(UTC)",
        "DURATION",
        "SUMMARY",
    ]
    names = [line.split()[0] for line in lines[1:]]
    assert names == [
        "train-manual-20250106-110000-wxyz",
        "infer-manual-20250106-100500-abcd",
        "infer-29000001",
        "train-28969280",
    ]
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert by_name["train-28969280"].split()[1:] == [
        "train",
        "scheduled",
        "succeeded",
        "2025-01-05",
        "00:00",
        "2m05s",
        "model",
        "20250105T000205Z,",
        "rmse",
        "eval",
        "4.346",
        "train",
        "4.123",
    ]
    assert by_name["infer-29000001"].endswith(
        " 9s         2 inputs, 3456 rows, 1 skipped (model 20250105T000205Z)"
    )
    assert "failed (BackoffLimitExceeded)" in by_name["infer-manual-20250106-100500-abcd"]
    assert by_name["infer-manual-20250106-100500-abcd"].endswith("Boom: disk full")
    assert " manual " in by_name["train-manual-20250106-110000-wxyz"]
    assert " running " in by_name["train-manual-20250106-110000-wxyz"]


def test_runs_json_and_limit(history: FakeCluster, kubeconfig: Path) -> None:
    code, out, err = run("runs", "--output-format", "json", "--limit", "3")

    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["namespace"] == NS
    assert [r["name"] for r in summary["runs"]] == [
        "train-manual-20250106-110000-wxyz",
        "infer-manual-20250106-100500-abcd",
        "infer-29000001",
    ]
    infer = summary["runs"][2]
    assert infer == {
        "name": "infer-29000001",
        "command": "infer",
        "trigger": "scheduled",
        "state": "succeeded",
        "reason": None,
        "start": "2025-01-06T10:01:00+00:00",
        "duration_s": 9.0,
        "summary": {
            "model_version": "20250105T000205Z",
            "inputs_predicted": 2,
            "inputs_skipped": 1,
            "rows_predicted": 3456,
            "outputs": ["a", "b"],
        },
    }
    assert summary["runs"][1]["summary"] == {"message": "Boom: disk full"}
    assert summary["runs"][0]["summary"] == {}


def test_runs_empty(fake: FakeCluster, kubeconfig: Path) -> None:
    code, out, err = run("runs")

    assert (code, out) == (0, "no runs in namespace taxi-job\n")


def test_the_cli_does_not_import_kubernetes_until_a_cluster_command_runs() -> None:
    code = (
        "import sys, job.cli; from job.cli import cli; "
        "assert 'kubernetes' not in sys.modules, 'kubernetes imported at start-up'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_launch_help_as_a_real_subprocess() -> None:
    script = Path(sys.executable).with_name("taxi-job")
    out = subprocess.run(
        [str(script), "launch", "--help"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "Run train or infer now, as a Job made from its CronJob." in out.stdout
    assert "TAXI_JOB_NAMESPACE" in out.stdout
