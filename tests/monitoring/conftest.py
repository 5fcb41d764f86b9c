"""Real monitoring components on loopback: Debian's ``prometheus-pushgateway`` and
``prometheus`` binaries on free ports, in temporary folders. A test whose binary is missing
is skipped, or fails where TAXI_JOB_REQUIRE_TOOLS=1 (CI installs them: .ci/setup-tools)."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from k8s.conftest import find_tool
from prometheus_client.parser import text_string_to_metric_families

#: Series as read back: {metric name: {frozenset of (label, value): value}}.
Series = dict[str, dict[frozenset[tuple[str, str]], float]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


#: What a test's HTTP server does with a request: the handler (to answer) and its body.
Answer = Callable[[http.server.BaseHTTPRequestHandler, bytes], None]


@contextlib.contextmanager
def http_server(answer: Answer) -> Iterator[str]:
    """A threaded HTTP server on a free loopback port calling ``answer`` for every GET,
    POST and PUT; its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def handle_one(self) -> None:
            answer(self, self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        do_GET = do_POST = do_PUT = handle_one

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args[0]} exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout} s: {log.read_text()[-2000:]}")


def start(args: list[str], ready: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    wait_ready(ready, process, log)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def read_pushed(url: str) -> Series:
    """The Pushgateway's own exposition (what Prometheus scrapes), parsed."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset(
                (k, v) for k, v in sample.labels.items() if k not in ("instance",) and v != ""
            )
            series.setdefault(sample.name, {})[labels] = sample.value
    return series


def value(series: Series, name: str, **labels: str) -> float | None:
    """The value of ``name`` in the group ``labels`` (job is always taxi-job)."""
    wanted = frozenset({"job": "taxi-job", **labels}.items())
    return series.get(name, {}).get(wanted)


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Pushgateway on a free loopback port; its URL."""
    binary = find_tool("prometheus-pushgateway")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start(
        [
            binary,
            f"--web.listen-address=127.0.0.1:{port}",
            # Debian's build persists to /var/lib/prometheus/pushgateway.data by default:
            # every test's Pushgateway would start with the metrics of the ones before.
            f"--persistence.file={tmp_path / 'pushgateway.data'}",
        ],
        f"{url}/-/ready",
        tmp_path / "pushgateway.log",
    )
    yield url
    stop(process)


@pytest.fixture
def pushed(pushgateway: str) -> Callable[[], Series]:
    return lambda: read_pushed(pushgateway)


def prometheus_query(url: str, query: str) -> list[dict[str, object]]:
    """The result vector of an instant query on Prometheus's HTTP API."""
    request = f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(request, timeout=5) as answer:
        body = json.load(answer)
    assert body["status"] == "success", body
    result = body["data"]["result"]
    assert isinstance(result, list)
    return result
