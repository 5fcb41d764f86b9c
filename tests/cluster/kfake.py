"""A Kubernetes API stand-in on loopback for the launcher's tests, makers of the objects it
serves, and a fake Job controller.

The stand-in is kmock's ``KubernetesEmulator`` (an in-memory API server over real HTTP), run
in its own thread and event loop, because the kubernetes client is synchronous: the real
client, its serialization, watches and log streams are exercised. kmock's own async fixture
cannot serve a blocking client from the test's thread, hence this one.
"""

from __future__ import annotations

import asyncio
import copy
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kmock
from kubernetes import client

NS = "taxi-job"
JOBS = kmock.resource("batch", "v1", "jobs")
CRONJOBS = kmock.resource("batch", "v1", "cronjobs")
PODS = kmock.resource("", "v1", "pods")
CONTROLLER_AGENT = "fake-controller"


class FakeCluster:
    """kmock serving on 127.0.0.1 from a background thread, with clients pointing at it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self.handler: Any = None
        self.url = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as handler, kmock.Server(handler) as server:
            self.handler = handler
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> FakeCluster:
        self._thread.start()
        assert self._ready.wait(10), "kmock did not start"
        for resource in ("batch/v1/jobs", "batch/v1/cronjobs", "v1/pods"):  # list even if empty
            self.on_loop(lambda r=resource: self.handler.resources.__setitem__(r, {}))
        configuration = client.Configuration(host=self.url)
        api_client = client.ApiClient(configuration)
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        # The fake Job controller's calls carry their own User-Agent, to tell them apart.
        controller_client = client.ApiClient(configuration)
        controller_client.user_agent = CONTROLLER_AGENT
        self.controller_batch = client.BatchV1Api(controller_client)
        self.controller_core = client.CoreV1Api(controller_client)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the server's thread (kmock's DSL is not thread-safe)."""

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def react(self, criteria: tuple[Any, ...], payload: Any) -> None:
        """``kmock[criteria] << payload``, e.g. an error for one verb and resource."""
        self.on_loop(lambda: self.handler[criteria] << payload)

    def react_first(self, criteria: tuple[Any, ...], payload: Any) -> None:
        """``payload`` for the first request matching ``criteria`` only."""
        self.on_loop(lambda: self.handler[criteria][:1] << payload)

    def put(self, resource: Any, obj: dict[str, Any]) -> None:
        """Store ``obj`` as if applied (no events: do it before the code under test runs)."""
        meta = obj["metadata"]
        key = (resource, meta.get("namespace", NS), meta["name"])
        self.on_loop(lambda: self.handler.objects.__setitem__(key, copy.deepcopy(obj)))

    def requests(self, method: str | None = None, resource: Any = None) -> list[Any]:
        """The requests the code under test sent (not the fake controller's)."""

        def pick() -> list[Any]:
            return [
                r
                for r in self.handler
                if r.headers.get("User-Agent") != CONTROLLER_AGENT
                and (method is None or r.method == method.upper())
                and (resource is None or r.resource == resource)
            ]

        return list(self.on_loop(pick))

    def created_jobs(self) -> list[dict[str, Any]]:
        """The bodies of the Job creations, as the server received them."""
        return [r.data for r in self.requests("post", JOBS)]

    def kubeconfig(self, path: Path, *, user: str = "tester", context: str = "fake") -> Path:
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: fake\n  cluster:\n    server: {self.url}\n"
            f"users:\n- name: {user}\n  user:\n    token: not-a-secret\n"
            f"contexts:\n- name: {context}\n  context:\n    cluster: fake\n    user: {user}\n"
            f"current-context: {context}\n",
            encoding="utf-8",
        )
        return path


