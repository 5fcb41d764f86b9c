"""A monitoring outage never breaks or delays a run: real ``taxi-job`` processes against
real sockets that refuse, never answer, or answer with errors. Each costs one warning
line, at most :data:`job.metrics.PUSH_TIMEOUT_S`, one attempt, and the same exit code."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from job.metrics import PUSH_TIMEOUT_S
from monitoring.conftest import http_server

TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))
#: Startup and the run itself on a loaded 2-core machine: far under the 30 s a push would
#: wait with prometheus-client's default timeout, and under any hang.
SLACK_S = 10.0


def run(args: list[str], pushgateway: str | None) -> tuple[subprocess.CompletedProcess[str], float]:
    extra = ["--pushgateway", pushgateway] if pushgateway else []
    started = time.monotonic()
    result = subprocess.run(
        [TAXI_JOB, *args, *extra], capture_output=True, text=True, timeout=120, check=False
    )
    return result, time.monotonic() - started


@pytest.fixture
def silent() -> Iterator[tuple[str, list[socket.socket]]]:
    """A server that accepts connections and never reads or answers (a hung Pushgateway,
    or a firewall that lets the handshake through)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    server.close()
    for connection in accepted:
        connection.close()


@pytest.fixture
def refused() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture
def failing() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server that answers every request with 500, and counts them."""
    requests: list[str] = []

    def answer(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        requests.append(f"{handler.command} {handler.path}")
        handler.send_error(500, "storage full")

    with http_server(answer) as url:
        yield url, requests


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "metrics not pushed" in line]


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, list[str]]:
    """A run that succeeds (exit 0) and one that fails on bad input (exit 2)."""
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    return {
        "ok": ["sample-data", "--month", "2021-01", "--rows", "10", str(tmp_path / "d")],
        "bad": [
            "train",
            "--train-data",
            str(bad),
            "--eval-data",
            str(bad),
            "--artifacts",
            str(tmp_path / "a"),
        ],
    }


def test_a_pushgateway_that_never_answers_costs_the_bound_and_a_warning(
    silent: tuple[str, list[socket.socket]], runs: dict[str, list[str]]
) -> None:
    url, accepted = silent
    for args, code in ((runs["ok"], 0), (runs["bad"], 2)):
        alone, _ = run(args, None)
        assert alone.returncode == code
        before = len(accepted)
        result, seconds = run(args, url)
        time.sleep(0.2)  # the server thread's accept() of a late connection, if any
        assert len(accepted) == before + 1, "one connection per run, no retry"
        assert result.returncode == code, result.stderr
        assert seconds < PUSH_TIMEOUT_S + SLACK_S
        assert warnings(result.stderr) == [
            line for line in result.stderr.splitlines() if "no answer within 2 s" in line
        ]
        assert len(warnings(result.stderr)) == 1, result.stderr
        assert url in warnings(result.stderr)[0]


def test_a_refused_connection_costs_a_warning_and_nothing_else(
    refused: str, runs: dict[str, list[str]]
) -> None:
    for args, code in ((runs["ok"], 0), (runs["bad"], 2)):
        result, _ = run(args, refused)
        assert result.returncode == code, result.stderr
        (line,) = warnings(result.stderr)
        assert refused in line and "Connection refused" in line
    # the successful run's summary is on stdout as without monitoring
    ok, _ = run(runs["ok"], refused)
    assert "rows" in ok.stdout and "10" in ok.stdout


def test_an_erroring_pushgateway_is_asked_once_per_run_not_retried(
    failing: tuple[str, list[str]], runs: dict[str, list[str]]
) -> None:
    url, requests = failing
    result, _ = run(runs["ok"], url)
    assert result.returncode == 0
    (line,) = warnings(result.stderr)
    assert "500" in line
    # one read of the failure count and one push: no retry storm
    assert requests == [
        "GET /api/v1/metrics",
        "POST /metrics/job/taxi-job/command/sample-data",
    ]


def test_a_name_that_does_not_resolve_costs_a_warning(runs: dict[str, list[str]]) -> None:
    result, _ = run(runs["bad"], "http://pushgateway.invalid:9091")
    assert result.returncode == 2
    assert len(warnings(result.stderr)) == 1
