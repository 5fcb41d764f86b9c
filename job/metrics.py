"""A run's Prometheus metrics, derived from its summary and pushed to a Pushgateway.

Batch runs end before Prometheus could scrape them, so each run pushes its metrics to a
Pushgateway once, at its end (success or failure), and Prometheus scrapes that. Three rules
keep the numbers right:

- **Derived from the summary only** (plus the exit code and the run's times), so a metric
  never disagrees with what ``taxi-job runs`` shows. A field a summary does not have (or
  has as null) gives no metric.
- **Add semantics** (``POST``, prometheus-client's ``pushadd_to_gateway``): a push
  replaces the metrics of the same name in its group and keeps the others, so a failed
  run, which pushes no ``last_success`` time, keeps the one of the last success; a value a
  run does not know (the live RMSE of a run that scored no row) stays the last run's that
  did.
- **Grouped by command** (and shard index, for a shard of a sharded run), never by pod: a
  group per pod name would pile up forever. What a training *made* (its scores, the gate's
  verdict, the model) goes to the group of the command alone, also from a sharded
  training's reducing shard: the shard that reduces changes from run to run, and a verdict
  left in another shard's group would outlive the next training.

A monitoring outage must not break or delay the pipeline: the whole exchange runs in a
daemon thread given :data:`PUSH_TIMEOUT_S` (name resolution included, which no socket
timeout bounds), one warning line when it fails or runs out, no retry, and the caller's
exit code is never touched.

prometheus-client is imported only when a run pushes: `taxi-job infer` starts every minute.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

logger = logging.getLogger(__name__)

#: The ``job`` label of every pushed series (the Pushgateway's first grouping label).
JOB = "taxi-job"
#: The whole exchange with the Pushgateway (read the failure count, push) gets this long,
#: then the run ends without it: a scheduled run every minute cannot wait on monitoring.
PUSH_TIMEOUT_S = 2.0
#: Durations of the summary are minutes; Prometheus's base unit is the second.
SECONDS_PER_MINUTE = 60.0
#: The count of failed runs in a row, read back from the Pushgateway before each push.
CONSECUTIVE_FAILURES = "taxi_job_consecutive_failures"

GroupingKey = tuple[tuple[str, str], ...]

#: The current model's version as a label, from train, infer and models promote alike.
CURRENT_MODEL = (
    "taxi_job_current_model_info",
    "The current model version (label version), as this command last saw it.",
)


@dataclass(frozen=True)
class Sample:
    """One series to push: a gauge's name, help, value and labels (beyond the group's)."""

    name: str
    help: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RunEnd:
    """How a run ended: what the metrics are made of."""

    command: str
    """``train``, ``infer``, ``models-promote``, ``models-prune``, ``sample-data``, ``fetch``."""
    exit_code: int
    started: float
    """Unix time the command began."""
    finished: float
    summary: Mapping[str, Any] | None
    """The run's summary; None for a run that failed before it had one."""
    shard: int | None = None
    """The shard index of a sharded run (``--shards`` above 1), else None."""


def _number(value: Any) -> float | None:
    """A summary value as a float; None for null, text, lists (and bool is 0/1)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _timestamp(value: Any) -> float | None:
    """An ISO-8601 UTC time of a summary (``2026-12-01T02:37:17Z``) as Unix time."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


class _Samples:
    """Collects samples, leaving out a value the summary does not have."""

    def __init__(self) -> None:
        self.items: list[Sample] = []

    def add(
        self, name: str, help_: str, value: Any, labels: tuple[tuple[str, str], ...] = ()
    ) -> None:
        number = _number(value)
        if number is not None:
            self.items.append(Sample(name, help_, number, labels))

    def field(
        self,
        summary: Mapping[str, Any],
        key: str,
        name: str,
        help_: str,
        scale: float = 1.0,
        labels: tuple[tuple[str, str], ...] = (),
    ) -> None:
        number = _number(summary.get(key))
        if number is not None:
            self.add(name, help_, number * scale, labels)

    def info(self, name: str, help_: str, label: str, value: Any) -> None:
        if isinstance(value, str) and value:
            self.add(name, help_, 1, ((label, value),))


