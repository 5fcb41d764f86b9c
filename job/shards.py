"""Shards: which process reads what, and the partial statistics they leave on the volume.

A sharded training runs N processes (an Indexed Job's pods) over the same inputs. Each
works out the same assignment from the files' footers alone, with no coordination:

- with at least N files, whole files; with fewer, row groups, so one big file still
  splits. Largest first, each to the least loaded shard (ties: the lower index), the
  evaluation inputs continuing from the training inputs' loads.

Each shard writes its share's pair statistics to ``<artifacts>/partials/<run id>/``::

    shard-0001-of-0003.npz  one shard's partial statistics (format below)
    .claim-REDUCER          the claim of the shard that merges them (volume.try_claim:
                            link(2), which fails when it exists, so exactly one shard
                            claims it, also across nodes on a ReadWriteMany volume), with
                            its index, renewed while it reduces
    PUBLISHED               JSON: the model version this run published; kept when the
                            partials are removed, so a late or repeated shard does nothing

Partial format ``taxi-job/partial/v1``: a NumPy ``.npz`` (read with ``allow_pickle=False``:
plain arrays, no code) holding ``header`` (UTF-8 JSON as uint8: format, run id, shard,
shards, the plan's digest, rows read and kept per role), per role ``train`` and ``eval``
the arrays ``<role>_pu``, ``<role>_do`` (int64 zone ids) and ``<role>_n``, ``<role>_s``,
``<role>_q`` (float64 count, sum and sum of squares of the duration in minutes per zone
pair), and ``checksum``: the hex SHA-256 (as uint8) of every other member in name order,
each as its name, a NUL, its dtype, its shape and its bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from job import volume
from job.errors import BadInputError
from job.model import PairStats

FORMAT = "taxi-job/partial/v1"
PARTIALS = "partials"
#: The reduce is claimed as ``.claim-REDUCER`` (:func:`volume.claim_path`).
REDUCER = "REDUCER"
PUBLISHED = "PUBLISHED"
ROLES = ("train", "eval")
_STATS = ("pu", "do", "n", "s", "q")
#: A run id names a folder: letters, digits, dot, dash, underscore; not hidden.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")

#: A file to read: its index among its source's files, and its row groups (None: all).
Part = tuple[int, tuple[int, ...] | None]


class PartialError(Exception):
    """A partial file that is unreadable, of another format, or fails its checksum."""


def owner(name: str, shards: int) -> int:
    """The shard that predicts the input called ``name``: the same in every process and
    every run (a hash of the name, not Python's salted ``hash``)."""
    if shards <= 1:
        return 0
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def check(shards: int, shard_index: int, run_id: str | None, *, needs_run_id: bool) -> None:
    """Raise ``BadInputError`` for an impossible shard, or a missing or unsafe run id."""
    if shards < 1:
        raise BadInputError(f"--shards {shards}: must be at least 1")
    if not 0 <= shard_index < shards:
        raise BadInputError(f"--shard-index {shard_index}: must be from 0 to {shards - 1}")
    if needs_run_id and run_id is None:
        raise BadInputError(
            "--run-id is required with --shards above 1: every shard of one training "
            "must name the same run (on Kubernetes: the Job's name)"
        )
    if run_id is not None and not RUN_ID.fullmatch(run_id):
        raise BadInputError(
            f"--run-id {run_id!r}: use letters, digits, '.', '-' and '_' "
            "(at most 200, not starting with '.')"
        )


def assign(
    row_groups: Sequence[Sequence[int]], shards: int, loads: list[int] | None = None
) -> list[list[Part]]:
    """Each shard's parts of files whose row groups hold ``row_groups[f]`` rows.

    Whole files when there are at least ``shards`` files, else row groups; largest first,
    each to the least loaded shard. ``loads`` (rows per shard so far) is updated in place,
    so that a second source continues where the first left the balance.
    """
    loads = loads if loads is not None else [0] * shards
    whole = len(row_groups) >= shards
    items: list[tuple[int, int | None, int]] = []  # file, row group (None: whole), rows
    for f, sizes in enumerate(row_groups):
        if whole:
            items.append((f, None, sum(sizes)))
        else:
            items.extend((f, g, rows) for g, rows in enumerate(sizes))
    taken: list[dict[int, list[int] | None]] = [{} for _ in range(shards)]
    # sorted() is stable: equal sizes keep file and row-group order.
    for f, g, rows in sorted(items, key=lambda item: -item[2]):
        shard = min(range(shards), key=lambda k: (loads[k], k))
        loads[shard] += rows
        if g is None:
            taken[shard][f] = None
        else:
            groups = taken[shard].setdefault(f, [])
            assert groups is not None
            groups.append(g)
    return [
        [(f, None if groups is None else tuple(sorted(groups))) for f, groups in sorted(t.items())]
        for t in taken
    ]


def run_dir(artifacts: Path, run_id: str) -> Path:
    return artifacts / PARTIALS / run_id


def partial_path(folder: Path, shard: int, shards: int) -> Path:
    return folder / f"shard-{shard + 1:04d}-of-{shards:04d}.npz"


def missing(folder: Path, shards: int) -> list[int]:
    """The shards whose partial is not in ``folder`` yet.

    Read from a listing of the folder, not by looking each name up: an NFS client may
    cache "no such file" for a name for seconds, while opening and reading the folder
    revalidates it (close-to-open consistency), so the last shard to finish sees the
    partials the others renamed into place before it.
    """
    present = set(os.listdir(folder))
    return [k for k in range(shards) if partial_path(folder, k, shards).name not in present]


def _digest(arrays: dict[str, np.ndarray]) -> str:
    sha = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        sha.update(f"{name}\0{array.dtype.str}{array.shape}".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


def write_partial(path: Path, header: dict[str, Any], stats: dict[str, PairStats]) -> None:
    """Write one shard's partial statistics atomically (format in the module docstring)."""
    # Any: numpy's stub reads ``**arrays`` as if it could hold savez's allow_pickle flag.
    arrays: dict[str, Any] = {
        "header": np.frombuffer(json.dumps({"format": FORMAT, **header}).encode(), np.uint8)
    }
    for role in ROLES:
        for name in _STATS:
            arrays[f"{role}_{name}"] = getattr(stats[role], name)
    arrays["checksum"] = np.frombuffer(_digest(arrays).encode(), np.uint8)
    # Whole or not at all, for a shard on another node that reads it. A handle, not the
    # temporary's name: given a name, savez would append ".npz" to it.
    with volume.replacing(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def read_partial(path: Path) -> tuple[dict[str, Any], dict[str, PairStats]]:
    """A partial's header and statistics; ``PartialError`` when it is not a whole, valid
    partial of this format. Never runs code from the file (no pickle)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        checksum = arrays.pop("checksum").tobytes().decode()
        if checksum != _digest(arrays):
            raise PartialError(f"{path}: checksum mismatch")
        header = json.loads(arrays["header"].tobytes())
        if header.get("format") != FORMAT:
            raise PartialError(f"{path}: unknown format {header.get('format')!r}")
        stats = {role: PairStats(*(arrays[f"{role}_{name}"] for name in _STATS)) for role in ROLES}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise PartialError(f"{path}: not a readable partial ({exc})") from exc
    return header, stats


#: The reduce claim lapses this long after its holder stopped renewing it (a killed
#: reducer): a shard that finishes later breaks it and reduces. A live reducer renews it
#: every third of this (:func:`volume.renewing`), however long the reduce takes.
REDUCE_LEASE_S = 600


def claim(folder: Path, shard: int) -> tuple[int, volume.Claim | None]:
    """Claim the reduce of a run for ``shard`` with the volume's one claim primitive
    (:func:`volume.try_claim`: exactly one shard wins, also across nodes); return the index
    of the claim's holder and, when it is this shard, the claim.

    A claim held by this very index is a killed reducer's that the Job retried: this run
    goes on without a claim of its own, and publishes at most once all the same
    (``PUBLISHED`` and the run id, checked under the training lock)."""
    taken = volume.try_claim(folder / REDUCER, REDUCE_LEASE_S, purpose="reduce", shard=shard)
    if taken is not None:
        return shard, taken
    body = volume.read_claim(volume.claim_path(folder / REDUCER)) or {}
    holder = body.get("shard")
    return (holder if isinstance(holder, int) else -1), None


def published(folder: Path) -> dict[str, Any] | None:
    """What this run published, or None."""
    try:
        result: dict[str, Any] = json.loads((folder / PUBLISHED).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return result


def mark_published(folder: Path, record: dict[str, Any]) -> None:
    volume.write_atomic(folder / PUBLISHED, (json.dumps(record, default=str) + "\n").encode())


def remove_partials(folder: Path) -> None:
    """Remove a published run's partials and its claim, keeping ``PUBLISHED``."""
    for path in [*folder.glob("shard-*.npz"), volume.claim_path(folder / REDUCER)]:
        path.unlink(missing_ok=True)
