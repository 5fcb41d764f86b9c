"""The API server away while `taxi-job launch train --wait --logs` follows a real Job, and
while `taxi-job runs` is called, on the real cluster.

Two kinds of outage. The fault test (marker ``faults``, in CI's phase of its own) stops
k8s-local's real kube-apiserver process and starts it again. The others run beside the
whole cluster suite, where stopping the API server would fail everyone else's tests: a
proxy stands for it there.

What the launcher sees of a stopped API server is what this proxy does when stopped: its
live connections (the Job watch, the pods' log streams) are cut and new ones are refused
(connection refused), until it starts again on the same address. Between, the Job runs on:
the cluster's controllers and kubelet never noticed, as they would not if only the
launcher's network path were broken. The kubeconfig the launcher gets names the proxy;
TLS passes through it untouched (the API server's certificate covers 127.0.0.1).

The cluster tests run only when TAXI_JOB_TEST_KUBECONFIG names a kubeconfig and
TAXI_JOB_TEST_IMAGE an image the cluster's node has. Everything happens in a namespace of
its own, deleted at the end. The outages are ~30 s (the suite's time).

The tests without the cluster marker run on the kmock stand-in (kfake.py) and check what
a real outage cannot show on demand: a watch expired twice (410 Gone) resumed from a fresh
read, a POST whose answer was lost, a log stream cut between two lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import urllib3
import yaml
from e2e import (
    IMAGE,
    KUBECONFIG,
    OWN_NAMESPACE_MARKS,
    SUSPEND_INFER,
    kubectl,
    own_namespace,
    run_job,
    small_requests,
    write_overlay,
)
from faults import api_server_stopped
from kfake import CRONJOBS, JOBS, NS, FakeCluster, FakeController, make_cronjob

from job import launcher
from job.kube import ClusterUnavailableError, Outage

TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))
#: How long the API server stays away: within the 30-60 s a restart takes, kept short.
OUTAGE_S = 30


def on_the_cluster(test: Callable[..., None]) -> Callable[..., None]:
    """The marks of the cluster suite's tests in a namespace of their own."""
    for mark in reversed(OWN_NAMESPACE_MARKS):
        test = mark(test)
    return test