def run_samples(run: RunEnd, previous_failures: int | None) -> list[Sample]:
    """Every command's metrics: when it ran and how it ended, and the summary's counts.
    ``previous_failures`` is the group's failure count before this run (None: unknown,
    then no count is pushed rather than a wrong one)."""
    out = _Samples()
    out.add("taxi_job_last_run_timestamp_seconds", "Unix time the last run ended.", run.finished)
    out.add(
        "taxi_job_last_run_duration_seconds",
        "How long the last run took.",
        max(run.finished - run.started, 0.0),
    )
    out.add("taxi_job_last_exit_code", "Exit code of the last run (0 success).", run.exit_code)
    if run.exit_code == 0:
        out.add(
            "taxi_job_last_success_timestamp_seconds",
            "Unix time the last successful run (exit 0) ended.",
            run.finished,
        )
    else:
        out.add(
            "taxi_job_last_failure_timestamp_seconds",
            "Unix time the last failed run (exit code not 0) ended.",
            run.finished,
        )
    if previous_failures is not None:
        out.add(
            CONSECUTIVE_FAILURES,
            "Failed runs in a row up to the last one (0 after a success).",
            0 if run.exit_code == 0 else previous_failures + 1,
        )
    summary = run.summary or {}
    if run.command == "train":
        _train_rows(out, summary)
    elif run.command == "infer":
        _infer(out, summary, run.finished)
    elif run.command == "models-promote":
        out.info(
            *CURRENT_MODEL,
            "version",
            summary.get("version"),
        )
    elif run.command == "models-prune":
        pruned = summary.get("pruned")
        if isinstance(pruned, list):
            out.add("taxi_job_models_pruned", "Versions the last prune deleted.", len(pruned))
    elif run.command == "sample-data":
        out.field(summary, "rows", "taxi_job_sample_rows", "Trips the last sample-data wrote.")
    elif run.command == "fetch":
        out.field(summary, "bytes", "taxi_job_fetch_bytes", "Size of the month last fetched.")
    return out.items


def _train_rows(out: _Samples, summary: Mapping[str, Any]) -> None:
    """What a training (or one shard of it) read: its share for a shard, all for a reducer."""
    for key, help_ in (
        ("rows_read", "Training rows read by the last training."),
        ("rows_kept", "Training rows kept by the duration filter."),
        ("eval_rows_read", "Evaluation rows read by the last training."),
        ("eval_rows_kept", "Evaluation rows kept by the duration filter."),
    ):
        out.field(summary, key, f"taxi_job_train_{key}", help_)


def result_samples(summary: Mapping[str, Any] | None) -> list[Sample]:
    """What a training made, for the command's own group: the model's scores, the gate's
    verdict, the model versions. Empty for a run that made no model (a failure, a shard
    that did not reduce, a duplicate of a published run)."""
    summary = summary or {}
    out = _Samples()
    if "gate" not in summary:
        return []
    rmse = "taxi_job_train_rmse_seconds"
    help_ = "RMSE of the last trained model's durations, by dataset (train, eval)."
    out.field(summary, "rmse_train", rmse, help_, SECONDS_PER_MINUTE, (("dataset", "train"),))
    out.field(summary, "rmse_eval", rmse, help_, SECONDS_PER_MINUTE, (("dataset", "eval"),))
    out.field(summary, "features", "taxi_job_train_features", "One-hot features of the model.")
    out.field(
        summary,
        "promoted",
        "taxi_job_train_promoted",
        "1 if the last trained model was made current, else 0.",
    )
    out.add(
        "taxi_job_train_gate_rejected",
        "1 if the promotion gate refused the last trained model, else 0.",
        summary.get("gate") == "rejected",
    )
    out.field(
        summary,
        "rmse_eval_champion",
        "taxi_job_train_champion_rmse_seconds",
        "Evaluation RMSE of the model serving when the last training was gated.",
        SECONDS_PER_MINUTE,
    )
    out.info(
        "taxi_job_train_model_info",
        "The version the last training published (label version).",
        "version",
        summary.get("model_version"),
    )
    out.add(
        "taxi_job_train_model_created_timestamp_seconds",
        "Unix time the model of the last training was created.",
        _timestamp(summary.get("model_created")),
    )
    out.info(
        *CURRENT_MODEL,
        "version",
        summary.get("current_version"),
    )
    return out.items


