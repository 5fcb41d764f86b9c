"""A synthetic volume for the report: model versions whose metadata carries records shaped
as the quality records are agreed (``evaluation_records``, ``training_mix``,
``training_predicted_histogram``), a promotion history with rejections and rollbacks, and
a run journal whose ``infer`` summaries carry ``input_records``.

The weights are a real trained model's (``model.json`` of a version trained by
``taxi-job train``), so every version loads and verifies as a real one; only the
metadata is made up. Used by the report's tests, its benchmark and its screenshots.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from pathlib import Path
from typing import Any

RESIDUAL_EDGES = [float(e) for e in range(-30, 31, 2)]
DURATION_EDGES = [float(e) for e in range(0, 62, 4)]
ZONES = [str(z) for z in range(1, 41)]


def _histogram(
    rng: random.Random, edges: list[float], centre: float, spread: float
) -> dict[str, Any]:
    counts = [0] * (len(edges) - 1)
    for _ in range(3000):
        value = rng.gauss(centre, spread)
        for i in range(len(counts)):
            if edges[i] <= value < edges[i + 1]:
                counts[i] += 1
                break
    return {"edges": edges, "counts": counts}


def evaluation_records(rng: random.Random, rows: int = 20000) -> dict[str, Any]:
    n = len(DURATION_EDGES) - 1
    counts = [[0] * n for _ in range(n)]
    for _ in range(rows // 4):
        actual = min(max(rng.lognormvariate(2.5, 0.5), 1.0), 59.9)
        predicted = min(max(actual + rng.gauss(0, 5), 0.0), 59.9)
        counts[int(predicted // 4)][int(actual // 4)] += 1
    zones = {
        side: {
            z: {
                "rows": (r := rng.randint(50, 2000)),
                "sse": r * rng.uniform(20, 120),
                "residual_sum": r * rng.uniform(-2, 2),
            }
            for z in ZONES
        }
        for side in ("pickup", "dropoff")
    }
    return {
        "rows": rows,
        "residual_histogram": _histogram(rng, RESIDUAL_EDGES, 0.5, 7.0),
        "predicted_vs_actual": {
            "predicted_edges": DURATION_EDGES,
            "actual_edges": DURATION_EDGES,
            "counts": counts,
        },
        "zones": zones,
        "predicted_histogram": _histogram(rng, DURATION_EDGES, 14, 6),
    }


def write_version(
    root: Path, weights: dict[str, Any], version: str, metadata: dict[str, Any]
) -> None:
    body = {"format": "taxi-job/model/v1", "version": version, **metadata, "model": weights}
    data = (json.dumps(body) + "\n").encode()
    folder = root / "models" / version
    folder.mkdir(parents=True)
    (folder / "model.json").write_bytes(data)
    (folder / "SHA256SUMS").write_text(f"{hashlib.sha256(data).hexdigest()}  model.json\n")


def stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_volume(
    root: Path,
    weights: dict[str, Any],
    *,
    versions: int = 12,
    inputs: int = 60,
    records_from: int = 0,
    seed: int = 1,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Write a volume under ``root`` (an artifacts folder); return what the page must
    show (``current``, ``versions``, ``inputs``). Versions before ``records_from`` (by
    age) carry no records, as models trained before the records existed."""
    rng = random.Random(seed)
    now = now or dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
    root.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    current: str | None = None
    names = []
    span_days = max(versions * 3, 30)
    for n in range(versions):
        created = now - dt.timedelta(days=span_days * (versions - n) / versions)
        version = created.strftime("%Y%m%dT%H%M%S.%fZ") + f"-{n:08x}"
        rmse_eval = 6.5 + 0.8 * rng.random() + n * 0.002
        promoted = n == 0 or rng.random() > 0.25
        metadata: dict[str, Any] = {
            "created": stamp(created),
            "min_duration": 1.0,
            "max_duration": 60.0,
            "metrics": {
                "rmse_train": rmse_eval - 0.4,
                "rmse_eval": rmse_eval,
                "rows_kept": 280000 + n,
            },
            "gate": {"policy": "gate", "promoted": promoted, "rmse_eval_champion": None},
        }
        if n >= records_from:
            metadata["evaluation_records"] = evaluation_records(rng)
            metadata["training_mix"] = {
                side: {z: rng.randint(100, 5000) for z in ZONES} for side in ("pickup", "dropoff")
            }
            metadata["training_predicted_histogram"] = _histogram(rng, DURATION_EDGES, 14, 6)
        write_version(root, weights, version, metadata)
        names.append(version)
        if promoted:
            history.append(
                {
                    "time": stamp(created),
                    "version": version,
                    "previous_version": current,
                    "cause": "train",
                    "reason": "synthetic",
                    "by": "test",
                }
            )
            current = version
    if versions >= 6:  # a rollback to the version before, then a training after it
        target = next(h for h in reversed(history[:-1]))
        when = now - dt.timedelta(hours=6)
        history.append(
            {
                "time": stamp(when),
                "version": target["version"],
                "previous_version": current,
                "cause": "rollback",
                "reason": "synthetic rollback",
                "by": "test",
            }
        )
        current = target["version"]
    assert current is not None
    (root / "CURRENT").write_text(current + "\n")
    (root / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    _journal(root, rng, inputs, now, current)
    return {"current": current, "versions": names, "inputs": inputs}


def _journal(root: Path, rng: random.Random, inputs: int, now: dt.datetime, current: str) -> None:
    """``inputs`` predicted inputs, five a run, over the last days; all compacted into
    ``<day>.jsonl`` files but the newest day, kept as single files."""
    runs = root / "runs"
    runs.mkdir(exist_ok=True)
    per_run = 5
    count = (inputs + per_run - 1) // per_run
    span = dt.timedelta(days=max(inputs / 250, 3))
    days: dict[str, list[str]] = {}
    last: dict[str, Any] | None = None
    for r in range(count):
        finished = now - span * (count - r) / count
        records = []
        for i in range(min(per_run, inputs - r * per_run)):
            rows = rng.randint(2000, 20000)
            scored = int(rows * 0.97)
            live = 6.8 + 0.6 * (r / count) + rng.gauss(0, 0.3)
            records.append(
                {
                    "input": f"trips-{r:06d}-{i}.parquet",
                    "output": f"/predictions/trips-{r:06d}-{i}.parquet",
                    "rows": rows,
                    "rows_scored": scored,
                    "sse": live * live * scored,
                    "rmse_live": live,
                    "psi_pickup": abs(rng.gauss(0.04 + 0.15 * r / count, 0.02)),
                    "psi_dropoff": abs(rng.gauss(0.03 + 0.1 * r / count, 0.02)),
                    "mean_predicted_duration": (m := 14 + rng.gauss(0, 0.5)),
                    "predicted_sum": m * rows,
                    "input_mtime": stamp(finished - dt.timedelta(minutes=2)),
                }
            )
        summary = {
            "model_version": current,
            "inputs_predicted": len(records),
            "inputs_rejected": 0,
            "rows_predicted": sum(x["rows"] for x in records),
            "input_records": records,
            "inputs_waiting": 0,
        }
        record = {
            "command": "infer",
            "started": stamp(finished - dt.timedelta(seconds=20)),
            "finished": stamp(finished),
            "exit_code": 0,
            "error": None,
            "summary": summary,
            "host": "infer-pod",
            "job": f"infer-{r}",
        }
        name = f"{finished:%H%M%S}Z-infer-{r:06x}.json"
        days.setdefault(f"{finished:%Y-%m-%d}", []).append(
            json.dumps({"file": name, **record}, sort_keys=True)
        )
        last = record
    newest = max(days)
    for day, lines in days.items():
        if day == newest:
            folder = runs / day
            folder.mkdir()
            for line in lines:
                body = json.loads(line)
                (folder / body.pop("file")).write_text(json.dumps(body))
        else:
            (runs / f"{day}.jsonl").write_text("\n".join(lines) + "\n")
    if last is not None:
        (runs / "last-infer.json").write_text(json.dumps(last))
