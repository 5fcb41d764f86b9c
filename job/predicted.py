"""Where an input's predictions go, and an index of the inputs the current model has
predicted, so that a run with nothing new decides from one listing instead of opening
every file ever predicted.

Naming: ``<predictions>/<queue>/<file>``, ``<queue>`` being the name of the input's folder
(``incoming/x.parquet`` → ``predictions/incoming/x.parquet``, ``backlog/x.parquet`` →
``predictions/backlog/x.parquet``). Two queues with files of the same name never share an
output, so their runs never overwrite each other's work; two queues of the same folder
name in one predictions folder are refused (``check_not_taken``). Predictions of the
former layout (``<predictions>/<file>``) are moved to their new name by the first run that
finds their input (``migrate``): nothing is predicted again for the change.

The index, ``<predictions>/<queue>/.predicted.json``, maps each input to the model
version that predicted it, the parts of its fingerprint a ``stat`` gives (size,
modification time, change time, inode) and its output's inode. A listed input whose
``stat`` and output match its entry is done: no file is opened. Anything else (no entry,
another version, a rewritten input: a rewrite changes the change time, which no one can
set back; a replaced output: another inode) takes the full check, which opens the
output's footer and compares the whole fingerprint, footer hash included. The index is a
cache of what the outputs say: runs that overlap may lose each other's entries (each
rewrites it whole, after reading it again), which costs a full check, never a wrong skip.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from job import reading, volume
from job.errors import BadInputError, TaxiJobError

logger = logging.getLogger(__name__)

INDEX = ".predicted.json"
META_INPUT = b"taxi_job.input"
#: Fingerprint fields a ``stat`` gives, in the order an index entry keeps them.
STAT_FIELDS = ("size", "mtime_ns", "ctime_ns", "inode")


def output_key(source: reading.Source) -> tuple[str, str]:
    """The input's queue (its folder's name) and file name: its output is
    ``<predictions>/<queue>/<name>``. Strings, not a path: a run lists every input ever
    predicted, and making and hashing a ``Path`` for each was half of a run with nothing
    new."""
    folder, name = posixpath.split(source.path)
    return posixpath.basename(folder) or "_", name


def recorded_input(output: Path) -> dict[str, Any] | None:
    """The fingerprint of the input whose predictions ``output`` holds; None when there is
    no readable output."""
    try:
        meta = pq.read_schema(output).metadata or {}
        recorded = json.loads(meta.get(META_INPUT, b"null"))
    except (OSError, ValueError, pa.ArrowInvalid):
        return None
    return recorded if isinstance(recorded, dict) else None


def migrate(out_dir: Path, source: reading.Source, output: Path) -> None:
    """Move the predictions of ``source`` under the former name (``<out_dir>/<file>``) to
    ``output`` when there are none there yet. Only when they were made from this very
    input (its name and location): the former name was shared by the queues."""
    legacy = out_dir / source.name
    if output.exists() or not legacy.is_file():
        return
    recorded = recorded_input(legacy)
    if recorded is None or recorded.get("uri") != source.uri:
        return
    with volume.writing("predictions", output.parent):
        with contextlib.suppress(FileNotFoundError):  # another run moved it first
            os.rename(legacy, output)
            logger.info("moved %s to %s (the predictions' new name)", legacy, output)


def check_not_taken(output: Path, source: reading.Source) -> None:
    """Refuse to overwrite the predictions of another input that is still there: two
    queues of the same folder name predicted into one folder would otherwise replace each
    other's predictions run after run."""
    recorded = recorded_input(output)
    other = recorded.get("uri") if recorded else None
    if not isinstance(other, str) or other == source.uri or "://" in other:
        return
    if os.path.exists(other):
        raise BadInputError(
            f"{output} holds the predictions of {other}, a file of the same name in "
            f"another folder named {output.parent.name}; give {source.uri}'s queue a "
            "predictions folder of its own (--predictions)"
        )


class Index:
    """The index of one output folder, read once per run and written back at the end."""

    def __init__(self, folder: Path, version: str) -> None:
        self.folder = folder
        self.version = version
        self.entries = _read(folder / INDEX)
        self.changed: dict[str, list[Any]] = {}
        self.outputs = _outputs(folder)

    def done(self, source: reading.Source) -> bool:
        """Whether the current model has predicted ``source`` as the listing sees it now."""
        entry = self.entries.get(source.uri)
        if entry is None or source.inode is None or entry[0] != self.version:
            return False
        seen = [source.size, source.mtime_ns, source.ctime_ns, source.inode]
        return bool(entry[1:5] == seen and self.outputs.get(source.name) == entry[5])

    def record(self, source: reading.Source, fingerprint: dict[str, Any], output: Path) -> None:
        """Note that the current model predicted ``source`` (as ``fingerprint`` says) into
        ``output``. Only a local input has the change time that makes a skip safe."""
        if any(fingerprint.get(f) is None for f in STAT_FIELDS):
            return
        try:
            output_inode = output.stat().st_ino
        except FileNotFoundError:
            return
        entry = [self.version, *(fingerprint[f] for f in STAT_FIELDS), output_inode]
        self.changed[source.uri] = entry
        self.outputs[output.name] = output_inode

    def flush(self) -> None:
        """Write the index back with this run's entries, merged into what it holds now
        (another run may have written it meanwhile). Entries of other model versions and
        of outputs that are gone are dropped. Failing to write it is a warning: the next
        run checks those inputs the slow way."""
        if not self.changed:
            return
        entries = {**_read(self.folder / INDEX), **self.changed}
        outputs = _outputs(self.folder)  # now: other runs may have published meanwhile
        kept = {
            uri: entry
            for uri, entry in entries.items()
            if entry[0] == self.version and outputs.get(posixpath.basename(uri)) == entry[5]
        }
        data = json.dumps({"format": 1, "entries": kept}, separators=(",", ":")).encode()
        try:
            with volume.writing("the index of predicted inputs", self.folder):
                volume.write_atomic(self.folder / INDEX, data)
        except TaxiJobError as exc:
            logger.warning("%s; the next run checks these inputs the slow way", exc)
            return
        self.entries = kept
        self.changed = {}


def _outputs(folder: Path) -> dict[str, int]:
    """The outputs of ``folder`` by name, with their inodes: one listing, no ``stat``
    (a scandir gives the inode for free)."""
    try:
        with os.scandir(folder) as scan:
            return {e.name: e.inode() for e in scan if not e.name.startswith(".")}
    except FileNotFoundError:
        return {}


def _read(path: Path) -> dict[str, list[Any]]:
    try:
        data = json.loads(path.read_bytes())
        entries = data["entries"]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("%s: unreadable (%s); checking every input the slow way", path, exc)
        return {}
    if not isinstance(entries, dict):
        return {}
    return {
        k: v for k, v in entries.items() if isinstance(v, list) and len(v) == 2 + len(STAT_FIELDS)
    }
