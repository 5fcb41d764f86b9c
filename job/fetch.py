"""Download a month of the TLC's yellow-taxi trips, with retries, whole or not at all.

The body is streamed to a temporary file next to the destination, synced, checked (its
length against Content-Length, ``PAR1`` at both ends) and only then renamed into place,
so a reader never sees half a file. Connection errors, timeouts, cut-off bodies, 429 and
5xx are retried with exponential backoff; 4xx other than 429 is bad input at once.

A destination that already exists with exactly the server's Content-Length and the
parquet magic at both ends is kept and the download skipped (``skipped`` in the result):
the TLC republishes a month rarely, and the size is the only check the server offers
cheaply. Without a Content-Length the file is downloaded again.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from job import __version__, volume
from job.errors import BadInputError, TransientError
from job.sample import file_name, parse_month

logger = logging.getLogger(__name__)

#: Where the TLC publishes its trip records.
DEFAULT_BASE_URL = "https://d37ci6vzurychx.cloudfront.net/trip-data"
MAGIC = b"PAR1"
_CHUNK = 1 << 20
_MAX_DELAY = 60.0


@dataclass(frozen=True)
class FetchResult:
    """What ``fetch_month`` did."""

    path: Path
    """The parquet file, now in place."""
    bytes: int
    """Its size."""
    url: str
    """Where it came from."""
    skipped: bool
    """True when the file was already there with the server's size, so nothing was fetched."""


class _Retry(Exception):
    """One attempt failed in a way that another attempt may not."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def month_url(month: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """The URL of a month's yellow-taxi file."""
    return f"{base_url.rstrip('/')}/{file_name(month)}"


def fetch_month(
    month: str,
    dest_dir: Path,
    base_url: str = DEFAULT_BASE_URL,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchResult:
    """Download ``month`` into ``dest_dir/yellow_tripdata_<month>.parquet``.

    ``retries`` is the number of attempts after the first; the n-th retry waits about
    ``backoff * 2**(n-1)`` seconds (with jitter, at most a minute, or what the server's
    Retry-After asks within that). Raises BadInputError for a missing month or a body that
    is not parquet, TransientError once the retries are spent.
    """
    try:
        parse_month(month)
    except ValueError as exc:
        raise BadInputError(str(exc)) from None
    if retries < 0:
        raise ValueError(f"retries must be zero or more, not {retries}")
    url = month_url(month, base_url)
    dest = dest_dir / file_name(month)
    with volume.writing("the downloaded month", dest_dir):
        dest_dir.mkdir(parents=True, exist_ok=True)
        volume.sweep(None, data=dest_dir)  # what a killed fetch or sample-data left here
    for attempt in range(retries + 1):
        try:
            return _attempt(url, dest, timeout)
        except _Retry as exc:
            if attempt == retries:
                raise TransientError(
                    f"could not download {url} after {attempt + 1} attempts: {exc}"
                ) from None
            delay = min(backoff * 2**attempt * random.uniform(0.5, 1.0), _MAX_DELAY)
            if exc.retry_after is not None:
                delay = min(max(delay, exc.retry_after), _MAX_DELAY)
            logger.warning(
                "attempt %d of %d for %s failed (%s); retrying in %.1fs",
                attempt + 1,
                retries + 1,
                url,
                exc,
                delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _attempt(url: str, dest: Path, timeout: float) -> FetchResult:
    request = urllib.request.Request(url, headers={"User-Agent": f"taxi-job/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) only)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 429 or exc.code >= 500:
            raise _Retry(f"HTTP {exc.code} {exc.reason}", _retry_after(exc.headers)) from None
        if exc.code in (403, 404):  # CloudFront answers 403 for a file that is not there
            raise BadInputError(
                f"{url}: HTTP {exc.code}, no such file (is the month published yet?)"
            ) from None
        raise BadInputError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _Retry(f"cannot connect: {reason}") from None

    with response:
        length_header = response.headers.get("Content-Length")
        expected = int(length_header) if length_header and length_header.isdigit() else None
        if expected is not None and _is_complete(dest, expected):
            logger.info("%s is already here with the server's size; not downloading", dest)
            return FetchResult(path=dest, bytes=expected, url=url, skipped=True)
        with volume.writing("the downloaded month", dest.parent), volume.replacing(dest) as tmp:
            with open(tmp, "wb") as handle:
                _copy(response, handle)
            size = tmp.stat().st_size
            if expected is not None and size != expected:
                raise _Retry(f"got {size} bytes of {expected}")
            if not _has_magic(tmp):
                raise BadInputError(f"{url} did not send a parquet file ({size} bytes)")
    logger.info("downloaded %s to %s (%d bytes)", url, dest, size)
    return FetchResult(path=dest, bytes=size, url=url, skipped=False)


def _copy(response: BinaryIO, handle: BinaryIO) -> None:
    """Copy the body to the file: a failure to read it may pass (another attempt), a
    failure to write it is the volume's (raised as it is)."""
    while True:
        try:
            chunk = response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            # Cut off mid-body (IncompleteRead, reset, timeout): worth another try.
            raise _Retry(f"download cut off: {exc!r}") from None
        if not chunk:
            return
        handle.write(chunk)


def _retry_after(headers: object) -> float | None:
    value = getattr(headers, "get", lambda _: None)("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: rare enough to fall back to our own backoff
        return None


def _is_complete(path: Path, expected: int) -> bool:
    try:
        return path.stat().st_size == expected and _has_magic(path)
    except OSError:
        return False


def _has_magic(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(4)
        if handle.seek(0, os.SEEK_END) < 12:  # magic, footer length, magic
            return False
        handle.seek(-4, os.SEEK_END)
        return head == MAGIC and handle.read(4) == MAGIC
