"""Sources given as URLs, read through pyarrow's filesystems, against a real local HTTP server.

The server is Python's http.server with byte ranges added (parquet is read by ranges, as
from a CDN or object store); it serves on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from job import reading
from job.cli import cli
from job.errors import EXIT_BAD_INPUT, EXIT_TRANSIENT


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    failures: dict[str, int] = {}  # path -> how many requests still answer 503
    data_failures = 0  # how many ranged reads of data (not the footer) still answer 503

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        left = self.failures.get(self.path, 0)
        if left:
            self.failures[self.path] = left - 1 if left > 0 else left
            self.send_error(503, "try later")
            return None
        path = Path(self.translate_path(self.path))
        if path.is_dir():  # an index page, which fsspec lists a glob from
            return super().send_head()
        if not path.is_file():
            self.send_error(404)
            return None
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and int(match.group(1)) < len(data) - 256 * 1024 and RangeHandler.data_failures:
            RangeHandler.data_failures -= 1
            self.send_error(503, "connection lost")
            return None
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            data = data[start : end + 1]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(data)

    def copyfile(self, source, outputfile):  # type: ignore[no-untyped-def]
        # The client may hang up once it has read the range it needed.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            super().copyfile(source, outputfile)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    RangeHandler.failures = {}
    RangeHandler.data_failures = 0
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: RangeHandler(*a, directory=str(root), **k)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_train_and_infer_from_urls(served, make_trips, tmp_path):
    url, root = served
    make_trips("jan.parquet", rows=3000, seed=1, folder=root)
    make_trips("feb.parquet", rows=2000, seed=2, folder=root)
    out = tmp_path / "artifacts"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--train-data",
            f"{url}/jan.parquet",
            "--eval-data",
            f"{url}/feb.parquet",
            "--artifacts",
            str(out),
            "--output-format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    local = CliRunner().invoke(
        cli,
        [
            "train",
            "--train-data",
            str(root / "jan.parquet"),
            "--eval-data",
            str(root / "feb.parquet"),
            "--artifacts",
            str(tmp_path / "local"),
            "--output-format",
            "json",
        ],
    )
    remote_summary = json.loads(result.stdout.splitlines()[-1])
    local_summary = json.loads(local.stdout.splitlines()[-1])
    assert remote_summary["rmse_eval"] == local_summary["rmse_eval"]
    assert remote_summary["rows_read"] == 3000
    inferred = CliRunner().invoke(
        cli,
        [
            "infer",
            "--input",
            f"{url}/feb.parquet",
            "--artifacts",
            str(out),
            "--output-format",
            "json",
        ],
    )
    assert inferred.exit_code == 0, inferred.output
    assert json.loads(inferred.stdout.splitlines()[-1])["rows_predicted"] == 2000
    assert [p.name for p in (out / "predictions").glob("*/feb.parquet")] == ["feb.parquet"]


def test_a_bad_file_listed_by_url_is_reported_and_left_in_place(served, make_trips, tmp_path):
    """Quarantine moves local files only: a bad one behind a URL stays, the others are done."""
    url, root = served
    make_trips("jan.parquet", rows=300, seed=1, folder=root)
    make_trips("mar.parquet", rows=200, seed=3, folder=root)
    (root / "bad.parquet").write_text("not parquet")
    out = tmp_path / "artifacts"
    data = str(root / "jan.parquet")
    args = ["train", "--train-data", data, "--eval-data", data, "--artifacts", str(out)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    result = CliRunner().invoke(
        cli, ["infer", "--input", f"{url}/*.parquet", "--artifacts", str(out),
              "--output-format", "json"],
    )  # fmt: skip
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert f"{url}/bad.parquet: not a parquet file" in last and "left in place" in last
    summary = json.loads(result.stdout.splitlines()[-1])
    assert (summary["inputs_predicted"], summary["inputs_rejected"]) == (2, 1)
    assert summary["rejected"][0]["moved_to"] is None
    assert (root / "bad.parquet").read_text() == "not parquet"


def test_a_missing_url_is_bad_input(served, make_trips, tmp_path):
    url, root = served
    make_trips("feb.parquet", rows=100, folder=root)
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--train-data",
            f"{url}/nothere.parquet",
            "--eval-data",
            f"{url}/feb.parquet",
            "--artifacts",
            str(tmp_path / "a"),
        ],
    )
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr.strip().splitlines()[-1] == (
        f"taxi-job: error: {url}/nothere.parquet: no such file or directory"
    )


def test_a_server_error_is_retried_then_succeeds(served, make_trips, monkeypatch):
    url, root = served
    make_trips("jan.parquet", rows=100, folder=root)
    monkeypatch.setattr(reading, "RETRY_DELAY_S", 0.01)
    RangeHandler.failures = {"/jan.parquet": 1}
    (source,) = reading.resolve(f"{url}/jan.parquet")
    assert reading.open_parquet(source).metadata.num_rows == 100
    assert RangeHandler.failures["/jan.parquet"] == 0


def test_a_server_that_keeps_failing_is_transient(served, make_trips, monkeypatch, tmp_path):
    url, root = served
    make_trips("jan.parquet", rows=100, folder=root)
    monkeypatch.setattr(reading, "RETRY_DELAY_S", 0.01)
    RangeHandler.failures = {"/jan.parquet": -1}  # always 503
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--train-data",
            f"{url}/jan.parquet",
            "--eval-data",
            f"{url}/jan.parquet",
            "--artifacts",
            str(tmp_path / "a"),
        ],
    )
    assert result.exit_code == EXIT_TRANSIENT, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert f"{url}/jan.parquet" in last and "failed 3 times" in last
    assert not (tmp_path / "a" / "CURRENT").exists()


def test_a_connection_lost_part_way_reads_the_file_again(served, make_trips, monkeypatch, tmp_path):
    """A server error after the footer was read (in the middle of the data) is retried by
    reading the whole file again; the result equals a clean read."""
    url, root = served
    make_trips("jan.parquet", rows=200_000, seed=1, folder=root, row_group_size=50_000)
    monkeypatch.setattr(reading, "RETRY_DELAY_S", 0.01)
    RangeHandler.data_failures = 1
    out = tmp_path / "a"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--train-data",
            f"{url}/jan.parquet",
            "--eval-data",
            str(root / "jan.parquet"),
            "--artifacts",
            str(out),
            "--output-format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert RangeHandler.data_failures == 0  # the failure happened, and was survived
    assert "reading it again" in result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["rows_read"] == 200_000
    assert summary["rmse_train"] == pytest.approx(summary["rmse_eval"], rel=1e-12)