def make_cronjob(
    command: str = "train", *, uid: str = "uid-of-cronjob", prefix: str = ""
) -> dict[str, Any]:
    """A CronJob as the manifests define it (renamed ``PREFIX`` + command by a kustomize
    ``namePrefix``, its labels kept)."""
    schedule = "0 0 * * 0" if command == "train" else "* * * * *"
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": prefix + command,
            "namespace": NS,
            "uid": uid,
            "labels": {
                "app.kubernetes.io/name": "taxi-job",
                "app.kubernetes.io/component": command,
            },
        },
        "spec": {
            "schedule": schedule,
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {
                "metadata": {
                    "labels": {
                        "app.kubernetes.io/name": "taxi-job",
                        "app.kubernetes.io/component": command,
                    },
                    "annotations": {"taxi-job/docs": "docs/launcher.md"},
                },
                "spec": {
                    "backoffLimit": 2,
                    "activeDeadlineSeconds": 3600,
                    "podFailurePolicy": {
                        "rules": [
                            {
                                "action": "FailJob",
                                "onExitCodes": {
                                    "containerName": command,
                                    "operator": "In",
                                    "values": [2, 3],
                                },
                            }
                        ]
                    },
                    "template": {
                        "metadata": {
                            "labels": {
                                "app.kubernetes.io/name": "taxi-job",
                                "app.kubernetes.io/component": command,
                            }
                        },
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": command,
                                    "image": "taxi-job:test",
                                    "args": [command],
                                    "envFrom": [{"configMapRef": {"name": "taxi-job-settings"}}],
                                    "env": [
                                        {
                                            "name": "TAXI_JOB_TERMINATION_LOG",
                                            "value": "/dev/termination-log",
                                        }
                                    ],
                                    "terminationMessagePolicy": "FallbackToLogsOnError",
                                }
                            ],
                        },
                    },
                },
            },
        },
    }


def make_job(
    name: str,
    command: str = "train",
    *,
    trigger: str = "scheduled",
    state: str = "running",
    start: str = "2025-01-05T00:00:00Z",
    end: str = "2025-01-05T00:02:05Z",
    reason: str | None = None,
    message: str | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """A Job of the ``command`` CronJob (named ``PREFIX`` + command), in the given state."""
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "creationTimestamp": start,
        "resourceVersion": "1",
        "labels": {"app.kubernetes.io/component": command},
        "ownerReferences": [
            {
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "name": prefix + command,
                "uid": "uid-of-cronjob",
                "controller": True,
            }
        ],
    }
    if trigger == "manual":
        metadata["annotations"] = {"cronjob.kubernetes.io/instantiate": "manual"}
    status: dict[str, Any] = {"startTime": start}
    if state == "running":
        status["active"] = 1
    elif state == "succeeded":
        status.update(
            succeeded=1,
            completionTime=end,
            conditions=[{"type": "Complete", "status": "True", "lastTransitionTime": end}],
        )
    elif state == "failed":
        status.update(
            failed=1,
            conditions=[
                {
                    "type": "Failed",
                    "status": "True",
                    "lastTransitionTime": end,
                    "reason": reason or "BackoffLimitExceeded",
                    "message": message or "Job has reached the specified backoff limit",
                }
            ],
        )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {"template": {"spec": {"containers": []}}},
        "status": status,
    }


def make_pod(
    job: str,
    *,
    phase: str = "Succeeded",
    message: str | None = None,
    exit_code: int = 0,
    name: str | None = None,
    created: str = "2025-01-05T00:00:01Z",
    container: str = "",
    unschedulable: str | None = None,
) -> dict[str, Any]:
    """A pod of ``job`` whose container (named after the command, as in the manifests)
    ended with ``message``; or, ``Pending``, one the scheduler cannot place, for the reason
    ``unschedulable``."""
    container = container or job.split("-")[0]
    status: dict[str, Any] = {"phase": phase}
    if unschedulable is not None:
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
                "lastTransitionTime": created,
            }
        ]
    if phase in ("Succeeded", "Failed"):
        terminated: dict[str, Any] = {"exitCode": exit_code}
        if message is not None:
            terminated["message"] = message
        status["containerStatuses"] = [
            {
                "name": container,
                "image": "taxi-job:test",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }
        ]
    elif phase == "Running":
        status["containerStatuses"] = [
            {
                "name": container,
                "image": "taxi-job:test",
                "imageID": "",
                "ready": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": created}},
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name or f"{job}-abcde",
            "namespace": NS,
            "creationTimestamp": created,
            "labels": {"job-name": job, "batch.kubernetes.io/job-name": job},
        },
        # A sidecar first: the summary and the log are the command's container's.
        "spec": {
            "containers": [
                {"name": "istio-proxy", "image": "proxy"},
                {"name": container, "image": "taxi-job:test"},
            ]
        },
        "status": status,
    }