class Proxy:
    """A TCP forwarder on 127.0.0.1 (a free port) to ``target``, that can be stopped (its
    connections cut, new ones refused) and started again on the same port."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = 0
        self.listener: socket.socket | None = None
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.accepted = 0

    def start(self) -> Proxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Refuse new connections and cut the live ones, as a stopped API server does."""
        with self.lock:
            listener, self.listener = self.listener, None
            conns, self.conns = self.conns, set()
        if listener is not None:
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                if self.listener is not listener:  # stopped meanwhile
                    client.close()
                    upstream.close()
                    return
                self.conns |= {client, upstream}
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def proxied_kubeconfig(path: Path, port: int) -> Path:
    """The test cluster's kubeconfig, its server the proxy on ``port``."""
    config = yaml.safe_load(Path(KUBECONFIG).read_text(encoding="utf-8"))
    for entry in config["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def api_server() -> tuple[str, int]:
    config = yaml.safe_load(Path(KUBECONFIG).read_text(encoding="utf-8"))
    url = urlsplit(config["clusters"][0]["cluster"]["server"])
    assert url.hostname is not None
    return url.hostname, url.port or 443


def overlay(directory: Path, namespace: str) -> Path:
    """The repository in ``namespace``, on the test image; infer suspended (this is about a
    training followed from the laptop)."""
    return write_overlay(
        directory, namespace, IMAGE, patches=[SUSPEND_INFER, small_requests("train")]
    )


@pytest.fixture(scope="module")
def namespace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with own_namespace(overlay, tmp_path_factory.mktemp("away")) as name:
        run_job(name, from_cronjob="seed-sample-data", name="seed")
        yield name


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    running = Proxy(api_server()).start()
    try:
        yield running
    finally:
        running.stop()


class Launcher:
    """`taxi-job ARGS` as a real process against the proxy; its stderr read as it comes."""

    def __init__(self, kubeconfig: Path, namespace: str, *args: str):
        env = {
            **os.environ,
            "TAXI_JOB_KUBECONFIG": str(kubeconfig),
            "TAXI_JOB_NAMESPACE": namespace,
        }
        env.pop("KUBECONFIG", None)
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [TAXI_JOB, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.err_lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read_err, daemon=True).start()
        self.stdout = ""

    def _read_err(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.err_lines.put(line)

    def wait_for_stderr(self, text: str, timeout: float) -> str:
        """The first stderr line containing ``text`` (the launcher's progress)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # waiting for the run to get there, not timing it
            try:
                line = self.err_lines.get(timeout=1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.stderr.append(line)
            if text in line:
                return line
        pytest.fail(f"the launcher never said {text!r}: {''.join(self.stderr)}")

    def finish(self, timeout: float) -> int:
        assert self.process.stdout is not None
        self.stdout = self.process.stdout.read()
        code = self.process.wait(timeout)
        time.sleep(0.5)  # the reader thread drains the rest of stderr
        while not self.err_lines.empty():
            self.stderr.append(self.err_lines.get())
        return code

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def manual_jobs(namespace: str) -> list[dict[str, object]]:
    """The namespace's Jobs made by `taxi-job launch`, straight from the API server."""
    jobs = json.loads(
        kubectl("-n", namespace, "get", "jobs", "-l", "taxi-job/trigger=manual", "-o", "json")
    )
    return list(jobs["items"])


def assert_runs_said_the_server_is_away(runs: subprocess.CompletedProcess[str], server: str):
    """`taxi-job runs` during the outage: one line naming the server, exit 75."""
    assert runs.returncode == 75, runs.stderr
    (line,) = runs.stderr.strip().splitlines()
    assert server in line and "list jobs.batch" in line, line
    assert "connection refused" in line.lower(), line
    assert "Traceback" not in runs.stderr


def assert_followed_through(run: Launcher, code: int, namespace: str, before: set[str]):
    """`launch train --wait --logs` across the outage: one Job made, its real outcome."""
    stderr = "".join(run.stderr)
    assert "Traceback" not in stderr
    assert code == 0, stderr
    mine = [j for j in manual_jobs(namespace) if j["metadata"]["name"] not in before]  # type: ignore[index]
    assert len(mine) == 1, [j["metadata"]["name"] for j in mine]  # type: ignore[index]
    name = mine[0]["metadata"]["name"]  # type: ignore[index]
    assert run.stdout.splitlines()[0] == name
    assert f"{name}: succeeded" in stderr
    # The run's own summary, read once the API server was back, and its log, each line
    # once (the stream resumed after the outage, the overlap dropped): the model published.
    summary = dict(line.split(None, 1) for line in run.stdout.splitlines() if "  " in line)
    version = summary["model_version"].strip()
    published = [line for line in run.stdout.splitlines() if "published model" in line]
    assert len(published) == 1 and version in published[0], run.stdout
    assert len(set(run.stdout.splitlines())) == len(run.stdout.splitlines()), run.stdout
    assert "answers again after" in stderr  # the outage was noticed and said, not hidden


def train_through_an_outage(
    config: Path, namespace: str, outage: contextlib.AbstractContextManager[None]
) -> tuple[Launcher, int, subprocess.CompletedProcess[str], set[str]]:
    """`launch train --wait --logs` followed through ``outage`` (~OUTAGE_S) once its pod
    runs, and `taxi-job runs` called during it: the launcher, its exit code, the `runs`
    process, and the manual Jobs there were before."""
    before = {j["metadata"]["name"] for j in manual_jobs(namespace)}  # type: ignore[index]
    run = Launcher(config, namespace, "launch", "train", "--wait", "--logs", "--timeout", "600")
    run.wait_for_stderr(": running", timeout=300)
    with outage:
        away = time.monotonic()
        # `runs` while the API server is away: it does not wait for it, it says so (exit 75).
        runs = subprocess.run(
            [TAXI_JOB, "runs", "--kubeconfig", str(config), "-n", namespace],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - away)))
    outage_s = time.monotonic() - away
    code = run.finish(timeout=600)
    print(f"API server away {outage_s:.0f} s; launch: exit {code} after {run.elapsed:.0f}s; "
          f"stderr:\n{''.join(run.stderr)}\nstdout:\n{run.stdout}")  # fmt: skip
    print(f"runs during the outage: exit {runs.returncode}: {runs.stderr}")
    return run, code, runs, before


