"""fetch: a month from an HTTP server, retried on transient errors, whole or not at all."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_volume import age

from job import fetch, sample, volume
from job.cli import cli
from job.errors import BadInputError, TransientError

MONTH = "2021-01"
NAME = f"yellow_tripdata_{MONTH}.parquet"
FILE_PATH = f"/trip-data/{NAME}"


@dataclass
class Reply:
    """One scripted answer: a status, a body, and optionally only part of it sent."""

    status: int = 200
    body: bytes = b""
    send: int | None = None  # bytes actually sent; Content-Length still says len(body)
    headers: dict[str, str] = field(default_factory=dict)


class Server:
    """A real HTTP server on 127.0.0.1 answering each path from a script of replies."""

    def __init__(self) -> None:
        self.script: dict[str, list[Reply]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                replies = server.script.get(self.path) or [Reply(404, b"not found")]
                reply = replies.pop(0) if len(replies) > 1 else replies[0]
                self.send_response(reply.status)
                self.send_header("Content-Length", str(len(reply.body)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                sent = reply.body if reply.send is None else reply.body[: reply.send]
                self.wfile.write(sent)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/trip-data"
        self.url = self.base_url + "/" + NAME

    def on(self, path: str, *replies: Reply) -> None:
        self.script[path] = list(replies)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def parquet(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real (synthetic) month file's bytes."""
    out = tmp_path_factory.mktemp("served")
    return sample.write_sample(MONTH, 500, out).path.read_bytes()


Get = Callable[..., fetch.FetchResult]


@pytest.fixture
def get(server: Server, tmp_path: Path) -> Get:
    """Fetch from the test server into tmp_path/dl, with tiny backoff; sleeps are recorded."""
    sleeps: list[float] = []

    def run(retries: int = 3, **kwargs: object) -> fetch.FetchResult:
        return fetch.fetch_month(
            MONTH, tmp_path / "dl", server.base_url, retries=retries, backoff=0.01,
            timeout=5.0, sleep=sleeps.append, **kwargs,
        )  # fmt: skip

    run.sleeps = sleeps  # type: ignore[attr-defined]
    return run


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_url_is_the_tlcs() -> None:
    assert fetch.month_url(MONTH) == (
        "https://d37ci6vzurychx.cloudfront.net/trip-data/yellow_tripdata_2021-01.parquet"
    )
    assert fetch.month_url("2022-11", "http://mirror/x/") == (
        "http://mirror/x/yellow_tripdata_2022-11.parquet"
    )


def test_downloads_the_file(server: Server, get: Get, parquet: bytes, tmp_path: Path) -> None:
    server.on(FILE_PATH, Reply(200, parquet))
    result = get()
    assert result == fetch.FetchResult(
        path=tmp_path / "dl" / NAME, bytes=len(parquet), url=server.url, skipped=False
    )
    assert result.path.read_bytes() == parquet
    assert listing(tmp_path / "dl") == [NAME]  # no temporary file left


def test_a_complete_file_already_there_is_kept(
    server: Server, get: Get, parquet: bytes, tmp_path: Path
) -> None:
    server.on(FILE_PATH, Reply(200, parquet))
    get()
    mtime = (tmp_path / "dl" / NAME).stat().st_mtime_ns
    again = get()
    assert again.skipped
    assert again.bytes == len(parquet)
    assert (tmp_path / "dl" / NAME).stat().st_mtime_ns == mtime


def test_a_file_of_another_size_is_replaced(
    server: Server, get: Get, parquet: bytes, tmp_path: Path
) -> None:
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / NAME).write_bytes(b"PAR1 stale PAR1")
    server.on(FILE_PATH, Reply(200, parquet))
    result = get()
    assert not result.skipped
    assert result.path.read_bytes() == parquet


def test_retries_after_503_with_growing_backoff(server: Server, get: Get, parquet: bytes) -> None:
    server.on(FILE_PATH, Reply(503), Reply(503), Reply(200, parquet))
    result = get(retries=3)
    assert result.path.read_bytes() == parquet
    assert len(server.requests) == 3
    first, second = get.sleeps  # type: ignore[attr-defined]
    assert 0.005 <= first <= 0.01
    assert 0.01 <= second <= 0.02


def test_429_is_retried_and_retry_after_is_honoured(
    server: Server, get: Get, parquet: bytes
) -> None:
    server.on(FILE_PATH, Reply(429, headers={"Retry-After": "0.5"}), Reply(200, parquet))
    get()
    assert get.sleeps == [0.5]  # type: ignore[attr-defined]


def test_exhausted_retries_are_transient(server: Server, get: Get, tmp_path: Path) -> None:
    server.on(FILE_PATH, Reply(500))
    with pytest.raises(TransientError, match=r"after 3 attempts: HTTP 500") as info:
        get(retries=2)
    assert info.value.exit_code == 75
    assert len(server.requests) == 3
    assert listing(tmp_path / "dl") == []


