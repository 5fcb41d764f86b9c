"""Connecting to the Kubernetes API, and turning its failures into one line a user can act on.

The ``kubernetes`` client is imported inside the functions that need it, so that the
commands that never talk to a cluster (``train``, ``infer``) do not pay for its import.

Exit codes of the cluster errors (all subclass :class:`job.errors.TaxiJobError`):

==== ===================================================================================
code meaning
==== ===================================================================================
2    :class:`ClusterConfigError`: no usable kubeconfig or context (a bad option or file).
69   :class:`ClusterError`: the API refused the request: an object is missing (404), already
     exists (409), or is invalid (422). Retrying the same command will not help.
75   :class:`ClusterUnavailableError`: the API server cannot be reached, times out or
     answers 429/5xx. Worth retrying later.
77   :class:`ClusterForbiddenError`: the credentials are rejected (401) or RBAC denies the
     request (403).
==== ===================================================================================
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from job.errors import EXIT_BAD_INPUT, EXIT_TRANSIENT, TaxiJobError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    # The client's API objects and models, for annotations only (the client ships its types);
    # re-exported for job.launcher and job.runs.
    from kubernetes.client import BatchV1Api as BatchV1Api
    from kubernetes.client import CoreV1Api as CoreV1Api
    from kubernetes.client import V1CronJob as V1CronJob
    from kubernetes.client import V1Job as V1Job
    from kubernetes.client import V1Pod as V1Pod

#: sysexits' EX_UNAVAILABLE: the API refused what we asked for.
EXIT_CLUSTER = 69
#: sysexits' EX_NOPERM: authentication or authorization failed.
EXIT_FORBIDDEN = 77

#: Where the manifests come from, for messages that tell the user to apply them.
APPLY_HINT = "apply the manifests first (kubectl apply -k .)"

# The attribute of a client Configuration under which connect() remembers who we are.
_IDENTITY_ATTR = "taxi_job_identity"
_SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class ClusterError(TaxiJobError):
    """The Kubernetes API refused a request; the message says what to change."""

    exit_code = EXIT_CLUSTER


class ClusterConfigError(ClusterError):
    """No kubeconfig, an unreadable one, or an unknown context."""

    exit_code = EXIT_BAD_INPUT


class ClusterForbiddenError(ClusterError):
    """The API server rejected our credentials (401) or RBAC denied the request (403)."""

    exit_code = EXIT_FORBIDDEN


class ClusterUnavailableError(ClusterError):
    """The API server is unreachable, overloaded or failing: worth retrying later."""

    exit_code = EXIT_TRANSIENT

    def __init__(self, message: str, *, away: bool = False):
        super().__init__(message)
        self.away = away
        """No answer, or one saying the server is away for now (429, 502-504): a command
        that waits tries again (:class:`Outage`). A 500 is a failure, reported at once."""


@dataclass(frozen=True)
class Cluster:
    """The API objects of one connection, and what error messages say about it."""

    batch: BatchV1Api
    core: CoreV1Api
    server: str
    """The API server's URL."""
    identity: str
    """Who we are to the server: a kubeconfig user and context, or a service account."""


