"""The run journal on the volume: what each ``train``, ``infer`` and ``models promote|prune``
run did, written at its end (success or failure), read by ``taxi-job report``.

Layout, under ``<artifacts>/runs/``::

    last-<command>.json                      the latest run of the command, replaced each run
    <YYYY-MM-DD>/<HHMMSS.ffffff>Z-<command>-<random>.json
                                             one file a run that did something or failed
    <YYYY-MM-DD>.jsonl                       a past day's runs, compacted: one run a line

A record is ``{"command", "started", "finished", "exit_code", "error", "summary", "host",
"job"}``. Each run writes a file of its own (atomically, under a random name), so runs
that overlap never write the same file and need no lock.

Bounded growth, the rule: a day's folder is compacted into ``<day>.jsonl`` once the day is
:data:`COMPACT_AFTER_DAYS` days old (no run writes into it any more: a run's file is named
after the time it finished), and a compacted day older than :data:`KEEP_DAYS` days is
deleted. So at most ``COMPACT_AFTER_DAYS + 1`` folders of single files (an every-minute
``infer`` that predicts each time: 1,440 files a day) and one file a day for a year. Runs
that did nothing (an every-minute ``infer`` with an empty queue) only replace
``last-<command>.json``. The run that compacts holds a claim on the day (two compactors
must not both read a folder that the other is emptying).

The journal lives in an existing artifacts folder: it never creates one (``infer`` before
the first training leaves a fresh volume as it was). Writing it is best effort: a failure
is one warning and never changes the run's exit code (the run's own work is done by then).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from job import volume

logger = logging.getLogger(__name__)

RUNS = "runs"
#: A day's folder is compacted into one ``<day>.jsonl`` file this many days after it.
COMPACT_AFTER_DAYS = 2
#: Compacted days older than this are deleted.
KEEP_DAYS = 400
#: A compactor killed half-way leaves its claim; another may take it after this.
COMPACT_LEASE_S = 600.0
#: The Pod's name and the Job's, from the downward API (the manifests set them).
JOB_ENV = ("TAXI_JOB_JOB_NAME", "TAXI_JOB_POD_NAME")
#: The commands that keep a journal.
COMMANDS = ("train", "infer", "models promote", "models prune")

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def did_something(command: str, summary: Mapping[str, Any] | None) -> bool:
    """Whether a successful run changed anything worth a record of its own: a published
    model, a predicted or rejected input, a promotion, a pruned version."""
    if summary is None:
        return False
    if command == "train":
        return bool(summary.get("model_version"))
    if command == "infer":
        return bool(summary.get("inputs_predicted") or summary.get("inputs_rejected"))
    if command == "models promote":
        return bool(summary.get("changed"))
    if command == "models prune":
        return bool(summary.get("pruned"))
    return True


def _parse(stamp: str) -> dt.datetime:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def record(
    artifacts: Path,
    command: str,
    *,
    started: str,
    finished: str,
    exit_code: int,
    error: str | None,
    summary: Mapping[str, Any] | None,
) -> Path | None:
    """Write the run's record (``last-<command>.json``, and its own file when it did
    something or failed), then compact old days. Return the run's own file, if any.
    Never raises: a journal that cannot be written is one warning."""
    entry = {
        "command": command,
        "started": started,
        "finished": finished,
        "exit_code": exit_code,
        "error": error,
        "summary": dict(summary) if summary is not None else None,
        "host": os.uname().nodename,
        "job": next((os.environ[n] for n in JOB_ENV if os.environ.get(n)), None),
    }
    slug = command.replace(" ", "-")
    runs = artifacts / RUNS
    own: Path | None = None
    try:
        if not artifacts.is_dir():
            # A fresh volume (infer before the first training) or a mistyped path: the
            # journal does not create the artifacts folder.
            return None
        data = json.dumps(entry, default=str, sort_keys=True).encode()
        runs.mkdir(parents=True, exist_ok=True)
        _replace_quickly(runs / f"last-{slug}.json", data)
        if exit_code != 0 or did_something(command, summary):
            when = _parse(finished)
            day = runs / f"{when:%Y-%m-%d}"
            day.mkdir(exist_ok=True)
            # Microseconds of the clock: runs that end within one second sort as they ended.
            micro = dt.datetime.now(dt.UTC).microsecond
            own = day / f"{when:%H%M%S}.{micro:06d}Z-{slug}-{os.urandom(3).hex()}.json"
            _replace_quickly(own, data)
        compact(runs, today=_parse(finished).date())
    except Exception as exc:  # noqa: BLE001 - the run's result stands whatever happens here
        logger.warning("could not write the run journal in %s: %s", runs, exc)
        return None
    return own


def _replace_quickly(path: Path, data: bytes) -> None:
    """Write ``path`` atomically (a reader sees the old file or the new one, whole) but
    without syncing: a sync costs a run tens of milliseconds on a network volume, every
    minute for ``infer``, and a crash right after the run loses at most that run's
    record, never the run's own work (readers skip a file they cannot parse)."""
    tmp = path.with_name(f"{volume.TMP_PREFIX}{path.name}.{os.urandom(4).hex()}")
    try:
        tmp.write_bytes(data)
        tmp.chmod(volume.FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def compact(runs: Path, today: dt.date) -> None:
    """Fold each day folder at least :data:`COMPACT_AFTER_DAYS` old into ``<day>.jsonl``
    (merged with that file if a late run left one), then delete days older than
    :data:`KEEP_DAYS`."""
    for entry in sorted(os.scandir(runs), key=lambda e: e.name):
        name = entry.name.removesuffix(".jsonl")
        if not _DAY.match(name):
            continue
        age = (today - dt.date.fromisoformat(name)).days
        if age > KEEP_DAYS:
            _remove(Path(entry.path))
        elif entry.is_dir() and age >= COMPACT_AFTER_DAYS:
            _compact_day(runs, name)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _compact_day(runs: Path, day: str) -> None:
    folder = runs / day
    claim = volume.try_claim(folder, COMPACT_LEASE_S, purpose="compacting the run journal")
    if claim is None:
        return  # another run compacts it
    try:
        if not folder.is_dir():
            return  # done by the run that held the claim before us
        target = runs / f"{day}.jsonl"
        lines: dict[str, str] = {}
        for name, line in _read_jsonl(target):
            lines[name] = line
        files = sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))
        for path in files:
            with contextlib.suppress(OSError, ValueError):
                body = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(body, dict):
                    lines[path.name] = json.dumps({"file": path.name, **body}, sort_keys=True)
        text = "".join(lines[k] + "\n" for k in sorted(lines))
        volume.write_atomic(target, text.encode())
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        volume.release(claim)