class FakeController:
    """Plays the Job controller and kubelet for a launched Job, through the API (so watches
    see the changes): a pod starts, runs, and ends as told.

    It takes one step at a time, and the next only once the waiter has seen the last: each
    step gives the Job a new ``resourceVersion``, and the waiter's next watch starts from
    the version it last read, after it listed the pods and reported. So the waiter sees
    every state however slow the machine is: no sleeps, no timing."""

    def __init__(
        self,
        fake: FakeCluster,
        *,
        outcome: str = "succeeded",
        message: str | None = None,
        exit_code: int = 0,
        reason: str | None = None,
        failure: str | None = None,
        uncounted: bool = False,
    ) -> None:
        """``outcome``: ``succeeded``, ``failed``, ``hang`` (the pod runs on), or
        ``unschedulable`` (the pod stays ``Pending``, the scheduler saying ``message``).
        ``uncounted``: the pod ends a step before the Job counts it (the Job then has no
        active pod and no condition yet), as the real Job controller may show it."""
        self.fake, self.outcome, self.message = fake, outcome, message
        self.exit_code, self.reason, self.failure = exit_code, reason, failure
        self.uncounted = uncounted
        self.error: BaseException | None = None
        self.watches: queue.Queue[Any] = queue.Queue()
        self.version = 100
        self.thread = threading.Thread(target=self._run, name="fake-controller", daemon=True)

    def __enter__(self) -> FakeController:
        def note(request: Any) -> None:
            self.watches.put(request)
            raise NotImplementedError  # kmock: "matched, nothing to answer": serve it as usual

        # Every watch of a Job the code under test opens also lands in self.watches.
        self.fake.on_loop(lambda: self.fake.handler[("get", JOBS, {"watch": "true"})] << note)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(30)
        if self.error is not None:
            raise self.error

    def _seen(self, version: str | None = None) -> str:
        """Block until the waiter watches from ``version`` of the Job (from any, if None):
        then it has read that version. Returns the Job's name."""
        while True:
            request = self.watches.get(timeout=30)
            if version is None or request.params.get("resourceVersion") == version:
                return str(request.params["fieldSelector"]).removeprefix("metadata.name=")

    def _step(self, name: str, status: dict[str, Any]) -> str:
        """A new status of the Job, under a new resourceVersion (which it returns)."""
        self.version += 1
        body = {"metadata": {"resourceVersion": str(self.version)}, "status": status}
        self.fake.controller_batch.patch_namespaced_job_status(name, NS, body)
        return str(self.version)

    def _run(self) -> None:
        try:
            name = self._seen()  # the waiter has seen the new Job, pending
            core = self.fake.controller_core
            if self.outcome == "unschedulable":
                core.create_namespaced_pod(
                    NS, make_pod(name, phase="Pending", unschedulable=self.message)
                )
                self._step(name, {"active": 1, "ready": 0})
                return
            pod = make_pod(name, phase="Running")
            core.create_namespaced_pod(NS, pod)
            started = {"active": 1, "ready": 1, "startTime": "2025-01-05T00:00:00Z"}
            version = self._step(name, started)
            if self.outcome == "hang":
                return
            self._seen(version)  # ... running
            phase = "Succeeded" if self.outcome == "succeeded" else "Failed"
            ended = make_pod(name, phase=phase, message=self.message, exit_code=self.exit_code)
            core.patch_namespaced_pod_status(
                pod["metadata"]["name"], NS, {"status": ended["status"]}
            )
            if self.uncounted:
                self._seen(self._step(name, {"active": 0, "ready": 0}))  # ... not counted yet
            final = make_job(name, state=self.outcome, reason=self.reason, message=self.failure)
            final["status"].update(active=0, ready=0)
            self._step(name, final["status"])
        except BaseException as exc:  # reported in __exit__
            self.error = exc
