"""The metrics a run pushes: derived from its summary, pushed with add semantics to a real
Pushgateway (Debian's binary on a loopback port), grouped by command and shard."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from job import metrics
from job.cli import cli
from monitoring.conftest import Series, value

MINUTE = 60.0

#: A training's summary with the fields the promotion gate and the registry add.
TRAIN = {
    "model_version": "20261201T030951.225596Z-be106f6c",
    "rmse_train": 8.25,
    "rmse_eval": 8.75,
    "rows_read": 20000,
    "rows_kept": 19509,
    "eval_rows_read": 21000,
    "eval_rows_kept": 20480,
    "features": 531,
    "promoted": False,
    "gate": "rejected",
    "champion_version": "20261130T030950.513647Z-14290af5",
    "rmse_eval_champion": 8.5,
    "current_version": "20261130T030950.513647Z-14290af5",
    "pruned": [],
    "model_created": "2026-12-01T03:09:51Z",
    "seconds": 1.5,
}

#: An infer run's summary with the live-quality and queue fields.
INFER = {
    "model_version": "20261130T030950.513647Z-14290af5",
    "inputs_predicted": 2,
    "inputs_skipped": 3,
    "inputs_busy": 1,
    "inputs_rejected": 1,
    "inputs_not_ready": 1,
    "inputs_waiting": 2,
    "oldest_waiting_seconds": 930.5,
    "rows_predicted": 40000,
    "rows_scored": 39000,
    "rmse_live": 9.5,
    "model_rmse_eval": 8.5,
    "psi_pickup": 0.02,
    "psi_dropoff": 0.31,
    "mean_predicted_duration": 14.25,
    "input_records": [{"input": "a.parquet", "rows": 20000}],
    "outputs": ["a", "b"],
    "rejected": [{"input": "bad.parquet"}],
    "waiting_for_model": False,
    "seconds": 0.8,
}


def samples(items: list[metrics.Sample]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, s.labels): s.value for s in items}


def run_end(command: str, summary: dict[str, Any] | None, code: int = 0) -> metrics.RunEnd:
    return metrics.RunEnd(command, code, started=1000.0, finished=1012.5, summary=summary)


def test_every_command_reports_when_and_how_it_ended() -> None:
    ok = samples(metrics.run_samples(run_end("fetch", {"bytes": 123}), previous_failures=2))
    assert ok == {
        ("taxi_job_last_run_timestamp_seconds", ()): 1012.5,
        ("taxi_job_last_run_duration_seconds", ()): 12.5,
        ("taxi_job_last_exit_code", ()): 0,
        ("taxi_job_last_success_timestamp_seconds", ()): 1012.5,
        ("taxi_job_consecutive_failures", ()): 0,
        ("taxi_job_fetch_bytes", ()): 123,
    }
    failed = samples(metrics.run_samples(run_end("fetch", None, 75), previous_failures=2))
    assert failed == {
        ("taxi_job_last_run_timestamp_seconds", ()): 1012.5,
        ("taxi_job_last_run_duration_seconds", ()): 12.5,
        ("taxi_job_last_exit_code", ()): 75,
        ("taxi_job_last_failure_timestamp_seconds", ()): 1012.5,
        ("taxi_job_consecutive_failures", ()): 3,
    }
    # An unknown count (the Pushgateway did not say) is left out, not guessed.
    unknown = samples(metrics.run_samples(run_end("fetch", None, 75), previous_failures=None))
    assert ("taxi_job_consecutive_failures", ()) not in unknown


def test_a_training_reports_its_rows_scores_verdict_and_model() -> None:
    run = samples(metrics.run_samples(run_end("train", TRAIN), previous_failures=0))
    assert run[("taxi_job_train_rows_read", ())] == 20000
    assert run[("taxi_job_train_rows_kept", ())] == 19509
    assert run[("taxi_job_train_eval_rows_read", ())] == 21000
    assert run[("taxi_job_train_eval_rows_kept", ())] == 20480
    made = samples(metrics.result_samples(TRAIN))
    assert made == {
        ("taxi_job_train_rmse_seconds", (("dataset", "train"),)): 8.25 * MINUTE,
        ("taxi_job_train_rmse_seconds", (("dataset", "eval"),)): 8.75 * MINUTE,
        ("taxi_job_train_features", ()): 531,
        ("taxi_job_train_promoted", ()): 0,
        ("taxi_job_train_gate_rejected", ()): 1,
        ("taxi_job_train_champion_rmse_seconds", ()): 8.5 * MINUTE,
        ("taxi_job_train_model_info", (("version", TRAIN["model_version"]),)): 1,
        ("taxi_job_train_model_created_timestamp_seconds", ()): 1796094591.0,
        ("taxi_job_current_model_info", (("version", TRAIN["current_version"]),)): 1,
    }


def test_a_shard_that_did_not_reduce_made_nothing_to_report() -> None:
    shard = {"run_id": "train-1", "shard": 1, "shards": 3, "rows_read": 5, "reducer": 0}
    assert metrics.result_samples(shard) == []
    assert metrics.result_samples(None) == []


def test_an_infer_run_reports_its_queue_and_the_models_live_quality() -> None:
    got = samples(metrics.run_samples(run_end("infer", INFER, 2), previous_failures=0))
    expected = {
        "taxi_job_infer_inputs_predicted": 2,
        "taxi_job_infer_inputs_skipped": 3,
        "taxi_job_infer_inputs_busy": 1,
        "taxi_job_infer_inputs_rejected": 1,
        "taxi_job_infer_inputs_not_ready": 1,
        "taxi_job_infer_inputs_waiting": 2,
        "taxi_job_infer_oldest_waiting_input_age_seconds": 930.5,
        "taxi_job_infer_rows_predicted": 40000,
        "taxi_job_infer_rows_scored": 39000,
        "taxi_job_infer_live_rmse_seconds": 9.5 * MINUTE,
        "taxi_job_infer_model_rmse_eval_seconds": 8.5 * MINUTE,
        "taxi_job_infer_mean_predicted_duration_seconds": 14.25 * MINUTE,
        "taxi_job_infer_waiting_for_model": 0,
        "taxi_job_infer_last_rejection_timestamp_seconds": 1012.5,
    }
    for name, number in expected.items():
        assert got[(name, ())] == pytest.approx(number), name
    assert got[("taxi_job_infer_zone_psi", (("trip_end", "pickup"),))] == 0.02
    assert got[("taxi_job_infer_zone_psi", (("trip_end", "dropoff"),))] == 0.31
    assert got[("taxi_job_current_model_info", (("version", INFER["model_version"]),))] == 1


def test_what_a_summary_lacks_is_not_reported() -> None:
    """A run with no scored row keeps the last live RMSE (none pushed), an empty queue
    says age 0 (a value the Pushgateway would otherwise keep), a run before the queue
    fields existed says nothing of them."""
    quiet = {**INFER, "rmse_live": None, "rows_scored": 0, "psi_pickup": None}
    quiet.update(inputs_rejected=0, inputs_waiting=0, oldest_waiting_seconds=None)
    got = {name for name, _ in samples(metrics.run_samples(run_end("infer", quiet), 0))}
    assert "taxi_job_infer_live_rmse_seconds" not in got
    assert "taxi_job_infer_model_rmse_eval_seconds" not in got
    assert "taxi_job_infer_rows_scored" not in got
    assert "taxi_job_infer_last_rejection_timestamp_seconds" not in got
    assert ("taxi_job_infer_zone_psi", (("trip_end", "pickup"),)) not in samples(
        metrics.run_samples(run_end("infer", quiet), 0)
    )
    assert (
        samples(metrics.run_samples(run_end("infer", quiet), 0))[
            ("taxi_job_infer_oldest_waiting_input_age_seconds", ())
        ]
        == 0
    )
    older = {
        k: v for k, v in INFER.items() if k not in ("inputs_waiting", "oldest_waiting_seconds")
    }
    got = {name for name, _ in samples(metrics.run_samples(run_end("infer", older), 0))}
    assert "taxi_job_infer_oldest_waiting_input_age_seconds" not in got
    assert "taxi_job_infer_inputs_waiting" not in got


# -- through the command line, to a real Pushgateway -------------------------------------


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def months(make_trips: Callable[..., Path]) -> tuple[Path, Path]:
    return (
        make_trips("jan.parquet", rows=3000, seed=1),
        make_trips("feb.parquet", rows=3000, seed=2),
    )


def train(months: tuple[Path, Path], root: Path, *more: str) -> Any:
    return invoke(
        "train",
        "--train-data",
        str(months[0]),
        "--eval-data",
        str(months[1]),
        "--artifacts",
        str(root),
        "--output-format",
        "json",
        *more,
    )


def summary_of(result: Any) -> dict[str, Any]:
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(summary, dict)
    return summary


def test_a_failed_training_keeps_the_time_of_the_last_success(
    months: tuple[Path, Path], tmp_path: Path, pushgateway: str, pushed: Callable[[], Series]
) -> None:
    root = tmp_path / "artifacts"
    ok = train(months, root, "--pushgateway", pushgateway)
    assert ok.exit_code == 0, ok.output
    summary = summary_of(ok)
    first = pushed()
    success = value(first, "taxi_job_last_success_timestamp_seconds", command="train")
    assert success is not None
    assert value(first, "taxi_job_last_exit_code", command="train") == 0
    assert value(first, "taxi_job_consecutive_failures", command="train") == 0
    assert value(first, "taxi_job_train_rmse_seconds", command="train", dataset="eval") == (
        pytest.approx(summary["rmse_eval"] * MINUTE, rel=1e-12)
    )
    assert value(first, "taxi_job_train_rows_kept", command="train") == summary["rows_kept"]
    assert value(first, "taxi_job_train_promoted", command="train") == 1
    assert value(first, "taxi_job_train_gate_rejected", command="train") == 0
    version = summary["model_version"]
    assert value(first, "taxi_job_current_model_info", command="train", version=version) == 1

    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    for attempt in (1, 2):
        failed = invoke(
            "train",
            "--train-data",
            str(bad),
            "--eval-data",
            str(months[1]),
            "--artifacts",
            str(root),
            env={"TAXI_JOB_PUSHGATEWAY": pushgateway},
        )
        assert failed.exit_code == 2
        after = pushed()
        assert value(after, "taxi_job_last_exit_code", command="train") == 2
        assert value(after, "taxi_job_consecutive_failures", command="train") == attempt
        # add semantics: the failure did not erase the success, nor the last model's scores
        assert value(after, "taxi_job_last_success_timestamp_seconds", command="train") == success
        assert value(
            after, "taxi_job_train_rmse_seconds", command="train", dataset="eval"
        ) == pytest.approx(summary["rmse_eval"] * MINUTE, rel=1e-12)
        failure = value(after, "taxi_job_last_failure_timestamp_seconds", command="train")
        assert failure is not None and failure >= success

    again = train(months, root, "--pushgateway", pushgateway)
    assert again.exit_code == 0
    assert value(pushed(), "taxi_job_consecutive_failures", command="train") == 0


def test_infer_groups_by_command_and_shard_not_by_pod(
    months: tuple[Path, Path], tmp_path: Path, pushgateway: str, pushed: Callable[[], Series]
) -> None:
    root = tmp_path / "artifacts"
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    # before any model: infer waits, exit 0
    waiting = invoke(
        "infer", "--input", str(incoming), "--artifacts", str(root), "--pushgateway", pushgateway
    )
    assert waiting.exit_code == 0
    assert value(pushed(), "taxi_job_infer_waiting_for_model", command="infer") == 1
    assert train(months, root).exit_code == 0
    for name in ("a.parquet", "b.parquet", "c.parquet"):
        (incoming / name).write_bytes(months[1].read_bytes())
    (incoming / "d.parquet").write_text("not parquet")
    rows = {}
    for index in (0, 1):
        result = invoke(
            "infer",
            "--input",
            str(incoming),
            "--artifacts",
            str(root),
            "--shards",
            "2",
            "--shard-index",
            str(index),
            "--output-format",
            "json",
            "--pushgateway",
            pushgateway,
        )
        assert result.exit_code in (0, 2), result.output
        rows[index] = summary_of(result)
    series = pushed()
    for index, summary in rows.items():
        shard = str(index)
        assert (
            value(series, "taxi_job_infer_rows_predicted", command="infer", shard=shard)
            == (summary["rows_predicted"])
        )
        assert (
            value(series, "taxi_job_infer_inputs_rejected", command="infer", shard=shard)
            == summary["inputs_rejected"]
        )
        code = 2 if summary["inputs_rejected"] else 0
        assert value(series, "taxi_job_last_exit_code", command="infer", shard=shard) == code
        assert (
            value(
                series,
                "taxi_job_infer_last_rejection_timestamp_seconds",
                command="infer",
                shard=shard,
            )
            is None
        ) == (code == 0)
    assert sum(s["inputs_rejected"] for s in rows.values()) == 1
    # The unsharded group is the waiting run's, untouched by the shards.
    assert value(series, "taxi_job_infer_waiting_for_model", command="infer") == 1
    assert {dict(labels).get("command") for labels in series["taxi_job_last_exit_code"]} == {
        "infer"
    }


def test_models_commands_and_data_commands_push_too(
    months: tuple[Path, Path], tmp_path: Path, pushgateway: str, pushed: Callable[[], Series]
) -> None:
    root = tmp_path / "artifacts"
    env = {"TAXI_JOB_PUSHGATEWAY": pushgateway}
    first = summary_of(train(months, root, "--output-format", "json"))
    train(months, root)
    rollback = invoke(
        "models", "promote", first["model_version"], "--artifacts", str(root), env=env
    )
    assert rollback.exit_code == 0, rollback.output
    assert (
        invoke("models", "prune", "--keep", "1", "--artifacts", str(root), env=env).exit_code == 0
    )
    assert (
        invoke(
            "sample-data", "--month", "2021-01", "--rows", "10", str(tmp_path / "d"), env=env
        ).exit_code
        == 0
    )
    # listing is not a run worth monitoring: it takes no --pushgateway
    assert invoke("models", "list", "--artifacts", str(root), env=env).exit_code == 0
    series = pushed()
    assert (
        value(
            series,
            "taxi_job_current_model_info",
            command="models-promote",
            version=first["model_version"],
        )
        == 1
    )
    assert value(series, "taxi_job_models_pruned", command="models-prune") == 0
    assert value(series, "taxi_job_sample_rows", command="sample-data") == 10
    commands = {dict(labels)["command"] for labels in series["taxi_job_last_exit_code"]}
    assert commands == {"models-promote", "models-prune", "sample-data"}


def test_an_empty_pushgateway_setting_is_off(
    months: tuple[Path, Path], tmp_path: Path, pushed: Callable[[], Series]
) -> None:
    result = train(months, tmp_path / "artifacts", "--pushgateway", "")
    assert result.exit_code == 0
    result = invoke(
        "sample-data",
        "--month",
        "2021-01",
        "--rows",
        "10",
        str(tmp_path),
        env={"TAXI_JOB_PUSHGATEWAY": ""},
    )
    assert result.exit_code == 0
    assert "taxi_job_last_exit_code" not in pushed()
