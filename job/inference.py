"""``taxi-job infer``: predict the inputs of a queue with the current model, one input at a
time: claim it, predict it whole, publish it, or set it aside when it is bad.

Data flows one way: ``reading`` streams the input's columns, ``model`` predicts, ``volume``
publishes each input's predictions whole (see ``volume`` for how runs that overlap stay out
of each other's way).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from job import artifacts, predicted, quality, reading, shards, volume
from job.errors import BadInputError, InputsRejectedError, NoModelYetError, TaxiJobError

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions"
#: Rows per predicted row group.
PREDICT_ROWS = 1 << 17
#: Dictionaries where values repeat (zones, a prediction per zone pair, the version) and
#: delta encoding for row numbers and times: a file 40% smaller, written 40% faster than
#: with the defaults.
WRITE_OPTIONS: dict[str, Any] = {
    "compression": "snappy",
    "use_dictionary": [reading.PU, reading.DO, "predicted_duration", "model_version"],
    "column_encoding": {"row": "DELTA_BINARY_PACKED", reading.PICKUP: "DELTA_BINARY_PACKED"},
}
META_VERSION = b"taxi_job.model_version"
META_INPUT = predicted.META_INPUT


@dataclass(frozen=True)
class InferConfig:
    """What ``taxi-job infer`` needs."""

    input: str
    """Trips to predict: a parquet file, a directory of them, or a glob."""
    artifacts: Path
    """The artifacts folder holding the current model."""
    predictions: Path | None = None
    """Where predictions go; ``<artifacts>/predictions`` by default."""
    force: bool = False
    """Predict inputs again even when the current model has predicted them already."""
    shards: int = 1
    """How many processes share the inputs; each input goes to one (:func:`shards.owner`)."""
    shard_index: int = 0
    """Which share this process predicts, from 0 to ``shards - 1``."""
    settle_s: float = 30.0
    """A listed input that cannot be read and changed (its change time) less than this
    ago is not ready: left for a later run, as it may still be being copied in."""
    budget_s: float | None = None
    """Start no new input after this many seconds of the run (oldest inputs first); the
    rest is left for the next run. None: no limit."""


def _predicted_already(output: Path, version: str, fingerprint: dict[str, Any]) -> bool:
    try:
        meta = pq.read_schema(output).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return False
    return (
        meta.get(META_VERSION) == version.encode()
        and meta.get(META_INPUT) == json.dumps(fingerprint, sort_keys=True).encode()
    )


def _predict_file(
    source: reading.Source,
    parquet: pq.ParquetFile,
    artifact: artifacts.Artifact,
    fingerprint: dict[str, Any],
    tmp: Path,
) -> quality.Live:
    """Write the predictions of one input to ``tmp``; return its rows, predicted minutes,
    zone mixes and, where it has drop-off times, the model's live error on the rows the
    training filter keeps (read in the same batches: one pass over the file)."""
    reading.check_schema(source, parquet.schema_arrow, reading.INFER_COLUMNS)
    columns: tuple[str, ...] = reading.INFER_COLUMNS
    bounds = quality.training_bounds(artifact.metadata)
    if bounds is not None and _has_dropoff(parquet.schema_arrow):
        columns = reading.TRAIN_COLUMNS
    live = quality.Live(bounds, artifact.model)
    schema = pa.schema(
        [
            ("row", pa.int64()),
            (reading.PICKUP, parquet.schema_arrow.field(reading.PICKUP).type),
            (reading.PU, parquet.schema_arrow.field(reading.PU).type),
            (reading.DO, parquet.schema_arrow.field(reading.DO).type),
            ("predicted_duration", pa.float64()),
            ("model_version", pa.dictionary(pa.int32(), pa.string())),
        ],
        metadata={
            META_VERSION: artifact.version.encode(),
            META_INPUT: json.dumps(fingerprint, sort_keys=True).encode(),
        },
    )
    rows = 0
    # From buffers: pa.array() on a Python list imports pandas when it is installed (0.2 s).
    label = artifact.version.encode()
    versions = pa.StringArray.from_buffers(
        1, pa.py_buffer(np.array([0, len(label)], np.int32).tobytes()), pa.py_buffer(label)
    )
    with (
        pq.ParquetWriter(tmp, schema, **WRITE_OPTIONS) as parquet_writer,
        BackgroundWriter(parquet_writer) as writer,
    ):
        batches = reading.iter_batches(source, columns, parquet, PREDICT_ROWS)
        for batch in batches:
            n = batch.pu.size
            predicted = live.predict(
                batch.pu, batch.do, batch.pickup_us, batch.dropoff_us, batch.times_valid
            )
            table = pa.Table.from_arrays(
                [
                    reading.to_arrow(np.arange(rows, rows + n, dtype=np.int64)),
                    batch.arrow.column(reading.PICKUP),
                    batch.arrow.column(reading.PU),
                    batch.arrow.column(reading.DO),
                    reading.to_arrow(predicted),
                    pa.DictionaryArray.from_arrays(
                        reading.to_arrow(np.zeros(n, np.int32)), versions
                    ),
                ],
                schema=schema,
            )
            writer.write(table)
            rows += n
    return live.finish()


def _has_dropoff(schema: pa.Schema) -> bool:
    """Whether an input carries drop-off times to score the model on. A column of that name
    of another type is not an error here (inference does not need it): left unscored."""
    index = schema.get_field_index(reading.DROPOFF)
    return index >= 0 and bool(pa.types.is_timestamp(schema.field(index).type))


class BackgroundWriter:
    """Writes tables to a parquet writer on a thread of its own, so that encoding one batch
    overlaps reading and predicting the next (arrow releases the GIL while it encodes).
    At most ``depth`` tables wait; the first error is raised in the caller's thread."""

    def __init__(self, writer: pq.ParquetWriter, depth: int = 2) -> None:
        self._writer = writer
        self._queue: queue.Queue[pa.Table | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="parquet-writer", daemon=True)

    def __enter__(self) -> BackgroundWriter:
        self._thread.start()
        return self

    def _run(self) -> None:
        while (table := self._queue.get()) is not None:
            if self._error is None:  # after an error, drain without writing
                try:
                    self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    self._error = exc

    def write(self, table: pa.Table) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(table)

    def __exit__(self, *exc_info: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc_info[0] is None:
            raise self._error


#: A claim on an input not renewed for this long was left by a killed run. A live run
#: renews it every third of this (volume.renewing) however long the input takes (the
#: backlog Job's deadline is 7200 s), so this bounds only how long a killed run's input
#: waits: after a node restart, a few minutes of the every-minute schedule, not a quarter
#: of an hour. A claim broken under a live run (a renewal stalled two minutes, clocks two
#: minutes apart) costs work twice, never a mixed or a wrong file (the run that lost it
#: checks before it renames, and publishes nothing).
CLAIM_LEASE_S = 180
#: How often a long run writes its index of predicted inputs back, seconds.
INDEX_FLUSH_S = 30
#: Where a bad input of the incoming queue goes: beside the queue's folder.
REJECTED = "rejected"


@dataclass(frozen=True)
class Outcome:
    """What became of one input in an ``infer`` run."""

    kind: str
    """``predicted``, ``skipped`` (done by the current model), ``busy`` (another run is at
    it), ``not_ready`` (changed too recently), ``left`` (the run's budget was spent) or
    ``rejected`` (bad, set aside)."""
    rows: int = 0
    rejected: dict[str, Any] | None = None
    live: quality.Live | None = None
    """A predicted input's rows, predicted minutes, zone mixes and live error."""
    input: str | None = None
    """A predicted input, as the user named it."""
    input_mtime: str | None = None
    """A predicted input's modification time, ISO UTC."""
    fingerprint: dict[str, Any] | None = None
    """The input's fingerprint when the current model's predictions of it are in place."""


def infer(config: InferConfig) -> dict[str, Any]:
    """Predict the inputs the current model has not predicted yet, oldest first, within
    the run's budget; publish each input's predictions whole or not at all, and set aside
    the bad inputs of the incoming queue."""
    shards.check(config.shards, config.shard_index, None, needs_run_id=False)
    started = time.perf_counter()
    try:
        artifact = artifacts.load(config.artifacts)  # resolves CURRENT once for the whole run
    except NoModelYetError as exc:
        # A fresh install: the schedule starts before the first training. Not a failure.
        logger.warning("%s; nothing predicted until then", exc)
        # The folder looked in, also in `taxi-job runs`: a mistyped --artifacts or a wrong
        # claim otherwise looks like a fresh install forever.
        return {**_infer_summary(None, [], started, {}), "artifacts": str(config.artifacts)}
    out_dir = config.predictions or config.artifacts / PREDICTIONS
    sources = reading.resolve(config.input, allow_empty=True)
    sources = [s for s in sources if shards.owner(s.name, config.shards) == config.shard_index]
    keys = [predicted.output_key(s) for s in sources]
    if len(set(keys)) < len(keys):
        clash = next(k for k in keys if keys.count(k) > 1)
        raise BadInputError(
            f"{config.input}: several inputs would be predicted into {out_dir.joinpath(*clash)}"
        )
    folders = {queue: out_dir / queue for queue in sorted({queue for queue, _ in keys})}
    indexes: dict[str, predicted.Index] = {}
    with volume.writing("predictions", out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        volume.sweep(config.artifacts, out_dir)
        for queue, folder in folders.items():
            if folder.is_dir():  # made by the first input predicted into it
                volume.sweep(config.artifacts, folder)
            indexes[queue] = predicted.Index(folder, artifact.version)
    done: list[tuple[Path, Outcome, reading.Source]] = []
    todo: list[tuple[Path, reading.Source]] = []
    for source, (queue, name) in zip(sources, keys, strict=True):
        output = folders[queue] / name
        if not config.force and indexes[queue].done(source):
            done.append((output, Outcome("skipped"), source))
        else:
            todo.append((output, source))
    # Oldest first (by modification time, as ``oldest_waiting_seconds`` counts), so that
    # a run with a budget drains a backlog in the order it came.
    todo.sort(key=lambda pair: (pair[1].mtime_ns or 0, pair[1].path))
    flushed = time.perf_counter()
    attempted = 0
    try:
        for output, source in todo:
            if spent(config.budget_s, started) and attempted:
                outcome = Outcome("left")  # at least one input a run: a backlog always moves
            else:
                attempted += 1
                outcome = _infer_one(source, artifact, output, config.force, config.settle_s)
                if outcome.fingerprint is not None:
                    indexes[output.parent.name].record(source, outcome.fingerprint, output)
            done.append((output, outcome, source))
            if time.perf_counter() - flushed > INDEX_FLUSH_S:
                # A run killed at its deadline keeps most of what it recorded.
                for index in indexes.values():
                    index.flush()
                flushed = time.perf_counter()
    finally:
        for index in indexes.values():
            index.flush()
    not_ready = sum(o.kind == "not_ready" for _, o, _ in done)
    if not_ready:
        logger.info(
            "%d input(s) unreadable and changed less than %gs ago, maybe still being "
            "copied in: left for a later run",
            not_ready,
            config.settle_s,
        )
    left = sum(o.kind == "left" for _, o, _ in done)
    if left:
        logger.warning(
            "the run's budget of %gs is spent: %d input(s) left for the next run, oldest first",
            config.budget_s,
            left,
        )
    if not sources:
        logger.warning("%s: no input file; nothing to predict", config.input)
    summary = _infer_summary(
        artifact.version,
        [(output, outcome) for output, outcome, _ in done],
        started,
        artifact.metadata,
        _waiting(done, time.time_ns()),
    )
    rejected = summary["rejected"]
    if rejected:
        first = rejected[0]
        where = f"moved to {first['moved_to']}" if first["moved_to"] else "left in place"
        more = f" (and {len(rejected) - 1} more rejected)" if len(rejected) > 1 else ""
        raise InputsRejectedError(f"{first['error']}; {where}{more}", summary)
    return summary


def spent(budget_s: float | None, started: float) -> bool:
    return budget_s is not None and time.perf_counter() - started > budget_s


#: Outcomes that leave an input in its queue, not predicted by the current model.
WAITING = {"busy", "not_ready", "left"}


def _waiting(done: list[tuple[Path, Outcome, reading.Source]], now_ns: int) -> dict[str, Any]:
    """``inputs_waiting`` and ``oldest_waiting_seconds``: the inputs still in the queue
    without the current model's predictions (a rejected input left in place included),
    and the age of the oldest of them by modification time."""
    waiting = [
        s
        for _, o, s in done
        if o.kind in WAITING or (o.rejected is not None and o.rejected["moved_to"] is None)
    ]
    times = [t for t in (_mtime_ns(s) for s in waiting) if t is not None]
    return {
        "inputs_waiting": len(waiting),
        "oldest_waiting_seconds": round((now_ns - min(times)) / 1e9, 3) if times else None,
    }


def _mtime_ns(source: reading.Source) -> int | None:
    if source.mtime_ns is not None or not source.is_local:
        return source.mtime_ns
    try:
        return os.stat(source.path).st_mtime_ns
    except OSError:
        return None


def _iso_utc(ns: Any) -> str | None:
    """Nanoseconds since the epoch as ``2026-12-01T02:37:17.123456Z``; None when unknown."""
    if not isinstance(ns, int):
        return None
    stamp = datetime.fromtimestamp(ns / 1e9, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _infer_summary(
    version: str | None,
    outcomes: list[tuple[Path, Outcome]],
    started: float,
    metadata: dict[str, Any],
    waiting: dict[str, Any] | None = None,
) -> dict[str, Any]:
    def count(kind: str) -> int:
        return sum(o.kind == kind for _, o in outcomes)

    # The run's figures from the inputs' sums and counts, not from their averages.
    run = quality.Live()
    records = []
    for output, outcome in outcomes:
        if outcome.live is None:
            continue
        run.merge(outcome.live)
        fields = outcome.live.fields(metadata)
        records.append(
            {
                "input": outcome.input,
                "output": str(output),
                "rows": outcome.live.rows,
                "rows_scored": fields.pop("rows_scored"),
                "sse": outcome.live.sse,
                **fields,
                "predicted_sum": outcome.live.predicted_sum,
                "input_mtime": outcome.input_mtime,
            }
        )
    return {
        "model_version": version,
        "inputs_predicted": count("predicted"),
        "inputs_skipped": count("skipped"),
        "inputs_busy": count("busy"),
        "inputs_rejected": count("rejected"),
        "inputs_not_ready": count("not_ready"),
        **(waiting or {"inputs_waiting": 0, "oldest_waiting_seconds": None}),
        "rows_predicted": sum(o.rows for _, o in outcomes),
        "outputs": [str(output) for output, o in outcomes if o.kind == "predicted"],
        "rejected": [o.rejected for _, o in outcomes if o.rejected is not None],
        "waiting_for_model": version is None,
        **run.fields(metadata),
        # The model's own evaluation RMSE: what its live RMSE is held against (job.metrics).
        "model_rmse_eval": metadata.get("metrics", {}).get("rmse_eval"),
        "input_records": records,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _infer_one(
    source: reading.Source,
    artifact: artifacts.Artifact,
    output: Path,
    force: bool,
    settle_s: float,
) -> Outcome:
    """Predict one input into ``output`` unless the current model has done it or another
    run is at it. A bad input of the queue is set aside, unless it changed in the last
    ``settle_s`` (it may still be being copied in); one named by the user is raised."""
    problem: BadInputError | None = None
    parquet: pq.ParquetFile | None = None
    fingerprint: dict[str, Any] = {}
    try:
        parquet = reading.open_parquet(source)
        fingerprint = reading.fingerprint(source, parquet)
        if not force and _predicted_already(output, artifact.version, fingerprint):
            return Outcome("skipped", fingerprint=fingerprint)
    except BadInputError as exc:
        if not source.listed:
            raise
        if _changing(source, settle_s):
            return Outcome("not_ready")
        if not source.is_local:
            return Outcome("rejected", rejected=_reject(source, exc, artifact.version))
        problem = exc
    # Only now, with work to do, a claim: one run at a time predicts or rejects an input.
    with volume.writing("predictions", output.parent):
        output.parent.mkdir(exist_ok=True)
        claim = volume.try_claim(
            output, CLAIM_LEASE_S, purpose="infer", model_version=artifact.version
        )
    if claim is None:
        logger.info("%s: another run is at it; left to that run", source.uri)
        return Outcome("busy")
    try:
        if problem is None:
            assert parquet is not None
            if not force:
                predicted.migrate(output.parent.parent, source, output)
                # Another run may have published it between our first look and our claim.
                if _predicted_already(output, artifact.version, fingerprint):
                    return Outcome("skipped", fingerprint=fingerprint)
            predicted.check_not_taken(output, source)
            try:
                # Renewed while we predict, checked right before the rename: a run slower
                # than the lease keeps its input, and one taken over publishes nothing.
                with (
                    volume.renewing(claim),
                    volume.writing("predictions", output.parent),
                    volume.replacing(output, claim) as tmp,
                ):
                    work = functools.partial(
                        _predict_file, artifact=artifact, fingerprint=fingerprint, tmp=tmp
                    )
                    live = reading.whole_pass(source, parquet, work)
            except volume.ClaimLostError as exc:
                logger.warning("%s", exc)
                return Outcome("busy")
            except BadInputError as exc:
                if not source.listed:
                    raise
                if _changing(source, settle_s):
                    return Outcome("not_ready")
                problem = exc
            else:
                logger.info("predicted %s", source.uri, extra={"rows": live.rows})
                mtime = _iso_utc(fingerprint.get("mtime_ns"))
                return Outcome(
                    "predicted",
                    live.rows,
                    live=live,
                    input=source.uri,
                    input_mtime=mtime,
                    fingerprint=fingerprint,
                )
        if not os.path.lexists(source.path):
            # Another run set it aside (or a person removed it) after our first look.
            logger.info("%s: gone from the queue; nothing to do", source.uri)
            return Outcome("busy")
        return Outcome("rejected", rejected=_reject(source, problem, artifact.version))
    finally:
        volume.release(claim)


def _changing(source: reading.Source, settle_s: float) -> bool:
    """Whether an unreadable input of the queue changed in the last ``settle_s`` seconds,
    by its change time: a file being copied in (``cp``, ``kubectl cp``) has no parquet
    footer until its last bytes land, and ``cp -p`` or ``rsync -t`` set its modification
    time back, never its change time. Such a file is left for a later run, not set aside.
    A URL's object is published whole by its store: never "changing"."""
    if not source.is_local:
        return False
    try:
        ctime_ns = os.stat(source.path).st_ctime_ns
    except OSError:
        return False
    return time.time_ns() - ctime_ns < settle_s * 1e9


def _reject(source: reading.Source, problem: BadInputError, version: str) -> dict[str, Any]:
    """Set a bad input of the queue aside, never deleting it: rename it (on the same
    volume) into ``rejected/`` beside its folder, with ``<name>.json`` saying why. A URL,
    or a file that cannot be moved (a read-only input folder, ``rejected/`` on another
    filesystem), is left where it is: the next run reports it again."""
    record: dict[str, Any] = {"input": source.uri, "moved_to": None, "error": str(problem)}
    if not source.is_local:
        logger.warning("%s; left in place (an input given by URL is not moved)", problem)
        return record
    path = Path(source.path)
    folder = path.parent.parent / REJECTED
    if path.parent.name == REJECTED:
        # A queue over rejected/ itself: the file is set aside already. Renaming it
        # beside itself would only grow its name on every run.
        logger.warning("%s; left in place (in %s/ already)", problem, REJECTED)
        return record
    try:
        with volume.writing("a rejected input", folder):
            folder.mkdir(exist_ok=True)
            dest = folder / path.name
            if dest.exists():  # a file of this name was rejected before: keep both
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                dest = folder / f"{path.stem}.{stamp}-{os.urandom(3).hex()}{path.suffix}"
            os.rename(path, dest)
    except TaxiJobError as exc:
        logger.warning("%s; left in place: %s", problem, exc)
        return record
    note = {
        "input": source.uri,
        "error": str(problem),
        "rejected_at": volume.now_utc(),
        "model_version": version,
        "host": volume.holder(),
    }
    try:  # the file is set aside already: a note that cannot be written is only a warning
        with volume.writing("a rejected input's note", folder):
            volume.write_atomic(dest.with_name(dest.name + ".json"), json.dumps(note).encode())
    except TaxiJobError as exc:
        logger.warning("%s", exc)
    logger.warning("%s; moved to %s", problem, dest)
    return {**record, "moved_to": str(dest)}
