"""Copies of the CronJobs in one namespace (a kustomize ``namePrefix``: ``blue-train`` and
``green-train``), and the result of a sharded training, through the CLI against the kmock
stand-in (a fake API server over real HTTP; the real cluster runs the same flow in
test_e2e_copies.py)."""

from __future__ import annotations

import json
from pathlib import Path

import kmock
import pytest
from click.testing import CliRunner
from kfake import CRONJOBS, JOBS, FakeCluster, make_cronjob, make_job, make_pod

from job import launcher
from job.cli import cli

PODS = kmock.resource("", "v1", "pods")


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def two_copies(fake: FakeCluster, command: str = "train") -> None:
    fake.put(CRONJOBS, make_cronjob(command, prefix="blue-", uid="uid-blue"))
    fake.put(CRONJOBS, make_cronjob(command, prefix="green-", uid="uid-green"))


def test_a_prefixed_copy_alone_is_found_by_its_label(fake: FakeCluster, kubeconfig: Path) -> None:
    fake.put(CRONJOBS, make_cronjob("train", prefix="team-a-"))

    code, out, err = run("launch", "train")

    assert code == 0, err
    [body] = fake.created_jobs()
    assert body["metadata"]["name"].startswith("team-a-train-manual-")
    [owner] = body["metadata"]["ownerReferences"]
    assert owner["name"] == "team-a-train"


@pytest.mark.parametrize("command", ["train", "infer", "models"])
def test_two_copies_and_no_prefix_is_refused_naming_both(
    fake: FakeCluster, kubeconfig: Path, command: str
) -> None:
    two_copies(fake, command)
    args = ["list"] if command == "models" else []

    code, out, err = run("launch", command, *args)

    assert code == 2
    assert err.strip() == (
        f'taxi-job: error: 2 CronJobs run {command} in namespace "taxi-job": '
        f"blue-{command}, green-{command}; choose one with --prefix (one of 'blue-', 'green-')"
    )
    assert fake.created_jobs() == []


def test_prefix_chooses_the_copy_and_its_own_guard(fake: FakeCluster, kubeconfig: Path) -> None:
    two_copies(fake)
    # green's training runs: it must not stop blue's (another deployment).
    fake.put(JOBS, make_job("green-train-1", prefix="green-", state="running"))

    code, out, err = run("launch", "train", "--prefix", "blue-")

    assert code == 0, err
    [body] = fake.created_jobs()
    assert body["metadata"]["ownerReferences"][0]["name"] == "blue-train"
    assert body["metadata"]["name"].startswith("blue-train-manual-")

    code, out, err = run("launch", "train", "--prefix", "green-")
    assert code == 75
    assert "refusing to start green-train: green-train-1 (scheduled" in err


def test_an_unknown_prefix_names_the_copies(fake: FakeCluster, kubeconfig: Path) -> None:
    two_copies(fake)

    code, out, err = run("launch", "infer", "--prefix", "red-")
    assert code == 69
    assert "no CronJob labelled app.kubernetes.io/component=infer or named infer in" in err

    code, out, err = run("launch", "train", "--prefix", "red-")
    assert code == 69
    assert 'no CronJob "red-train" in namespace "taxi-job"; the train CronJobs are: ' in err
    assert "blue-train, green-train" in err


def test_runs_lists_the_copies_runs_and_prefix_keeps_one(
    fake: FakeCluster, kubeconfig: Path
) -> None:
    fake.put(JOBS, make_job("blue-train-1", prefix="blue-", start="2025-01-05T00:00:00Z"))
    fake.put(
        JOBS, make_job("green-infer-1", "infer", prefix="green-", start="2025-01-05T01:00:00Z")
    )

    code, out, err = run("runs", "--output-format", "json")
    assert code == 0, err
    listed = [(r["name"], r["command"]) for r in json.loads(out)["runs"]]
    assert listed == [("green-infer-1", "infer"), ("blue-train-1", "train")]

    code, out, err = run("runs", "--prefix", "blue-", "--output-format", "json")
    assert code == 0, err
    assert [r["name"] for r in json.loads(out)["runs"]] == ["blue-train-1"]