def _read_jsonl(path: Path) -> Iterator[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            body = json.loads(line)
            if isinstance(body, dict) and isinstance(body.get("file"), str):
                yield body["file"], line


def read(artifacts: Path) -> list[dict[str, Any]]:
    """Every record of the journal, oldest first (by ``finished``); unreadable files and
    lines are skipped (a run killed while writing leaves none: its writes are atomic)."""
    runs = artifacts / RUNS
    records: list[dict[str, Any]] = []
    if not runs.is_dir():
        return records
    for entry in os.scandir(runs):
        if entry.name.endswith(".jsonl") and _DAY.match(entry.name[:-6]):
            for _, line in _read_jsonl(Path(entry.path)):
                records.append(json.loads(line))
        elif entry.is_dir() and _DAY.match(entry.name):
            for path in Path(entry.path).glob("*.json"):
                if path.name.startswith("."):
                    continue
                with contextlib.suppress(OSError, ValueError):
                    body = json.loads(path.read_text(encoding="utf-8"))
                    if isinstance(body, dict):
                        records.append({"file": path.name, **body})
    records.sort(key=lambda r: (str(r.get("finished")), str(r.get("file"))))
    return records


def last(artifacts: Path) -> dict[str, dict[str, Any]]:
    """The latest run of each command (``last-<command>.json``), by command."""
    found: dict[str, dict[str, Any]] = {}
    for command in COMMANDS:
        path = artifacts / RUNS / f"last-{command.replace(' ', '-')}.json"
        with contextlib.suppress(OSError, ValueError):
            body = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(body, dict):
                found[command] = body
    return found