@pytest.mark.parametrize("status", [404, 403])
def test_missing_month_is_bad_input_at_once(
    server: Server, get: Get, tmp_path: Path, status: int
) -> None:
    server.on(FILE_PATH, Reply(status, b"<Error>NoSuchKey</Error>"))
    with pytest.raises(BadInputError) as info:
        get()
    assert server.url in str(info.value)
    assert f"HTTP {status}" in str(info.value)
    assert len(server.requests) == 1  # retrying cannot help
    assert listing(tmp_path / "dl") == []


def test_truncated_body_is_retried_and_leaves_nothing(
    server: Server, get: Get, parquet: bytes, tmp_path: Path
) -> None:
    server.on(FILE_PATH, Reply(200, parquet, send=len(parquet) // 2))
    with pytest.raises(TransientError, match="cut off|bytes of"):
        get(retries=1)
    assert len(server.requests) == 2
    assert listing(tmp_path / "dl") == []


def test_truncated_then_whole(server: Server, get: Get, parquet: bytes) -> None:
    server.on(FILE_PATH, Reply(200, parquet, send=100), Reply(200, parquet))
    assert get().path.read_bytes() == parquet


def test_a_body_that_is_not_parquet_is_bad_input(server: Server, get: Get, tmp_path: Path) -> None:
    server.on(FILE_PATH, Reply(200, b"<html>maintenance</html>"))
    with pytest.raises(BadInputError, match="did not send a parquet file"):
        get()
    assert listing(tmp_path / "dl") == []


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]
    with pytest.raises(TransientError, match="cannot connect"):
        fetch.fetch_month(
            MONTH,
            tmp_path,
            f"http://127.0.0.1:{port}",
            retries=1,
            backoff=0.0,
            sleep=lambda _: None,
        )


def test_bad_month_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="YYYY-MM"):
        fetch.fetch_month("2021-1", tmp_path)


# The command line.


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_cli_with_flags(server: Server, parquet: bytes, tmp_path: Path) -> None:
    server.on(FILE_PATH, Reply(503), Reply(200, parquet))
    code, out, err = run(
        "fetch", "--month", MONTH, "--base-url", server.base_url, "--retries", "2",
        "--backoff", "0.01", "--output-format", "json", str(tmp_path / "dl"),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {
        "path": str(tmp_path / "dl" / NAME),
        "bytes": len(parquet),
        "url": server.url,
        "skipped": False,
    }
    assert (tmp_path / "dl" / NAME).read_bytes() == parquet


def test_cli_from_the_environment(server: Server, parquet: bytes, tmp_path: Path) -> None:
    server.on(FILE_PATH, Reply(503), Reply(503), Reply(200, parquet))
    env = {
        "TAXI_JOB_MONTH": MONTH,
        "TAXI_JOB_BASE_URL": server.base_url,
        "TAXI_JOB_DIR": str(tmp_path / "env"),
        "TAXI_JOB_RETRIES": "2",
        "TAXI_JOB_BACKOFF": "0.01",
        "TAXI_JOB_REQUEST_TIMEOUT": "5",
        "TAXI_JOB_OUTPUT_FORMAT": "json",
    }
    code, out, err = run("fetch", env=env)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["path"] == str(tmp_path / "env" / NAME)
    assert len(server.requests) == 3
    # A flag wins over the environment: one retry is not enough for two 503s.
    server.requests.clear()
    server.on(FILE_PATH, Reply(503), Reply(503), Reply(200, parquet))
    code, _, err = run("fetch", "--retries", "1", str(tmp_path / "flag"), env=env)
    assert code == 75
    assert len(server.requests) == 2


def test_cli_404_exits_2_naming_the_url(server: Server, tmp_path: Path) -> None:
    code, _, err = run(
        "fetch", "--month", MONTH, "--base-url", server.base_url, str(tmp_path / "dl")
    )
    assert code == 2
    assert server.url in err
    assert listing(tmp_path / "dl") == []


def test_cli_truncated_exits_75(server: Server, parquet: bytes, tmp_path: Path) -> None:
    server.on(FILE_PATH, Reply(200, parquet, send=10))
    code, _, err = run(
        "fetch", "--month", MONTH, "--base-url", server.base_url, "--retries", "1",
        "--backoff", "0", str(tmp_path / "dl"),
    )  # fmt: skip
    assert code == 75
    assert server.url in err
    assert listing(tmp_path / "dl") == []


def test_cli_bad_month_exits_2(tmp_path: Path) -> None:
    code, _, err = run("fetch", "--month", "2021-13", str(tmp_path))
    assert code == 2
    assert "--month" in err


def test_a_killed_downloads_temporary_goes_once_an_hour_old(
    server: Server, get: Get, parquet: bytes, tmp_path: Path
) -> None:
    # What a fetch or sample-data killed mid-write left (SIGKILL, a lost node): the next
    # one into the folder removes it once nobody can still be writing it.
    folder = tmp_path / "dl"
    folder.mkdir()
    old = volume.temporary_file(folder / "yellow_tripdata_2020-12.parquet")
    young = volume.temporary_file(folder / "yellow_tripdata_2020-11.parquet")
    age(old, volume.TEMPORARY_AFTER_S + 60)
    server.on(FILE_PATH, Reply(200, parquet))
    get()
    assert listing(folder) == sorted([NAME, young.name])