def shard_pod(job: str, shard: int, summary: dict[str, object], created: str) -> dict[str, object]:
    return make_pod(
        job,
        name=f"{job}-{shard}-x",
        container="train",
        created=created,
        message=json.dumps({"shard": shard, "shards": 2, "run_id": job, **summary}),
    )


def test_runs_shows_the_reducers_summary_of_a_sharded_training(
    fake: FakeCluster, kubeconfig: Path
) -> None:
    """The reducer (shard 0 here) ended first; shard 1 ended last, saying "shard 0
    reduces". The run is the reducer's: the gate rejected its model."""
    fake.put(JOBS, make_job("train-1", state="succeeded"))
    rejected = {
        "reducer": 0,
        "model_version": "v2",
        "rmse_eval": 5.5,
        "gate": "rejected",
        "champion_version": "v1",
        "rmse_eval_champion": 5.0,
    }
    fake.put(PODS, shard_pod("train-1", 0, rejected, "2025-01-05T00:00:01Z"))
    fake.put(PODS, shard_pod("train-1", 1, {"reducer": 0}, "2025-01-05T00:00:02Z"))

    code, out, err = run("runs")

    assert code == 0, err
    [row] = [line for line in out.splitlines() if line.startswith("train-1")]
    assert " rejected " in row
    assert "model v2, rmse eval 5.500; kept v1 (rmse eval 5.000)" in row


def test_runs_shows_a_sharded_training_that_published_nothing(
    fake: FakeCluster, kubeconfig: Path
) -> None:
    """Two pods of a training told three shards: both succeeded, neither reduced."""
    fake.put(JOBS, make_job("train-1", state="succeeded"))
    waiting = {"reducer": None, "missing_shards": [2]}
    fake.put(PODS, shard_pod("train-1", 0, waiting, "2025-01-05T00:00:01Z"))
    fake.put(PODS, shard_pod("train-1", 1, waiting, "2025-01-05T00:00:02Z"))

    code, out, err = run("runs")
    assert code == 0, err
    [row] = [line for line in out.splitlines() if line.startswith("train-1")]
    assert " unpublished " in row
    assert "no shard reduced: nothing published (shard 1 waited for [2])" in row

    code, out, err = run("runs", "--output-format", "json")
    [run_] = json.loads(out)["runs"]
    assert run_["summary"]["no_reducer"] is True


def test_launch_wait_returns_the_reducers_summary(fake: FakeCluster) -> None:
    fake.put(JOBS, make_job("train-1", state="succeeded"))
    reduced = {"reducer": 1, "model_version": "v2", "gate": "rejected"}
    fake.put(PODS, shard_pod("train-1", 1, reduced, "2025-01-05T00:00:01Z"))
    fake.put(PODS, shard_pod("train-1", 0, {"reducer": 1}, "2025-01-05T00:00:02Z"))

    result = launcher.wait(fake.batch, fake.core, "taxi-job", "train-1")

    assert (result.summary["shard"], result.summary["gate"]) == (1, "rejected")


def test_launch_wait_warns_when_no_shard_reduced(
    fake: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    fake.put(JOBS, make_job("train-1", state="succeeded"))
    fake.put(
        PODS,
        shard_pod("train-1", 0, {"reducer": None, "missing_shards": [1]}, "2025-01-05T00:00:01Z"),
    )

    result = launcher.wait(fake.batch, fake.core, "taxi-job", "train-1")

    assert result.summary["no_reducer"] is True
    assert (
        "job train-1 succeeded but no shard reduced: no model was published "
        "(no shard reduced: nothing published (shard 0 waited for [1]))"
    ) in caplog.text