def _infer(out: _Samples, summary: Mapping[str, Any], finished: float) -> None:
    for kind in ("predicted", "skipped", "busy", "rejected", "not_ready", "waiting"):
        out.field(
            summary,
            f"inputs_{kind}",
            f"taxi_job_infer_inputs_{kind}",
            f"Inputs {kind.replace('_', ' ')} in the last infer run.",
        )
    out.field(summary, "rows_predicted", "taxi_job_infer_rows_predicted", "Rows predicted.")
    if "inputs_waiting" in summary:
        # Nothing waiting has no oldest: 0, not an absent value (which the Pushgateway
        # would keep at the last run's age).
        age = summary.get("oldest_waiting_seconds")
        out.add(
            "taxi_job_infer_oldest_waiting_input_age_seconds",
            "Age of the oldest input not yet predicted by the current model (0: none waits).",
            age if age is not None else 0 if summary["inputs_waiting"] == 0 else None,
        )
    out.field(
        summary,
        "waiting_for_model",
        "taxi_job_infer_waiting_for_model",
        "1 while infer finds no model to predict with (none trained yet), else 0.",
    )
    if (summary.get("inputs_rejected") or 0) > 0:
        out.add(
            "taxi_job_infer_last_rejection_timestamp_seconds",
            "Unix time of the last infer run that set aside (rejected) an input.",
            finished,
        )
    out.info(
        *CURRENT_MODEL,
        "version",
        summary.get("model_version"),
    )
    # The live quality of the model: pushed together, and only by a run that scored rows,
    # so the live and the evaluation RMSE that an alert compares are of one model.
    if _number(summary.get("rmse_live")) is not None:
        out.field(
            summary,
            "rmse_live",
            "taxi_job_infer_live_rmse_seconds",
            "RMSE of the current model on the rows with a drop-off time predicted by the "
            "last run that scored some (training filter applied).",
            SECONDS_PER_MINUTE,
        )
        out.field(summary, "rows_scored", "taxi_job_infer_rows_scored", "Rows of the live RMSE.")
        out.field(
            summary,
            "model_rmse_eval",
            "taxi_job_infer_model_rmse_eval_seconds",
            "Evaluation RMSE of the model the live RMSE is of.",
            SECONDS_PER_MINUTE,
        )
    for end in ("pickup", "dropoff"):
        out.field(
            summary,
            f"psi_{end}",
            "taxi_job_infer_zone_psi",
            "Population stability index of the last predicted rows' zone mix against the "
            "training rows', by trip end (pickup, dropoff).",
            labels=(("trip_end", end),),
        )
    out.field(
        summary,
        "mean_predicted_duration",
        "taxi_job_infer_mean_predicted_duration_seconds",
        "Mean predicted duration of the rows the last run predicted.",
        SECONDS_PER_MINUTE,
    )


def grouping_keys(run: RunEnd) -> tuple[GroupingKey, GroupingKey]:
    """The run's group and the group of what it made (the same, but for a shard)."""
    command: GroupingKey = (("command", run.command),)
    if run.shard is None:
        return command, command
    return (*command, ("shard", str(run.shard))), command


def _base_url(url: str) -> str:
    """The Pushgateway's URL with a scheme (as prometheus-client reads it) and no end slash."""
    return (url if "://" in url else f"http://{url}").rstrip("/")


def read_failures(url: str, key: GroupingKey, timeout: float) -> int:
    """The group's ``taxi_job_consecutive_failures`` on the Pushgateway (0 if it has none)."""
    with urllib.request.urlopen(f"{_base_url(url)}/api/v1/metrics", timeout=timeout) as answer:
        body = json.load(answer)
    wanted = {"job": JOB, **dict(key)}
    for group in body.get("data", []):
        if group.get("labels") == wanted:
            series = group.get(CONSECUTIVE_FAILURES, {}).get("metrics", [])
            return int(float(series[0]["value"])) if series else 0
    return 0


def push(url: str, run: RunEnd, timeout: float = PUSH_TIMEOUT_S) -> bool:
    """Push the run's metrics to the Pushgateway at ``url``; on any failure, or when it
    takes longer than ``timeout`` seconds, one warning and False. Never raises."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            _exchange(url, run, time.monotonic() + timeout)
        except BaseException as exc:  # noqa: BLE001 - reported by the waiting thread
            errors.append(exc)

    # A daemon thread: one that never returns (a Pushgateway that accepts and never
    # answers, a name server that hangs) is left behind and dies with the process.
    thread = threading.Thread(target=work, name="pushgateway", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        logger.warning("metrics not pushed to %s: no answer within %g s", url, timeout)
        return False
    if errors:
        logger.warning("metrics not pushed to %s: %s", url, _reason(errors[0]))
        return False
    return True


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


def _exchange(url: str, run: RunEnd, deadline: float) -> None:
    """Read the group's failure count, then push the run's group (and the group of what
    it made, if that is another one)."""
    from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

    run_key, result_key = grouping_keys(run)
    try:
        previous: int | None = read_failures(url, run_key, _left(deadline))
    except (urllib.error.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # It answers, but not with the Pushgateway's API (another push receiver): push
        # everything but the count. A connection failure is raised: nothing would get in.
        logger.debug("no failure count from %s: %s", url, exc)
        previous = None
    groups: dict[GroupingKey, list[Sample]] = {run_key: run_samples(run, previous)}
    groups.setdefault(result_key, []).extend(result_samples(run.summary))
    for key, samples in groups.items():
        if not samples:
            continue
        registry = CollectorRegistry()
        gauges: dict[str, Any] = {}
        for sample in samples:
            names = tuple(label for label, _ in sample.labels)
            if sample.name not in gauges:
                gauges[sample.name] = Gauge(sample.name, sample.help, names, registry=registry)
            gauge = gauges[sample.name]
            (gauge.labels(**dict(sample.labels)) if names else gauge).set(sample.value)
        pushadd_to_gateway(
            _base_url(url),
            job=JOB,
            registry=registry,
            grouping_key=dict(key),
            timeout=_left(deadline),
        )
