"""The run history: the Jobs of the ``train`` and ``infer`` CronJobs, scheduled or launched
by hand, their state, and the summary each run left in its pod's termination message.

Also the small readers of a Job that the launcher shares: which command, which trigger,
which state.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from job.errors import EXIT_BAD_INPUT, EXIT_NO_MODEL, EXIT_TRANSIENT, EXIT_UNEXPECTED
from job.kube import api_call

if TYPE_CHECKING:
    from kubernetes.client import V1ObjectMeta

    from job.kube import BatchV1Api, CoreV1Api, V1CronJob, V1Job, V1Pod

#: The CronJobs (and commands) whose Jobs make up the history (``models``: a suspended
#: template that ``taxi-job launch models ...`` runs, e.g. a rollback).
COMMANDS = ("train", "infer", "models")
#: The container that runs ``taxi-job`` in a CronJob's pod template: one of these names
#: (the manifests name it after the command), else the pod's first container.
CONTAINERS = ("taxi-job", *COMMANDS)
#: The annotation ``kubectl create job --from=cronjob/...`` sets, and so do we.
INSTANTIATE_ANNOTATION = "cronjob.kubernetes.io/instantiate"
#: Our own label on a Job launched by hand (``manual``).
TRIGGER_LABEL = "taxi-job/trigger"
#: Who launched a manual Job (an annotation: free text).
LAUNCHED_BY_ANNOTATION = "taxi-job/launched-by"
#: The label that says which command a CronJob (and its Jobs, through the jobTemplate's
#: labels) runs: the launcher finds CronJobs by it, so copies renamed by a kustomize
#: ``namePrefix`` (``blue-train``) are found as well.
COMPONENT_LABEL = "app.kubernetes.io/component"
#: The label the Job controller puts on its pods (``batch.kubernetes.io/job-name`` since
#: 1.27 too; this older one is still set and works on every version).
JOB_NAME_LABEL = "job-name"


@dataclass(frozen=True)
class JobState:
    """Where a Job stands, from its status conditions."""

    state: str
    """``pending``, ``running``, ``suspended``, ``succeeded`` or ``failed``."""
    reason: str | None = None
    """Why it failed: ``PodFailurePolicy``, ``BackoffLimitExceeded``, ``DeadlineExceeded``."""
    message: str | None = None
    """The Job controller's sentence about the failure."""
    finished_at: dt.datetime | None = None
    """When it succeeded or failed."""

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed")


#: The conditions a Job gets once its outcome is decided, while its pods still terminate
#: (``Complete`` or ``Failed`` follow when they have).
_DECIDED = ("SuccessCriteriaMet", "FailureTarget")


def job_state(job: V1Job) -> JobState:
    """The state of ``job``: a ``Complete`` or ``Failed`` condition is final; ``running``
    while a pod of it runs (is ready) or has ended and is not yet counted."""
    status = job.status
    if status is None:
        return JobState("pending")
    conditions = {c.type: c for c in (status.conditions or []) if c.status == "True"}
    if "Complete" in conditions:
        end = status.completion_time or conditions["Complete"].last_transition_time
        return JobState("succeeded", finished_at=end)
    if "Failed" in conditions:
        failed = conditions["Failed"]
        return JobState("failed", failed.reason, failed.message, failed.last_transition_time)
    if "Suspended" in conditions:
        return JobState("suspended")
    uncounted = status.uncounted_terminated_pods
    if any(c in conditions for c in _DECIDED) or (
        uncounted is not None and (uncounted.succeeded or uncounted.failed)
    ):
        return JobState("running")
    # ``active`` counts pods not yet ended, scheduled or not; ``ready`` those that run
    # (a server before 1.24 does not say: then an active pod counts as running).
    if status.active and (status.ready is None or status.ready > 0):
        return JobState("running")
    return JobState("pending")


def meta(obj: V1Job | V1Pod | V1CronJob) -> V1ObjectMeta:
    """The metadata of ``obj``: the server sends it with every object, and the client's
    models, generated, make every field optional."""
    if obj.metadata is None:
        from kubernetes import client

        return client.V1ObjectMeta()
    return obj.metadata


def name_of(obj: V1Job | V1Pod | V1CronJob) -> str:
    """The name of ``obj`` (the server names every object it sends)."""
    return meta(obj).name or ""