def connect(kubeconfig: str | None = None, context: str | None = None) -> Cluster:
    """Load the kubeconfig (its current context, or ``context``), else the in-cluster
    service account, the way kubectl chooses; nothing is contacted yet."""
    import kubernetes.config
    from kubernetes import client

    config: Any = kubernetes.config  # its loaders carry no annotations
    configuration = client.Configuration()
    paths = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    has_kubeconfig = any(os.path.exists(p) for p in paths.split(os.pathsep) if p)
    if kubeconfig or context or has_kubeconfig:
        where = kubeconfig or paths
        try:
            config.load_kube_config(
                config_file=kubeconfig,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
            contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
            if context is None:
                context = active["name"]
            user = next((c["context"].get("user") for c in contexts if c["name"] == context), None)
        except (config.ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
            raise ClusterConfigError(f"cannot use the kubeconfig {where}: {exc}") from exc
        identity = f'user "{user}" (context "{context}")'
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as exc:
            raise ClusterConfigError(f"cannot use the in-cluster service account: {exc}") from exc
        identity = _service_account() or "the pod's service account"
    else:
        raise ClusterConfigError(
            f"no kubeconfig at {paths} and not running in a cluster: "
            "pass --kubeconfig, set KUBECONFIG, or run inside a pod"
        )
    setattr(configuration, _IDENTITY_ATTR, identity)
    # urllib3 warns at each retry of a refused connection; the failure is reported once, as
    # one line (with -vv the warnings show again).
    pool_logger = logging.getLogger("urllib3.connectionpool")
    if pool_logger.getEffectiveLevel() >= logging.WARNING:
        pool_logger.setLevel(logging.ERROR)
    api_client = client.ApiClient(configuration)
    logger.debug("using the API server %s as %s", configuration.host, identity)
    return Cluster(
        batch=client.BatchV1Api(api_client),
        core=client.CoreV1Api(api_client),
        server=configuration.host,
        identity=identity,
    )


def _service_account() -> str | None:
    """``system:serviceaccount:NS:NAME`` from the mounted token (a JWT), if readable."""
    try:
        with open(_SA_TOKEN, encoding="ascii") as f:
            payload = f.read().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        sub = claims.get("sub")
        return str(sub) if sub else None
    except (OSError, IndexError, ValueError):
        return None


def identity_of(api: Any) -> str:
    """Who ``api`` talks as, as remembered by :func:`connect` (tests may not say)."""
    configuration = getattr(getattr(api, "api_client", None), "configuration", None)
    return str(getattr(configuration, _IDENTITY_ATTR, "the current credentials"))


def server_of(api: Any) -> str:
    """The URL of the API server behind ``api``."""
    configuration = getattr(getattr(api, "api_client", None), "configuration", None)
    return str(getattr(configuration, "host", "the API server"))


def _what(resource: str, name: str | None, namespace: str | None) -> str:
    """``cronjob.batch "train" in namespace "taxi-job"``, the way kubectl names objects."""
    text = f'{resource} "{name}"' if name else resource
    return f'{text} in namespace "{namespace}"' if namespace else text


def _server_message(exc: Any) -> str:
    """The ``message`` of the Status object the server sent, else the HTTP reason."""
    body = getattr(exc, "body", None)
    if body:
        try:
            status = json.loads(body)
            if isinstance(status, dict) and status.get("message"):
                return str(status["message"])
        except (TypeError, ValueError):
            pass
    return str(getattr(exc, "reason", "") or exc)


def network_reason(exc: BaseException) -> str:
    """Why no HTTP answer came, in a few words (``connection refused``), rather than
    urllib3's nested repr of its connection pool."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain of causes is short; never loop on a cycle
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno is not None and seen.strerror:
            return seen.strerror.lower()
        match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(seen))
        if match:
            return match.group(1).strip().lower()
        name = type(seen).__name__
        if "Timeout" in name:
            return "no answer in time"
        if name in ("ProtocolError", "RemoteDisconnected", "IncompleteRead"):
            return "the connection broke off"
        if name == "SSLError":
            return f"TLS failed: {seen}"
        reason = getattr(seen, "reason", None)
        seen = reason if isinstance(reason, BaseException) else seen.__cause__ or seen.__context__
    return " ".join(str(exc).split())


def explain(
    exc: Exception,
    api: Any,
    verb: str,
    resource: str,
    *,
    name: str | None = None,
    namespace: str | None = None,
) -> ClusterError:
    """The project error for an API failure of ``verb`` on ``resource`` (``jobs.batch``)."""
    server = server_of(api)
    status = getattr(exc, "status", None)
    what = _what(resource, name, namespace)
    if not isinstance(status, int) or status == 0:  # urllib3: no HTTP answer at all
        return ClusterUnavailableError(
            f"cannot reach the Kubernetes API server at {server} to {verb} {what}: "
            f"{network_reason(exc)}",
            away=True,
        )
    message = _server_message(exc)
    if status == 401:
        return ClusterForbiddenError(
            f"the API server at {server} rejected the credentials of {identity_of(api)} "
            f"(401 Unauthorized): log in again or refresh the kubeconfig"
        )
    if status == 403:
        match = re.search(r'User "([^"]+)"', message)
        who = f'"{match.group(1)}"' if match else identity_of(api)
        scope = f' in namespace "{namespace}"' if namespace else ""
        return ClusterForbiddenError(
            f"RBAC denies {who} to {verb} {resource}{scope}: grant it in a Role "
            "(see manifests/launcher-rbac.yaml)"
        )
    if status == 404:
        if resource.startswith("cronjobs"):
            return ClusterError(f"{what} not found: {APPLY_HINT}")
        return ClusterError(f"{what} not found: {message}")
    if status == 409:
        return ClusterError(f"{what} already exists: {message}")
    if status == 422:
        return ClusterError(f"the API server rejected {what} as invalid: {message}")
    if status == 429 or status >= 500:
        return ClusterUnavailableError(
            f"the API server at {server} failed to {verb} {what} ({status}): {message}",
            away=status in (429, 502, 503, 504),
        )
    return ClusterError(f"cannot {verb} {what} ({status}): {message}")


@contextlib.contextmanager
def api_call(
    api: Any,
    verb: str,
    resource: str,
    *,
    name: str | None = None,
    namespace: str | None = None,
) -> Iterator[None]:
    """Turn an ``ApiException`` or a connection failure inside into a :class:`ClusterError`."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except (ApiException, urllib3.exceptions.HTTPError) as exc:
        raise explain(exc, api, verb, resource, name=name, namespace=namespace) from exc


#: How long a waiting command keeps trying while the API server is unreachable, when no
#: ``--timeout`` bounds it: a restart of a control plane takes a minute or two.
DEFAULT_PATIENCE_S = 300.0
#: The longest pause between two attempts.
_MAX_PAUSE_S = 5.0


class Outage:
    """Patience with an API server that cannot be reached (or answers 429, 502-504): each
    failed attempt pauses (0.5 s, doubling to 5 s) before the caller tries again, until the
    deadline, then raises one error saying what we were doing and for how long.

    The deadline is ``deadline`` (a ``clock`` time: the end of ``--timeout``) if given,
    else ``patience_s`` after the first failure of this outage. A success ends the outage
    (:meth:`over`); the next failure starts a new one."""

    def __init__(
        self,
        server: str,
        *,
        deadline: float | None = None,
        patience_s: float = DEFAULT_PATIENCE_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.server, self.deadline, self.patience_s = server, deadline, patience_s
        self.clock, self.sleep = clock, sleep
        self.since: float | None = None
        self.pause = 0.5

    def failed(self, exc: ClusterUnavailableError, doing: str, then: str = "") -> None:
        """Pause before the next attempt; or, past the deadline (or for a failure that is
        not the server being away), raise ``exc`` saying that the API server stayed away
        while ``doing`` (and ``then``, what the user can do)."""
        if not exc.away:
            raise exc
        now = self.clock()
        if self.since is None:
            self.since = now
            self.pause = 0.5
            logger.warning("%s; trying again while %s", exc, doing)
        end = self.since + self.patience_s if self.deadline is None else self.deadline
        if now >= end:
            away = f"unreachable for {now - self.since:.0f}s while {doing}"
            raise ClusterUnavailableError(f"{exc} ({away}){'; ' + then if then else ''}") from exc
        self.sleep(min(self.pause, end - now))
        self.pause = min(self.pause * 2, _MAX_PAUSE_S)

    def over(self) -> None:
        """The API server answered: the outage, if there was one, is over."""
        if self.since is not None:
            logger.warning(
                "the API server at %s answers again after %.0fs",
                self.server,
                self.clock() - self.since,
            )
            self.since = None