@contextlib.contextmanager
def stopped(proxy: Proxy) -> Iterator[None]:
    proxy.stop()
    try:
        yield
    finally:
        proxy.start()


@on_the_cluster
def test_launch_wait_logs_survives_the_api_server_away(
    namespace: str, proxy: Proxy, tmp_path: Path
) -> None:
    config = proxied_kubeconfig(tmp_path / "kubeconfig", proxy.port)
    run, code, runs, before = train_through_an_outage(config, namespace, stopped(proxy))
    assert_runs_said_the_server_is_away(runs, f"127.0.0.1:{proxy.port}")
    assert_followed_through(run, code, namespace, before)


@on_the_cluster
def test_an_outage_longer_than_the_timeout_is_exit_75(
    namespace: str, proxy: Proxy, tmp_path: Path
) -> None:
    config = proxied_kubeconfig(tmp_path / "kubeconfig", proxy.port)
    before = {j["metadata"]["name"] for j in manual_jobs(namespace)}  # type: ignore[index]
    run = Launcher(
        config, namespace, "launch", "train", "--wait", "--logs", "--timeout", "20",
        "--allow-overlap",
    )  # fmt: skip
    run.wait_for_stderr(": pending", timeout=120)
    proxy.stop()
    code = run.finish(timeout=120)  # the API server stays away until the launcher gave up
    stderr = "".join(run.stderr)
    print(f"launch: exit {code} after {run.elapsed:.0f}s; stderr:\n{stderr}")
    proxy.start()

    assert code == 75, stderr
    assert "Traceback" not in stderr
    error = [line for line in stderr.splitlines() if line.startswith("taxi-job: error")]
    assert len(error) == 1, stderr
    assert f"https://127.0.0.1:{proxy.port}" in error[0], error[0]
    assert "waiting for job" in error[0] and "keeps running" in error[0], error[0]
    mine = [j for j in manual_jobs(namespace) if j["metadata"]["name"] not in before]  # type: ignore[index]
    assert len(mine) == 1


@on_the_cluster
@pytest.mark.faults
def test_launch_wait_logs_survives_the_real_api_server_stopped(namespace: str) -> None:
    # The same as the proxy's test, with k8s-local's own kube-apiserver process stopped
    # for OUTAGE_S + the time `up` takes to start it (in the fault tests' phase of their
    # own: every client of the cluster loses it meanwhile). Here the controllers are away
    # too, so the Job's status stands still until the server is back; its watch cache
    # starts anew from etcd.
    host, port = api_server()
    outage = api_server_stopped()
    run, code, runs, before = train_through_an_outage(Path(KUBECONFIG), namespace, outage)
    assert_runs_said_the_server_is_away(runs, f"{host}:{port}")
    assert_followed_through(run, code, namespace, before)


# --- on the kmock stand-in ----------------------------------------------------------------

GONE = (
    b'{"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", '
    b'"status": "Failure", "code": 410, "reason": "Expired", '
    b'"message": "too old resource version: 1 (42)"}}\n'
)


def test_a_watch_expired_again_resumes_from_a_fresh_read(fake: FakeCluster) -> None:
    # Two watches in a row expire (410 Gone, as after a restarted API server whose watch
    # cache no longer has our version): each is resumed from a fresh read, and the wait
    # still ends with the Job's real outcome. (The client does not retry a 410 by itself
    # when the watch has a timeout, as ours has.)
    fake.put(CRONJOBS, make_cronjob("train"))
    fake.on_loop(lambda: fake.handler[("get", JOBS, {"watch": "true"})][:2] << GONE)
    job = launcher.launch(fake.batch, NS, "train")
    name = job.metadata.name

    with FakeController(fake, message='{"model_version": "v8"}'):
        result = launcher.wait(fake.batch, fake.core, NS, name, timeout=20, tick=1)

    assert result.state == "succeeded"
    assert result.summary == {"model_version": "v8"}
    calls = [r for r in fake.requests("get", JOBS) if r.name == name or r.params.get("watch")]
    kinds = ["watch" if r.params.get("watch") == "true" else "read" for r in calls]
    # Each expired watch is followed by a read of the Job (kmock's objects carry no
    # resourceVersion until the fake controller writes them: the order is what shows).
    assert kinds[:6] == ["read", "watch", "read", "watch", "read", "watch"], kinds