def created_at(obj: V1Job | V1Pod) -> dt.datetime:
    """When ``obj`` was created, for sorting (the oldest possible time if unknown)."""
    return meta(obj).creation_timestamp or dt.datetime.min.replace(tzinfo=dt.UTC)


def cronjob_of(job: V1Job) -> str | None:
    """The name of the CronJob that owns ``job`` (scheduled, or launched by us)."""
    for ref in meta(job).owner_references or []:
        if ref.kind == "CronJob" and ref.name:
            return str(ref.name)
    return None


def command_of(job: V1Job) -> str | None:
    """``train``, ``infer`` or ``models``: the command of the CronJob that owns ``job``, by
    the component label its jobTemplate gives it (the CronJob's name may carry a
    ``namePrefix``), else by that CronJob's name (a Job made from a template without it)."""
    owner = cronjob_of(job)
    if owner is None:
        return None
    component = (meta(job).labels or {}).get(COMPONENT_LABEL)
    if component in COMMANDS:
        return str(component)
    return owner if owner in COMMANDS else None


def trigger_of(job: V1Job) -> str:
    """``manual`` for a Job made by hand (by us or ``kubectl create job --from``), else
    ``scheduled``."""
    annotations = meta(job).annotations or {}
    labels = meta(job).labels or {}
    if annotations.get(INSTANTIATE_ANNOTATION) == "manual" or labels.get(TRIGGER_LABEL):
        return "manual"
    return "scheduled"


def started_at(job: V1Job) -> dt.datetime | None:
    """When the Job controller started ``job`` (its creation, before that)."""
    start = job.status.start_time if job.status is not None else None
    return start or meta(job).creation_timestamp


def is_job_pod(pod: V1Pod, job_name: str) -> bool:
    labels = meta(pod).labels or {}
    return bool(
        labels.get(JOB_NAME_LABEL) == job_name
        or labels.get("batch.kubernetes.io/job-name") == job_name
    )


def pick_container(items: Sequence[Any]) -> Any:
    """Of containers (or their statuses), the one that runs ``taxi-job``."""
    chosen = next((c for c in items if c.name in CONTAINERS), None)
    return chosen if chosen is not None else (items[0] if items else None)


def termination_summary(pod: V1Pod) -> dict[str, Any]:
    """The JSON summary the run wrote to its termination message; a message that is not a
    JSON object (a log tail, with ``FallbackToLogsOnError``) becomes ``{"message": ...}``."""
    statuses = (pod.status.container_statuses or []) if pod.status is not None else []
    chosen = pick_container(statuses)
    if chosen is None:
        return {}
    terminated = None
    for state in (chosen.state, chosen.last_state):
        if state is not None and state.terminated is not None:
            terminated = state.terminated
            break
    if terminated is None or not terminated.message:
        return {}
    text = terminated.message.strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    last = text.splitlines()[-1] if text else ""
    return {"message": last[:200]}


def pod_for_result(pods: Iterable[V1Pod], state: str) -> V1Pod | None:
    """The pod whose termination message tells the run's outcome: the one that succeeded,
    else the newest."""
    ordered = sorted(pods, key=created_at)
    if state == "succeeded":
        for pod in reversed(ordered):
            if pod.status is not None and pod.status.phase == "Succeeded":
                return pod
    return ordered[-1] if ordered else None


def is_reducer(summary: Mapping[str, Any]) -> bool:
    """A shard's summary that tells the sharded training's outcome: the shard that reduced
    (fitted, gated, published), or one that found the run published already."""
    return summary.get("reducer") == summary.get("shard") or bool(summary.get("published_already"))


def run_summary(pods: Iterable[V1Pod], state: str) -> dict[str, Any]:
    """What a Job's run says about itself. One pod: its termination message. A sharded
    training (an Indexed Job, a pod a shard): the reducer's summary, not whichever shard
    ended last (a training the gate rejected shows rejected); when every shard succeeded
    and none reduced, the newest shard's with ``no_reducer: true``: nothing was published
    (more shards expected than the Job ran, or a shard that never saw the others')."""
    ordered = sorted(pods, key=created_at)
    if state == "succeeded":
        done = [
            termination_summary(p)
            for p in ordered
            if p.status is not None and p.status.phase == "Succeeded"
        ]
        shards = [s for s in done if "shard" in s and "shards" in s]
        if shards:
            reduced = [s for s in shards if is_reducer(s)]
            # The reducer's own summary before a late duplicate's "published already".
            reduced.sort(key=lambda s: s.get("reducer") == s.get("shard"))
            if reduced:
                return reduced[-1]
            return {**shards[-1], "no_reducer": True}
    pod = pod_for_result(ordered, state)
    return termination_summary(pod) if pod is not None else {}


