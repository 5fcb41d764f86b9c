"""The model lifecycle seen from a laptop, against the kmock stand-in: `taxi-job runs`
shows a training whose model failed the promotion gate as rejected."""

from __future__ import annotations

import json
from pathlib import Path

import kmock
from click.testing import CliRunner
from kfake import JOBS, FakeCluster, make_job, make_pod

from job.cli import cli

PODS = kmock.resource("", "v1", "pods")

REJECTED = {
    "model_version": "20250112T000231.118204Z-9f3c2a10", "rmse_train": 8.912, "rmse_eval": 9.4518,
    "promoted": False, "gate": "rejected", "champion_version": "20250105T000205.400112Z-14290af5",
    "rmse_eval_champion": 7.8119, "current_version": "20250105T000205.400112Z-14290af5",
}  # fmt: skip


def test_runs_shows_a_rejected_training(fake: FakeCluster, kubeconfig: Path) -> None:
    fake.put(JOBS, make_job("train-1", state="succeeded",
                            start="2025-01-12T00:00:00Z", end="2025-01-12T00:02:31Z"))
    fake.put(PODS, make_pod("train-1", message=json.dumps(REJECTED)))
    promoted = {**REJECTED, "promoted": True, "gate": "passed", "model_version": "v2"}
    fake.put(JOBS, make_job("train-2", state="succeeded",
                            start="2025-01-19T00:00:00Z", end="2025-01-19T00:02:31Z"))
    fake.put(PODS, make_pod("train-2", message=json.dumps(promoted)))  # fmt: skip

    result = CliRunner().invoke(cli, ["runs"])

    assert result.exit_code == 0, result.output
    by_name = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert by_name["train-1"][3] == "rejected"
    assert " ".join(by_name["train-1"][7:]).endswith(
        "rmse eval 9.452 train 8.912; kept 20250105T000205.400112Z-14290af5 (rmse eval 7.812)"
    )
    assert by_name["train-2"][3] == "succeeded"
