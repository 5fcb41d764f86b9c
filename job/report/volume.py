"""What the report knows, read from the volume alone: the registry (every version's
``model.json``, ``CURRENT``, ``history.jsonl``), the run journal and the rejected inputs'
notes. Nothing here reads a trip file, and nothing talks to the cluster.

Per-input records (``input_records`` of the ``infer`` summaries in the journal) are folded
into :class:`InputPoint` s: the newest :data:`RECENT_INPUTS` one by one, older ones one
point per UTC day, with exact sums (``sse``, ``rows_scored``, ``predicted_sum``, ``rows``)
so that a day's RMSE and mean are exact; its PSIs are the row-weighted mean of its inputs'
(a PSI of the union would need the zone counts, which the records do not keep).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job import artifacts, journal, registry
from job.errors import ModelUnavailableError

logger = logging.getLogger(__name__)

#: Inputs shown one by one; older ones are one point per day.
RECENT_INPUTS = 400
#: Runs listed in "recent runs".
RECENT_RUNS = 40
#: Rejected inputs listed (newest first).
RECENT_REJECTED = 20


@dataclass(frozen=True)
class Version:
    """One model version as the report shows it."""

    version: str
    status: str
    created: dt.datetime | None
    rmse_eval: float | None
    rmse_train: float | None
    rows: int | None
    verified: bool


@dataclass(frozen=True)
class InputPoint:
    """One input predicted (or, aggregated, one day of inputs)."""

    time: dt.datetime
    label: str
    inputs: int
    rows: int
    rows_scored: int
    rmse_live: float | None
    psi_pickup: float | None
    psi_dropoff: float | None
    mean_predicted: float | None
    model_version: str | None


@dataclass
class Snapshot:
    """Everything the page shows."""

    artifacts: str
    generated: dt.datetime
    current: str | None
    current_metadata: dict[str, Any] | None
    versions: list[Version]
    history: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    last_runs: dict[str, dict[str, Any]]
    inputs: list[InputPoint]
    inputs_total: int
    rejected: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)


def parse_time(value: Any) -> dt.datetime | None:
    """An ISO time (``2026-12-01T02:37:17Z``), or a POSIX timestamp, as an aware datetime."""
    if isinstance(value, int | float) and math.isfinite(value):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def read(root: Path, rejected_dir: Path | None = None, now: dt.datetime | None = None) -> Snapshot:
    """Read the volume under ``root`` (an artifacts folder)."""
    now = now or dt.datetime.now(dt.UTC)
    problems: list[str] = []
    current: str | None = None
    with contextlib.suppress(ModelUnavailableError):
        current = artifacts.current_version(root)
    current_metadata: dict[str, Any] | None = None
    if current is not None:
        try:
            current_metadata = artifacts.load(root, current).metadata
        except ModelUnavailableError as exc:
            problems.append(f"the current version cannot be read: {exc}")
    versions = [
        Version(
            version=v["version"],
            status=v["status"],
            created=parse_time(v.get("created")),
            rmse_eval=_number(v.get("rmse_eval")),
            rmse_train=_number(v.get("rmse_train")),
            rows=v.get("rows") if isinstance(v.get("rows"), int) else None,
            verified=bool(v.get("verified")),
        )
        for v in registry.list_versions(root)
    ]
    runs = journal.read(root)
    records = list(_input_records(runs))
    return Snapshot(
        artifacts=str(root),
        generated=now,
        current=current,
        current_metadata=current_metadata,
        versions=versions,
        history=registry.read_history(root),
        runs=list(reversed(runs[-RECENT_RUNS:])),
        last_runs=journal.last(root),
        inputs=fold_inputs(records),
        inputs_total=len(records),
        rejected=read_rejected(rejected_dir or default_rejected(root)),
        problems=problems,
    )


def default_rejected(root: Path) -> Path:
    """Where ``infer`` sets bad inputs aside on the cluster's volume and in ``make demo``:
    ``data/rejected/`` beside the artifacts folder (``data/incoming/``'s sibling)."""
    return root.parent / "data" / "rejected"


def read_rejected(folder: Path) -> list[dict[str, Any]]:
    """The notes (``<name>.json``) of the inputs set aside, newest first."""
    notes = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                continue
            with contextlib.suppress(OSError, ValueError):
                body = json.loads(Path(entry.path).read_text(encoding="utf-8"))
                if isinstance(body, dict):
                    notes.append({"note": entry.name, **body})
    notes.sort(key=lambda n: str(n.get("rejected_at")), reverse=True)
    return notes[:RECENT_REJECTED]


def _input_records(runs: Iterable[Mapping[str, Any]]) -> Iterable[dict[str, Any]]:
    """Each predicted input's record, with the run's time and model version."""
    for run in runs:
        summary = run.get("summary")
        if run.get("command") != "infer" or not isinstance(summary, dict):
            continue
        for item in summary.get("input_records") or []:
            if isinstance(item, dict):
                yield {
                    **item,
                    "finished": run.get("finished"),
                    "model_version": summary.get("model_version"),
                }


def _point(items: Sequence[Mapping[str, Any]], time: dt.datetime, label: str) -> InputPoint:
    rows = sum(int(i.get("rows") or 0) for i in items)
    scored = sum(int(i.get("rows_scored") or 0) for i in items)
    sse = sum(_number(i.get("sse")) or 0.0 for i in items)
    predicted = sum(_number(i.get("predicted_sum")) or 0.0 for i in items)

    def weighted(key: str) -> float | None:
        pairs = [(_number(i.get(key)), int(i.get("rows") or 0)) for i in items]
        known = [(v, w) for v, w in pairs if v is not None and w > 0]
        weight = sum(w for _, w in known)
        return sum(v * w for v, w in known) / weight if weight else None

    versions = {i.get("model_version") for i in items}
    return InputPoint(
        time=time,
        label=label,
        inputs=len(items),
        rows=rows,
        rows_scored=scored,
        rmse_live=math.sqrt(sse / scored) if scored else None,
        psi_pickup=weighted("psi_pickup"),
        psi_dropoff=weighted("psi_dropoff"),
        mean_predicted=predicted / rows if rows else None,
        model_version=str(versions.pop()) if len(versions) == 1 else None,
    )


def _when(item: Mapping[str, Any]) -> dt.datetime | None:
    return parse_time(item.get("finished")) or parse_time(item.get("input_mtime"))


def _name(uri: Any) -> str:
    """An input's file name: its folder is the same queue for all."""
    return str(uri).rstrip("/").rsplit("/", 1)[-1] if uri else "?"


def fold_inputs(
    records: Sequence[Mapping[str, Any]], recent: int = RECENT_INPUTS
) -> list[InputPoint]:
    """The inputs over time, oldest first: the newest ``recent`` one by one, older ones one
    point per UTC day (exact RMSE and mean; PSI row-weighted)."""
    timed = sorted(
        ((t, r) for r in records if (t := _when(r)) is not None), key=lambda pair: pair[0]
    )
    old, new = timed[: max(len(timed) - recent, 0)], timed[max(len(timed) - recent, 0) :]
    days: dict[dt.date, list[Mapping[str, Any]]] = {}
    for when, item in old:
        days.setdefault(when.date(), []).append(item)
    points = [
        _point(
            items,
            dt.datetime.combine(day, dt.time(12), dt.UTC),
            f"{day.isoformat()} ({len(items)} inputs)",
        )
        for day, items in sorted(days.items())
    ]
    points.extend(_point([item], when, _name(item.get("input"))) for when, item in new)
    return points