def test_a_create_whose_answer_was_lost_makes_one_job(fake: FakeCluster) -> None:
    # The server created the Job, then the connection broke before its answer came: what a
    # real API server going away mid-request does (not reproducible on demand through the
    # proxy, hence the stand-in). The retry's 409 AlreadyExists is our own Job.
    fake.put(CRONJOBS, make_cronjob("train"))
    real_create = fake.batch.create_namespaced_job
    attempts: list[str] = []

    def create_then_lose_the_answer(namespace: str, body: Any, **kwargs: Any) -> Any:
        attempts.append(body.metadata.name)
        created = real_create(namespace, body, **kwargs)
        if len(attempts) == 1:
            raise urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError())
        return created

    fake.batch.create_namespaced_job = create_then_lose_the_answer  # type: ignore[method-assign]
    outage = Outage(fake.url, patience_s=60, sleep=lambda _: None)

    job = launcher.launch(fake.batch, NS, "train", outage=outage)

    assert len(attempts) == 2 and attempts[0] == attempts[1] == job.metadata.name
    stored = fake.on_loop(lambda: [k for k in fake.handler.objects if k[0] == JOBS])
    assert [key[2] for key in stored] == [job.metadata.name]


def test_without_a_timeout_the_wait_gives_up_after_its_patience() -> None:
    now = [0.0]
    outage = Outage(
        "https://api:6443",
        patience_s=300,
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s),
    )
    refused = ClusterUnavailableError(
        "cannot reach the Kubernetes API server at https://api:6443 to list pods: refused",
        away=True,
    )
    with pytest.raises(ClusterUnavailableError) as caught:
        while True:
            outage.failed(refused, "waiting for job train-1", "the Job keeps running")
    assert now[0] == 300
    assert str(caught.value) == (
        f"{refused} (unreachable for 300s while waiting for job train-1); the Job keeps running"
    )
    assert caught.value.exit_code == 75


class CutStream:
    """A pod log response whose connection breaks after its lines (``cut``), or ends."""

    def __init__(self, lines: list[str], *, cut: bool):
        self.body, self.cut = "".join(f"{line}\n" for line in lines).encode(), cut

    def stream(self, amt: int, decode_content: bool) -> Iterator[bytes]:
        yield self.body
        if self.cut:
            raise urllib3.exceptions.ProtocolError("Response ended prematurely")

    def release_conn(self) -> None:
        pass


def test_a_cut_log_stream_resumes_without_repeating_lines() -> None:
    # A stub of the pod log endpoint: kmock serves a log as one body, it cannot cut one.
    first = ["2026-12-03T10:00:01.5Z reading", "2026-12-03T10:00:02.000000001Z trained"]
    again = [
        "2026-12-03T10:00:01.5Z reading",  # the overlap asked for: dropped
        "2026-12-03T10:00:02.000000001Z trained",
        "2026-12-03T10:00:02.25Z published model v9",
    ]
    calls: list[dict[str, Any]] = []

    class Core:
        def read_namespaced_pod_log(self, pod: str, namespace: str, **kwargs: Any) -> CutStream:
            calls.append(kwargs)
            return CutStream(first, cut=True) if len(calls) == 1 else CutStream(again, cut=False)

    lines: list[str] = []
    followers = launcher._LogFollowers(Core(), NS, lines.append, pause=0.01)  # type: ignore[arg-type]
    followers._follow("train-1-abcde", "train")

    assert lines == ["reading", "trained", "published model v9"]
    assert calls[0]["timestamps"] and "since_seconds" not in calls[0]
    assert calls[1]["since_seconds"] >= 10