@dataclass(frozen=True)
class Run:
    """One Job of the history."""

    name: str
    command: str
    """``train`` or ``infer``."""
    trigger: str
    """``scheduled`` or ``manual``."""
    state: str
    reason: str | None
    start: dt.datetime | None
    duration_s: float | None
    """From start to the end; for a run still going, until now."""
    summary: dict[str, Any] = field(default_factory=dict)
    """What the run wrote to its termination message, once finished."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command": self.command,
            "trigger": self.trigger,
            "state": self.state,
            "reason": self.reason,
            "start": self.start.isoformat() if self.start else None,
            "duration_s": None if self.duration_s is None else round(self.duration_s, 1),
            "summary": self.summary,
        }


def list_runs(
    batch: BatchV1Api,
    core: CoreV1Api,
    namespace: str,
    *,
    limit: int = 20,
    now: dt.datetime | None = None,
    prefix: str | None = None,
) -> list[Run]:
    """The ``limit`` newest runs of ``train``, ``infer`` and ``models`` in ``namespace``,
    newest first: of every copy of the CronJobs (names under any ``namePrefix``), or, with
    ``prefix``, of the copy named ``PREFIX`` + command."""
    now = now or dt.datetime.now(dt.UTC)
    with api_call(batch, "list", "jobs.batch", namespace=namespace):
        jobs = batch.list_namespaced_job(namespace).items or []
    ours = [
        j
        for j in jobs
        if (command := command_of(j)) is not None
        and (prefix is None or cronjob_of(j) == prefix + command)
    ]
    ours.sort(key=lambda j: started_at(j) or now, reverse=True)
    ours = ours[:limit]
    pods: list[V1Pod] = []
    if any(job_state(j).finished for j in ours):
        with api_call(core, "list", "pods", namespace=namespace):
            pods = core.list_namespaced_pod(namespace, label_selector=JOB_NAME_LABEL).items or []
    return [_run(job, pods, now) for job in ours]


def _run(job: V1Job, pods: Sequence[V1Pod], now: dt.datetime) -> Run:
    state = job_state(job)
    start = started_at(job)
    end = state.finished_at if state.finished else now
    duration = (end - start).total_seconds() if start and end else None
    summary: dict[str, Any] = {}
    if state.finished:
        summary = run_summary((p for p in pods if is_job_pod(p, name_of(job))), state.state)
    return Run(
        name=name_of(job),
        command=command_of(job) or "?",
        trigger=trigger_of(job),
        state=state.state,
        reason=state.reason,
        start=start,
        duration_s=duration,
        summary=summary,
    )


def _count(value: Any, noun: str) -> str:
    """``1 input``, ``2 inputs``."""
    return f"{value} {noun}" if value == 1 else f"{value} {noun}s"


def _num(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else str(value)


def describe_summary(command: str, summary: Mapping[str, Any]) -> str:
    """A run's summary in a few words: the model and its RMSE for ``train``, the inputs and
    rows for ``infer``, the error for a failed run."""
    if not summary:
        return "-"
    if summary.get("no_reducer"):
        missing = summary.get("missing_shards")
        waited = f" (shard {summary.get('shard')} waited for {missing})" if missing else ""
        return f"no shard reduced: nothing published{waited}"
    if "error" in summary and not summary.get("inputs_rejected"):
        return f"{_exit_words(summary.get('exit_code'))}: {summary['error']}"
    if command == "train" and "model_version" in summary:
        text = f"model {summary['model_version']}"
        if "rmse_eval" in summary:
            text += f", rmse eval {_num(summary['rmse_eval'], 3)}"
        if "rmse_train" in summary:
            text += f" train {_num(summary['rmse_train'], 3)}"
        if is_rejected(command, summary):
            text += (
                f"; kept {summary.get('champion_version')} "
                f"(rmse eval {_num(summary['rmse_eval_champion'], 3)})"
            )
        return text
    if command == "infer" and summary.get("waiting_for_model"):
        where = f" in {summary['artifacts']}" if summary.get("artifacts") else ""
        return f"no model yet{where}: waiting for the first training"
    if command == "infer" and "inputs_predicted" in summary:
        text = _count(summary["inputs_predicted"], "input")
        text += f", {_count(summary.get('rows_predicted', '?'), 'row')}"
        for key in ("skipped", "busy"):
            if summary.get(f"inputs_{key}"):
                text += f", {summary[f'inputs_{key}']} {key}"
        if summary.get("inputs_rejected"):
            names = [
                str(r.get("input", "?")).rsplit("/", 1)[-1]
                for r in summary.get("rejected") or []
                if isinstance(r, dict)
            ]
            text += f", {summary['inputs_rejected']} rejected ({', '.join(names) or 'see logs'})"
        if summary.get("rows_scored"):
            text += (
                f", rmse live {_num(summary.get('rmse_live'), 3)} "
                f"on {_count(summary['rows_scored'], 'row')} scored"
            )
        if "model_version" in summary:
            text += f" (model {summary['model_version']})"
        return text
    if command == "models":
        return _describe_models(summary)
    if "message" in summary:
        return str(summary["message"])
    return json.dumps(summary, default=str)[:120]


#: What a run's exit code tells the one who reads the history (job.errors).
EXIT_WORDS = {
    EXIT_UNEXPECTED: "unexpected error",
    EXIT_BAD_INPUT: "bad input",
    EXIT_NO_MODEL: "no usable model",
    EXIT_TRANSIENT: "transient error, a later run retries",
}


def _exit_words(code: Any) -> str:
    """``error (exit 75, transient error, a later run retries)``; ``error`` without a code."""
    if not isinstance(code, int):
        return "error"
    words = EXIT_WORDS.get(code)
    return f"error (exit {code}, {words})" if words else f"error (exit {code})"


def _describe_models(summary: Mapping[str, Any]) -> str:
    """``rollback to V (was W)`` for a promotion, ``3 versions, current V`` for a list."""
    if "cause" in summary and "version" in summary:
        if summary.get("changed") is False:
            return f"{summary['version']} was current already"
        text = f"{summary['cause']} to {summary['version']} (was {summary.get('previous_version')})"
        return text + (f": {summary['reason']}" if summary.get("reason") else "")
    if isinstance(summary.get("versions"), list):
        versions = summary["versions"]
        now = next((v.get("version") for v in versions if v.get("status") == "current"), None)
        count = len(versions) + int(summary.get("versions_omitted") or 0)
        return f"{_count(count, 'version')}, current {now}"
    if "pruned" in summary:
        return f"pruned {_count(len(summary['pruned']), 'version')}"
    return json.dumps(summary, default=str)[:120]


def is_rejected(command: str, summary: Mapping[str, Any]) -> bool:
    """A training that succeeded but whose model failed the promotion gate (the Job did
    its work; the model it made is not current)."""
    return command == "train" and summary.get("gate") == "rejected"


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


#: The columns of :func:`table_row`, as ``taxi-job runs`` shows them.
TABLE_HEADER = ("NAME", "COMMAND", "TRIGGER", "STATE", "START (UTC)", "DURATION", "SUMMARY")


def table_row(run: Mapping[str, Any]) -> tuple[str, ...]:
    """A run (as :meth:`Run.to_dict` gives it) as the cells of one table row."""
    state = f"{run['state']} ({run['reason']})" if run.get("reason") else run["state"]
    if run["state"] == "succeeded" and is_rejected(run["command"], run.get("summary") or {}):
        state = "rejected"
    if run["state"] == "succeeded" and (run.get("summary") or {}).get("no_reducer"):
        state = "unpublished"
    start = str(run["start"])[:16].replace("T", " ") if run.get("start") else "-"
    return (
        run["name"],
        run["command"],
        run["trigger"],
        state,
        start,
        format_duration(run.get("duration_s")),
        describe_summary(run["command"], run.get("summary") or {}),
    )
