"""Ad-hoc runs: a Job made from a CronJob's ``jobTemplate`` (much as ``kubectl create job
--from=cronjob/NAME`` makes it, but kept out of the CronJob's history and removed by its
own TTL), an overlap guard for ``train`` (a warning for ``infer``), and waiting for the Job
with progress, its pod's logs, and the reason it failed.

The functions take the API objects (``BatchV1Api``, ``CoreV1Api``) as parameters, so tests
hand in their own; the ``kubernetes`` client is imported lazily.

Exit codes of the launcher's own errors (the cluster's are in :mod:`job.kube`):

==== ===================================================================================
code meaning
==== ===================================================================================
2    :class:`job.errors.BadInputError`: a ``--set`` that is not ``KEY=VALUE``;
     :class:`AmbiguousCronJobError`: copies of the command's CronJob (kustomize
     ``namePrefix``) and no ``--prefix`` to choose one.
70   :class:`RunFailedError`: the Job ran and failed (the message says why).
75   :class:`OverlapError`: another ``train`` Job is active; try again when it is done.
124  :class:`WaitTimeoutError`: ``--timeout`` passed; the Job keeps running.
==== ===================================================================================
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from job.envvars import envvar
from job.errors import EXIT_TRANSIENT, BadInputError, TaxiJobError
from job.kube import (
    APPLY_HINT,
    ClusterError,
    ClusterUnavailableError,
    Outage,
    api_call,
    explain,
    server_of,
)
from job.runs import (
    COMPONENT_LABEL,
    INSTANTIATE_ANNOTATION,
    LAUNCHED_BY_ANNOTATION,
    TRIGGER_LABEL,
    JobState,
    created_at,
    cronjob_of,
    describe_summary,
    is_job_pod,
    job_state,
    meta,
    name_of,
    pick_container,
    run_summary,
    started_at,
    trigger_of,
)

if TYPE_CHECKING:
    import urllib3

    from job.kube import BatchV1Api, CoreV1Api, V1CronJob, V1Job, V1Pod

logger = logging.getLogger(__name__)

#: sysexits' EX_SOFTWARE: the launched run failed.
EXIT_RUN_FAILED = 70
#: As coreutils' ``timeout``: we stopped waiting, the Job did not stop.
EXIT_WAIT_TIMEOUT = 124

#: Commands that must not overlap: two trainings would race to publish a model. Others
#: (``infer``: each input is claimed by one run) only warn.
GUARDED = frozenset({"train"})
#: How long a finished manual Job (and its pods, their logs and summary) stays: a week.
DEFAULT_TTL = 7 * 24 * 3600

_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
T = TypeVar("T")
_SUFFIX = string.ascii_lowercase + string.digits


class AmbiguousCronJobError(BadInputError):
    """More than one CronJob runs the command (copies under a ``namePrefix``), and none
    was chosen."""


class OverlapError(TaxiJobError):
    """A run of the same command is active and the command must not overlap."""

    exit_code = EXIT_TRANSIENT


class RunFailedError(TaxiJobError):
    """The Job failed, or vanished before it finished."""

    exit_code = EXIT_RUN_FAILED


class WaitTimeoutError(TaxiJobError):
    """The Job did not finish within ``--timeout``."""

    exit_code = EXIT_WAIT_TIMEOUT


def parse_settings(pairs: Iterable[str]) -> dict[str, str]:
    """``--set`` pairs as environment variables: ``train-data=X`` and
    ``TAXI_JOB_TRAIN_DATA=X`` both give ``{"TAXI_JOB_TRAIN_DATA": "X"}``."""
    settings: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise BadInputError(
                f"--set {pair!r}: expected KEY=VALUE, with KEY like train-data or "
                "TAXI_JOB_TRAIN_DATA"
            )
        settings[envvar(key)] = value
    return settings


def job_name(cronjob: str, now: dt.datetime | None = None) -> str:
    """A unique, sortable name: ``train-manual-20250106-120501-x7k2``, at most 63
    characters (the limit of the ``job-name`` label on its pods)."""
    now = now or dt.datetime.now(dt.UTC)
    suffix = f"-manual-{now:%Y%m%d-%H%M%S}-" + "".join(secrets.choice(_SUFFIX) for _ in range(4))
    return cronjob[: 63 - len(suffix)].rstrip("-") + suffix


def build_job(
    cronjob: V1CronJob,
    *,
    name: str,
    settings: Mapping[str, str] | None = None,
    launched_by: str | None = None,
    args: Sequence[str] | None = None,
    ttl: int = DEFAULT_TTL,
) -> V1Job:
    """The Job ``kubectl create job NAME --from=cronjob/...`` would create, labelled as
    launched by hand, with ``settings`` as env of the ``taxi-job`` container (env beats
    the ConfigMap's envFrom) and, when given, ``args`` as its arguments; removed ``ttl``
    seconds after it finished, and owned by the CronJob but not controlled by it (see
    below)."""
    from kubernetes import client

    template = cronjob.spec.job_template if cronjob.spec is not None else None
    spec = copy.deepcopy(template.spec) if template is not None else None
    pod = spec.template.spec if spec is not None else None
    if template is None or spec is None or pod is None:
        raise ClusterError(f'cronjobs.batch "{name_of(cronjob)}" has no jobTemplate to run')
    template_meta = template.metadata
    annotations = {INSTANTIATE_ANNOTATION: "manual"}
    annotations.update((template_meta.annotations if template_meta else None) or {})
    if launched_by:
        annotations[LAUNCHED_BY_ANNOTATION] = launched_by
    labels = dict((template_meta.labels if template_meta else None) or {})
    labels[TRIGGER_LABEL] = "manual"
    spec.ttl_seconds_after_finished = ttl
    if settings:
        _set_env(pod.containers, settings)
    if args is not None:
        target = pick_container(pod.containers)
        if target is None:
            raise BadInputError("the CronJob's pod template has no container to run")
        target.args = list(args)
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(
            name=name,
            namespace=meta(cronjob).namespace,
            labels=labels,
            annotations=annotations,
            # Owned, so deleting the CronJob deletes it (the garbage collector follows every
            # ownerReference), but not controlled: the CronJob controller handles only the
            # Jobs it controls, and would delete this one with its history (after the next
            # scheduled run, for infer's successfulJobsHistoryLimit: 1), as it does the Jobs
            # of kubectl create job --from. No blockOwnerDeletion: it needs the finalizers
            # permission.
            owner_references=[
                client.V1OwnerReference(
                    api_version="batch/v1",
                    kind="CronJob",
                    name=name_of(cronjob),
                    uid=meta(cronjob).uid or "",
                    controller=False,
                )
            ],
        ),
        spec=spec,
    )


def _set_env(containers: Sequence[Any], settings: Mapping[str, str]) -> None:
    from kubernetes import client

    target = pick_container(containers)
    if target is None:
        raise BadInputError("the CronJob's pod template has no container to --set on")
    env = [e for e in (target.env or []) if e.name not in settings]
    env.extend(client.V1EnvVar(name=k, value=v) for k, v in settings.items())
    target.env = env


def find_cronjob(
    batch: BatchV1Api, namespace: str, command: str, prefix: str | None = None
) -> V1CronJob:
    """The CronJob that runs ``command``: the one labelled ``app.kubernetes.io/component:
    COMMAND``, whatever its name (a kustomize ``namePrefix`` renames it, not its labels),
    or one without that label named ``COMMAND``. With ``prefix``, the one named ``PREFIX``
    + ``COMMAND`` among them; without, the only one. Raises :class:`AmbiguousCronJobError`
    (exit 2, naming the copies) when several match, :class:`job.kube.ClusterError` when
    none does."""
    # All of the namespace's, not by a label selector: a CronJob of one's own manifests
    # without the label is still found by its name.
    with api_call(batch, "list", "cronjobs.batch", namespace=namespace):
        listed = batch.list_namespaced_cron_job(namespace).items or []
    found = [c for c in listed if _runs(c, command)]
    names = sorted(name_of(c) for c in found)
    if prefix is not None:
        found = [c for c in found if name_of(c) == prefix + command]
    where = f'in namespace "{namespace}"'
    if not found:
        if prefix is not None and names:
            raise ClusterError(
                f'no CronJob "{prefix}{command}" {where}; the {command} CronJobs are: '
                f"{', '.join(names)} (--prefix chooses by the part before {command!r})"
            )
        raise ClusterError(
            f"no CronJob labelled {COMPONENT_LABEL}={command} or named {command} {where}: "
            f"{APPLY_HINT}"
        )
    if len(found) > 1:
        prefixes = ", ".join(repr(n[: -len(command)]) for n in names if n.endswith(command))
        raise AmbiguousCronJobError(
            f"{len(found)} CronJobs run {command} {where}: {', '.join(names)}; choose one "
            f"with --prefix (one of {prefixes or 'their name prefixes'})"
        )
    cronjob = found[0]
    if meta(cronjob).namespace is None and cronjob.metadata is not None:
        cronjob.metadata.namespace = namespace
    return cronjob


def _runs(cronjob: V1CronJob, command: str) -> bool:
    component = (meta(cronjob).labels or {}).get(COMPONENT_LABEL)
    return component == command if component else name_of(cronjob) == command


def active_runs(batch: BatchV1Api, namespace: str, cronjob: str) -> list[V1Job]:
    """The unfinished Jobs of the CronJob ``cronjob``, scheduled or manual (a copy under
    another ``namePrefix`` is another deployment: it does not count)."""
    with api_call(batch, "list", "jobs.batch", namespace=namespace):
        jobs = batch.list_namespaced_job(namespace).items or []
    return [j for j in jobs if cronjob_of(j) == cronjob and not job_state(j).finished]


def describe_active(jobs: Sequence[V1Job], now: dt.datetime | None = None) -> str:
    """``train-28979360 (scheduled, started 5m ago)``, for each active Job."""
    now = now or dt.datetime.now(dt.UTC)
    parts = []
    for job in jobs:
        start = started_at(job)
        age = f", started {int((now - start).total_seconds() // 60)}m ago" if start else ""
        parts.append(f"{name_of(job)} ({trigger_of(job)}{age})")
    return ", ".join(parts)


def launch(
    batch: BatchV1Api,
    namespace: str,
    command: str,
    *,
    settings: Mapping[str, str] | None = None,
    allow_overlap: bool = False,
    launched_by: str | None = None,
    name: str | None = None,
    args: Sequence[str] | None = None,
    ttl: int = DEFAULT_TTL,
    prefix: str | None = None,
    outage: Outage | None = None,
) -> V1Job:
    """Create a Job from the CronJob of ``command`` (:func:`find_cronjob`, ``prefix``
    choosing among copies), running ``args`` instead of the template's if given, removed
    ``ttl`` seconds after it finishes. While a Job of that CronJob is active, refuse a
    guarded command (``train``) unless ``allow_overlap``; otherwise log a warning naming
    the active Jobs. While the API server is unreachable, try again as long as ``outage``
    allows (never creating a second Job). Returns the created Job."""
    doing = f"starting {command}"
    cronjob = _patiently(outage, doing, lambda: find_cronjob(batch, namespace, command, prefix))
    source = name_of(cronjob)
    active = _patiently(outage, doing, lambda: active_runs(batch, namespace, source))
    if active and command in GUARDED and not allow_overlap:
        raise OverlapError(
            f"refusing to start {source}: {describe_active(active)} still active; "
            "wait for it to finish or pass --allow-overlap"
        )
    if active:
        logger.warning("starting %s while %s still active", source, describe_active(active))
    job = build_job(
        cronjob,
        name=name or job_name(source),  # fixed before the first POST: a retry re-sends it
        settings=settings,
        launched_by=launched_by,
        args=args,
        ttl=ttl,
    )
    created = _create_once(batch, namespace, job, outage)
    logger.info("created job.batch/%s in namespace %s", name_of(created), namespace)
    return created


def _create_once(batch: BatchV1Api, namespace: str, job: V1Job, outage: Outage | None) -> V1Job:
    """POST ``job``, again after a connection that broke or a 502-504 (while ``outage`` is
    patient): the server may have created it before the answer was lost. The name, unique
    to this launch (a timestamp and a random suffix), is the same in every attempt, so a
    409 AlreadyExists on a retry is our own first POST: read it back rather than create a
    second Job."""
    from kubernetes.client.exceptions import ApiException

    name = name_of(job)
    attempts = 0

    def create() -> V1Job:
        nonlocal attempts
        attempts += 1
        try:
            with api_call(batch, "create", "jobs.batch", name=name, namespace=namespace):
                return batch.create_namespaced_job(namespace, job)
        except ClusterError as exc:
            cause = exc.__cause__
            if attempts > 1 and isinstance(cause, ApiException) and cause.status == 409:
                logger.info("job.batch/%s was created by an earlier attempt", name)
                return _read_job(batch, namespace, name)
            raise

    return _patiently(outage, f"creating job {name}", create)


def _patiently(outage: Outage | None, doing: str, call: Callable[[], T]) -> T:
    """``call()``, again while the API server is unreachable and ``outage`` is patient
    (``None``: not at all)."""
    while True:
        try:
            result = call()
        except ClusterUnavailableError as exc:
            if outage is None:
                raise
            outage.failed(exc, doing)
            continue
        if outage is not None:
            outage.over()
        return result


@dataclass(frozen=True)
class Progress:
    """What a waiting user is shown."""

    job: str
    state: str
    """The Job's state (:class:`job.runs.JobState`)."""
    pod: str | None
    """The newest pod's phase, and why it waits (``Pending (ImagePullBackOff)``)."""
    elapsed_s: float

    def line(self) -> str:
        # The pod's part last: a scheduler's message can be long, and a terminal may clip it.
        pod = f", pod {self.pod}" if self.pod else ""
        return f"{self.job}: {self.state}, {int(self.elapsed_s)}s{pod}"


@dataclass(frozen=True)
class RunResult:
    """How a launched Job ended."""

    job: str
    state: str
    reason: str | None
    message: str | None
    elapsed_s: float
    summary: dict[str, Any] = field(default_factory=dict)
    """What the run wrote to its termination message."""

    def failure(self) -> str:
        """One line: why the Job failed, and what the run itself said."""
        text = f"job {self.job} failed"
        if self.reason:
            text += f": {self.reason}"
        if self.message:
            text += f": {self.message}"
        if "error" in self.summary:
            text += f"; the run said: {self.summary['error']}"
        return text


def pod_phase(pod: V1Pod) -> str:
    """``Running``; ``Pending (ImagePullBackOff)`` when a container waits for a reason;
    ``Pending: Unschedulable: 0/1 nodes are available: ...`` when the scheduler cannot place
    the pod (its ``PodScheduled`` condition is ``False``)."""
    status = pod.status
    phase = (status.phase if status is not None else None) or "Pending"
    if status is None:
        return str(phase)
    for condition in status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            why = [phase, condition.reason or "not scheduled"]
            if condition.message:
                why.append(" ".join(condition.message.split()))  # one line
            return ": ".join(why)
    for container in status.container_statuses or []:
        waiting = container.state.waiting if container.state is not None else None
        if waiting is not None and waiting.reason and waiting.reason != "ContainerCreating":
            return f"{phase} ({waiting.reason})"
    return str(phase)


#: How far a run has come. While waiting, the state shown never goes back down this order.
_PROGRESS = {"pending": 0, "suspended": 0, "running": 1, "succeeded": 2, "failed": 2}


def progress_state(state: str, pods: Sequence[V1Pod], shown: str | None = None) -> str:
    """The state to show a waiting user: the Job's ``state``, but never behind its pods (a
    pod that runs or has ended means at least ``running``: the Job controller counts an
    ended pod a moment after the pod says so) nor behind the state ``shown`` before. A
    suspended Job says so: someone suspended it."""
    if state == "suspended":
        return state
    if _PROGRESS[state] < _PROGRESS["running"] and any(_started(p) for p in pods):
        state = "running"
    if shown is not None and _PROGRESS[shown] > _PROGRESS[state]:
        return shown
    return state


def _started(pod: V1Pod) -> bool:
    """Whether a container has started, so its log can be read."""
    return pod.status is not None and pod.status.phase in ("Running", "Succeeded", "Failed")


def list_job_pods(core: CoreV1Api, namespace: str, name: str) -> list[V1Pod]:
    with api_call(core, "list", "pods", namespace=namespace):
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
    return sorted((p for p in pods or [] if is_job_pod(p, name)), key=created_at)


def follow_log(
    core: CoreV1Api,
    namespace: str,
    pod: str,
    on_line: Callable[[str], None],
    container: str | None = None,
    *,
    timestamps: bool = False,
    since_seconds: int | None = None,
) -> None:
    """Stream the container's log to ``on_line`` until the container ends (each line
    prefixed with the kubelet's RFC 3339 time if ``timestamps``; only the last
    ``since_seconds`` if given)."""
    extra: dict[str, Any] = {"timestamps": True} if timestamps else {}
    if since_seconds is not None:
        extra["since_seconds"] = since_seconds
    with api_call(core, "get", "pods/log", name=pod, namespace=namespace):
        # Not preloaded, the client returns the HTTP response (its annotation says str).
        resp = cast(
            "urllib3.BaseHTTPResponse",
            core.read_namespaced_pod_log(
                pod, namespace, container=container, follow=True, _preload_content=False, **extra
            ),
        )
    try:
        buffer = b""
        for chunk in resp.stream(4096, decode_content=True):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                on_line(line.decode("utf-8", errors="replace"))
        if buffer:
            on_line(buffer.decode("utf-8", errors="replace"))
    finally:
        resp.release_conn()


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$")
#: Seconds of log asked for again when a stream is resumed, beyond the time since its last
#: line (the kubelet counts ``sinceSeconds`` on its own clock): the overlap is dropped by
#: the lines' times.
_LOG_OVERLAP_S = 10


def _stamped(line: str) -> tuple[tuple[str, str] | None, str]:
    """A ``timestamps`` log line as (its time, comparable; the line without it). A line
    without a time (a server that ignored the option) is (``None``, the line)."""
    stamp, _, rest = line.partition(" ")
    match = _STAMP.match(stamp)
    if match is None:
        return None, line
    return (match.group(1), (match.group(2) or "").ljust(9, "0")), rest


class _LogFollowers:
    """One thread a pod, started once its container runs, so logs flow while we watch. A
    stream that breaks (the API server away) is resumed where it stopped: the lines carry
    the kubelet's times, the resumed stream starts a little before the last line seen, and
    the lines up to that one are dropped, so that each line is shown once."""

    def __init__(
        self,
        core: CoreV1Api,
        namespace: str,
        on_line: Callable[[str], None],
        pause: float = 1.0,
    ):
        self.core, self.namespace, self.on_line = core, namespace, on_line
        self.pause = pause
        self.threads: dict[str, threading.Thread] = {}
        self.lock = threading.Lock()  # one pod's lines at a time
        self.stopped = threading.Event()

    def update(self, pods: Iterable[V1Pod]) -> None:
        for pod in pods:
            name = name_of(pod)
            if name not in self.threads and _started(pod):
                container = pick_container(pod.spec.containers if pod.spec else [])
                thread = threading.Thread(
                    target=self._follow,
                    args=(name, container.name if container else None),
                    name=f"logs-{name}",
                    daemon=True,
                )
                self.threads[name] = thread
                thread.start()

    def _follow(self, pod: str, container: str | None) -> None:
        import urllib3

        last: tuple[str, str] | None = None  # the time of the newest line shown
        last_at = 0.0  # when it came (monotonic)
        resuming = False

        def shown(line: str) -> None:
            nonlocal last, last_at
            stamp, text = _stamped(line)
            if resuming and stamp is not None and last is not None and stamp <= last:
                return  # shown before the stream broke
            if stamp is not None:
                last, last_at = stamp, time.monotonic()
            with self.lock:
                self.on_line(text)

        while True:
            since = None
            if resuming and last is not None:
                since = math.ceil(time.monotonic() - last_at) + _LOG_OVERLAP_S
            try:
                follow_log(
                    self.core,
                    self.namespace,
                    pod,
                    shown,
                    container,
                    timestamps=True,
                    since_seconds=since,
                )
                return  # the stream ended: so did the container
            except (ClusterUnavailableError, urllib3.exceptions.HTTPError) as exc:
                # Unreachable, or the stream broke: the wait reports the outage; the log
                # resumes when the API server is back, until the wait ends.
                logger.debug("the log of pod %s broke off (%s); resuming", pod, exc)
            except TaxiJobError as exc:  # logs are a courtesy: the Job's result still counts
                logger.warning("cannot follow the log of pod %s: %s", pod, exc)
                return
            except Exception as exc:  # noqa: BLE001 - a broken stream must not end the wait
                logger.warning("the log of pod %s broke off: %r", pod, exc)
                return
            resuming = True
            if self.stopped.wait(self.pause):
                return

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """No more resuming: the wait is over."""
        self.stopped.set()


def wait(
    batch: BatchV1Api,
    core: CoreV1Api,
    namespace: str,
    name: str,
    *,
    timeout: float | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_log: Callable[[str], None] | None = None,
    tick: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    outage: Outage | None = None,
) -> RunResult:
    """Watch the Job ``name`` until it succeeds or fails (or ``timeout`` seconds pass);
    report progress at each change and every ``tick`` seconds, follow its pods' logs with
    ``on_log``. A watch that expires (410 Gone) is resumed from a fresh read.

    While the API server is unreachable, try again (``outage``; by default until the
    ``timeout``, else :data:`job.kube.DEFAULT_PATIENCE_S` into an outage): the watch
    resumes from the last version seen, the logs from their last line.

    Raises :class:`RunFailedError` if the Job fails or is deleted,
    :class:`WaitTimeoutError` on timeout, and :class:`job.kube.ClusterUnavailableError`
    if the API server stayed away past the deadline; returns the result when it
    succeeds."""
    started = clock()
    if outage is None:
        deadline = None if timeout is None else started + timeout
        outage = Outage(server_of(batch), deadline=deadline, clock=clock)
    doing = f"waiting for job {name}"
    then = f"the Job keeps running (taxi-job runs -n {namespace}, or kubectl get job {name})"
    followers = _LogFollowers(core, namespace, on_log) if on_log is not None else None
    job: V1Job | None = None
    shown: str | None = None
    try:
        while True:
            try:
                if job is None:
                    job = _read_job(batch, namespace, name)
                pods = list_job_pods(core, namespace, name)
            except ClusterUnavailableError as exc:
                outage.failed(exc, doing, then)
                continue
            outage.over()
            state = job_state(job)
            if followers is not None:
                followers.update(pods)
            shown = progress_state(state.state, pods, shown)
            if on_progress is not None:
                pod = pod_phase(pods[-1]) if pods else None
                on_progress(Progress(name, shown, pod, clock() - started))
            if state.finished:
                break
            remaining = None if timeout is None else timeout - (clock() - started)
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError(
                    f"job {name} is still {shown} after {timeout:g}s; it keeps running "
                    f"(taxi-job runs, or kubectl -n {namespace} get job {name})"
                )
            window = tick if remaining is None else min(tick, remaining)
            try:
                # From the last version seen, also after an outage (410: a fresh read).
                job = _next_change(batch, namespace, name, job, window)
            except ClusterUnavailableError as exc:
                outage.failed(exc, doing, then)
        if followers is not None:
            followers.join(timeout=10.0)
    finally:
        if followers is not None:
            followers.stop()
    return _result(job, state, pods, clock() - started)


def _read_job(batch: BatchV1Api, namespace: str, name: str) -> V1Job:
    with api_call(batch, "get", "jobs.batch", name=name, namespace=namespace):
        return batch.read_namespaced_job(name, namespace)


def _next_change(batch: BatchV1Api, namespace: str, name: str, job: V1Job, window: float) -> V1Job:
    """The Job once its status changes, or as it is after ``window`` seconds."""
    import kubernetes.watch
    import urllib3
    from kubernetes.client.exceptions import ApiException

    watch: Any = kubernetes.watch  # its Watch carries no annotations

    kwargs: dict[str, Any] = {
        "field_selector": f"metadata.name={name}",
        # The server ends the watch after this; the client gives up a little later, in case
        # a proxy (or a test server) ignores it.
        "timeout_seconds": max(1, math.ceil(window)),
        "_request_timeout": (10, window * 2 + 1),
    }
    if meta(job).resource_version:
        kwargs["resource_version"] = meta(job).resource_version
    watcher = watch.Watch()
    stream = watcher.stream(batch.list_namespaced_job, namespace, **kwargs)
    try:
        for event in stream:
            obj: V1Job = event["object"]
            if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                continue
            if obj.metadata is None or obj.metadata.name != name:
                continue  # a server that ignores the field selector
            if event["type"] == "DELETED":
                raise RunFailedError(f"job {name} was deleted before it finished")
            if obj.status != job.status:
                return obj
            job = obj  # same status, newer resourceVersion
    except ApiException as exc:
        if exc.status != 410:
            raise explain(exc, batch, "watch", "jobs.batch", namespace=namespace) from exc
        logger.debug("the watch of job %s expired (410 Gone); resuming from a fresh read", name)
        return _read_job(batch, namespace, name)
    except (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ProtocolError):
        pass  # quiet for a while, or the connection broke: look again
    except urllib3.exceptions.HTTPError as exc:
        raise explain(exc, batch, "watch", "jobs.batch", namespace=namespace) from exc
    finally:
        watcher.stop()
        stream.close()
    return job


def _result(job: V1Job, state: JobState, pods: Sequence[V1Pod], elapsed: float) -> RunResult:
    result = RunResult(
        job=name_of(job),
        state=state.state,
        reason=state.reason,
        message=state.message,
        elapsed_s=elapsed,
        summary=run_summary(pods, state.state),
    )
    if result.summary.get("no_reducer"):
        logger.warning(
            "job %s succeeded but no shard reduced: no model was published (%s)",
            result.job,
            describe_summary("train", result.summary),
        )
    if state.state == "failed":
        raise RunFailedError(result.failure())
    return result
