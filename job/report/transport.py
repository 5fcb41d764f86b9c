"""The report page through a pod's log: how ``taxi-job launch report`` brings the page
from the cluster's volume to the laptop with no permission beyond reading a pod's log (the
launcher has it; a termination message holds only 4 KiB).

The pod prints the page gzip-compressed and base64-encoded between two marker lines, with
its length and SHA-256; the launcher collects the lines between the markers and checks
both, so a page cut short (a log rotated, a stream broken) is an error, never a file with
half a page.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import sys
import zlib
from collections.abc import Iterable

from job.errors import TaxiJobError

BEGIN = "-----BEGIN TAXI-JOB REPORT"
END = "-----END TAXI-JOB REPORT-----"
#: base64 characters a log line.
LINE = 76


class IncompleteReportError(TaxiJobError):
    """The pod's log did not carry a whole page."""

    exit_code = 70  # as the launcher's RunFailedError: the run did not deliver


def frame(html: str) -> list[str]:
    """The lines that carry ``html``."""
    data = html.encode()
    packed = base64.b64encode(gzip.compress(data, mtime=0)).decode()
    head = f"{BEGIN} gzip+base64 bytes={len(data)} sha256={hashlib.sha256(data).hexdigest()}-----"
    return [head, *(packed[i : i + LINE] for i in range(0, len(packed), LINE)), END]


def emit(html: str) -> None:
    """Print the framed page on stdout (the pod's log)."""
    sys.stdout.write("\n".join(frame(html)) + "\n")
    sys.stdout.flush()


def unframe(lines: Iterable[str]) -> str:
    """The page carried by ``lines`` (a log: other lines before and after are ignored)."""
    header: str | None = None
    body: list[str] = []
    for raw in lines:
        line = raw.strip()
        if header is None:
            if line.startswith(BEGIN):
                header = line
            continue
        if line == END:
            break
        body.append(line)
    else:
        what = "no report in the pod's log" if header is None else "the report was cut short"
        raise IncompleteReportError(what)
    fields = dict(f.split("=", 1) for f in header.removesuffix("-----").split() if "=" in f)
    try:
        data = gzip.decompress(base64.b64decode("".join(body), validate=True))
    except (ValueError, OSError, EOFError, zlib.error) as exc:
        raise IncompleteReportError(f"the report in the pod's log is damaged: {exc}") from exc
    if str(len(data)) != fields.get("bytes") or hashlib.sha256(data).hexdigest() != fields.get(
        "sha256"
    ):
        raise IncompleteReportError("the report in the pod's log fails its length or checksum")
    return data.decode()
