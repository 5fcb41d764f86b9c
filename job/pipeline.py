"""``taxi-job train``: fit a model on the training trips, score it on the evaluation month,
publish it and make it current if it passes the promotion gate.

Data flows one way: ``reading`` streams columns, ``model`` turns them into a fit,
``registry`` and ``artifacts`` store the result. A model is published only after every
input has been read and checked. Inference lives in :mod:`job.inference`.
"""

from __future__ import annotations

import functools
import logging
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from job import __version__, artifacts, quality, reading, registry, shards, volume
from job.errors import BadInputError
from job.model import Model, PairAccumulator, PairStats, fit, rmse
from job.quality import bounds_us

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """What ``taxi-job train`` needs."""

    train_data: str
    """Training trips: a parquet file, a directory of them, or a glob (local or URL)."""
    eval_data: str
    """Evaluation trips (the next month), in the same forms."""
    artifacts: Path
    """The artifacts folder (the shared volume)."""
    min_duration: float = 1.0
    """Shortest trip kept, minutes (inclusive)."""
    max_duration: float = 60.0
    """Longest trip kept, minutes (inclusive)."""
    lock_timeout: float = 0.0
    """Seconds to wait for another training's lock before failing."""
    promote: str = "gate"
    """``gate``: make the new model current only if it scores no worse than the current one
    (within ``promotion_tolerance``); ``always``; ``never`` (publish it as a candidate)."""
    promotion_tolerance: float = 0.01
    """How much worse (relative evaluation RMSE) the new model may be and still be promoted."""
    keep_versions: int = 20
    """Versions kept after publishing (besides the current one and the one it replaced)."""
    shards: int = 1
    """How many processes share the reading (see :mod:`job.shards`); 1: this one reads all."""
    shard_index: int = 0
    """Which share this process reads, from 0 to ``shards - 1``."""
    run_id: str | None = None
    """The training all shards belong to: names the folder of their partial statistics."""


@dataclass(frozen=True)
class Aggregate:
    """Pair statistics of the kept rows of some sources, and what was read."""

    stats: PairStats
    rows_read: int
    rows_kept: int
    fingerprints: list[dict[str, Any]]
    records: quality.EvaluationRecords | None = None
    """The errors of a model on these rows, when it was given (the evaluation month)."""


def aggregate(
    uri: str, low: float, high: float, role: str, model: Model | None = None
) -> Aggregate:
    """Stream every file of a source into pair statistics of the trips lasting from ``low``
    to ``high`` minutes (and ``model``'s evaluation records of them, when given); raise
    ``BadInputError`` when no trip is left."""
    sources = reading.resolve(uri)
    every = [(k, None) for k in range(len(sources))]
    result = aggregate_parts(sources, every, low, high, role, model)
    require_trips(result, uri, low, high, role)
    return result


def aggregate_parts(
    sources: Sequence[reading.Source],
    parts: Sequence[shards.Part],
    low: float,
    high: float,
    role: str,
    model: Model | None = None,
) -> Aggregate:
    """Pair statistics of the trips lasting ``low`` to ``high`` minutes in ``parts`` of
    ``sources`` (all of a source, or one shard's share of it), and ``model``'s evaluation
    records of them when given."""
    accumulator = PairAccumulator()
    records = quality.EvaluationRecords(model) if model is not None else None
    bounds = bounds_us(low, high)
    rows_read = rows_kept = 0
    fingerprints = []
    for index, row_groups in parts:
        source = sources[index]
        parquet = reading.open_parquet(source)
        fingerprints.append(reading.fingerprint(source, parquet))
        work = functools.partial(_aggregate_file, bounds=bounds, row_groups=row_groups, model=model)
        part, part_records, read, kept = reading.whole_pass(source, parquet, work)
        accumulator.merge(part)
        if records is not None and part_records is not None:
            records.merge(part_records)
        rows_read += read
        rows_kept += kept
        logger.info("read %s", source.uri, extra={"role": role, "rows_read": rows_read})
    return Aggregate(accumulator.result(), rows_read, rows_kept, fingerprints, records)


def require_trips(result: Aggregate, uri: str, low: float, high: float, role: str) -> None:
    """Raise ``BadInputError`` when no trip of ``uri`` was kept."""
    if result.rows_kept == 0:
        raise BadInputError(
            f"{uri}: no {role} trip lasts between {low:g} and {high:g} minutes "
            f"({result.rows_read} rows read)"
        )


def _aggregate_file(
    source: reading.Source,
    parquet: pq.ParquetFile,
    bounds: tuple[int, int],
    row_groups: Sequence[int] | None = None,
    model: Model | None = None,
) -> tuple[PairAccumulator, quality.EvaluationRecords | None, int, int]:
    """One file's (or some of its row groups') pair statistics of the trips lasting
    ``bounds`` microseconds (and ``model``'s records of them), and its rows read and kept."""
    accumulator = PairAccumulator()
    records = quality.EvaluationRecords(model) if model is not None else None
    rows_read = rows_kept = 0
    batches = reading.iter_batches(source, reading.TRAIN_COLUMNS, parquet, row_groups=row_groups)
    for batch in batches:
        assert batch.dropoff_us is not None
        duration = batch.dropoff_us - batch.pickup_us
        keep = quality.scored(duration, batch.times_valid, bounds)
        minutes = duration[keep] / 60e6
        accumulator.add(batch.pu, batch.do, minutes, keep)
        if records is not None:
            records.add(records.model.predict(batch.pu, batch.do)[keep], minutes)
        rows_read += duration.size
        rows_kept += int(np.count_nonzero(keep))
    return accumulator, records, rows_read, rows_kept


def check_options(config: TrainConfig) -> None:
    """Raise ``BadInputError`` for bad duration bounds or promotion options."""
    for name, value in (
        ("--min-duration", config.min_duration),
        ("--max-duration", config.max_duration),
    ):
        if not math.isfinite(value):
            raise BadInputError(f"{name} {value}: must be a finite number of minutes")
    if not config.min_duration < config.max_duration:
        raise BadInputError(
            f"--min-duration {config.min_duration:g} must be below "
            f"--max-duration {config.max_duration:g}"
        )
    if not (math.isfinite(config.promotion_tolerance) and config.promotion_tolerance >= 0):
        raise BadInputError(
            f"--promotion-tolerance {config.promotion_tolerance}: must be a finite number >= 0"
        )
    if config.keep_versions < 1:  # checked before the training: prune runs after publishing
        raise BadInputError(f"--keep-versions {config.keep_versions}: must keep at least 1")
    if config.promote not in registry.POLICIES:
        raise BadInputError(
            f"--promote {config.promote}: must be one of {', '.join(registry.POLICIES)}"
        )


def train(config: TrainConfig) -> dict[str, Any]:
    """Fit on the training data, evaluate on the evaluation data, publish, and make the new
    model current if it passes the promotion gate; return the summary."""
    check_options(config)
    shards.check(config.shards, config.shard_index, config.run_id, needs_run_id=False)
    started = time.perf_counter()
    low, high = config.min_duration, config.max_duration
    # The lock covers the whole run: a second training fails (or waits) at once instead
    # of reading everything first, and two never publish over each other.
    with artifacts.training_lock(config.artifacts, config.lock_timeout):
        # The model is fit before the evaluation month is read, so that one pass over it
        # gives both its pair statistics (the gate scores the champion from them) and the
        # new model's records of its errors, which need a prediction per row. (Reading
        # both months at once in two threads was measured: no faster, numpy holds the GIL.)
        training = aggregate(config.train_data, low, high, "training")
        model = fit(training.stats)
        evaluation = aggregate(config.eval_data, low, high, "evaluation", model)
        summary = finish(config, training, evaluation, model=model)
    return {**summary, "seconds": round(time.perf_counter() - started, 3)}


def score(model: Model, training: Aggregate, evaluation: Aggregate) -> dict[str, Any]:
    """The metrics a model version records: RMSEs, rows, features."""
    return {
        "rmse_train": rmse(model, training.stats),
        "rmse_eval": rmse(model, evaluation.stats),
        "rows_read": training.rows_read,
        "rows_kept": training.rows_kept,
        "eval_rows_read": evaluation.rows_read,
        "eval_rows_kept": evaluation.rows_kept,
        "features": model.features,
    }


def finish(
    config: TrainConfig,
    training: Aggregate,
    evaluation: Aggregate,
    extra: dict[str, Any] | None = None,
    *,
    model: Model,
) -> dict[str, Any]:
    """Score ``model`` (fit on ``training``) on both, publish it with ``extra`` and its
    records in its metadata, and make it current if it passes the promotion gate; return
    the summary. The one-process training and the reducing shard of a sharded one both end
    here; call it while holding :func:`artifacts.training_lock`. ``evaluation`` must hold
    the model's records of the evaluation rows."""
    assert evaluation.records is not None and evaluation.records.model is model
    metrics = score(model, training, evaluation)
    created = volume.now_utc()
    metadata = {
        "created": created,
        "package_version": __version__,
        "python": platform.python_version(),
        "min_duration": config.min_duration,
        "max_duration": config.max_duration,
        "metrics": metrics,
        "inputs": {"train": training.fingerprints, "eval": evaluation.fingerprints},
        "training_mix": quality.training_mix(training.stats),
        "training_predicted_histogram": quality.predicted_histogram(model, training.stats),
        "evaluation_records": evaluation.records.record(evaluation.stats),
        **(extra or {}),
    }
    gate = registry.publish_trained(
        config.artifacts,
        model,
        metadata,
        evaluation.stats,
        policy=config.promote,
        tolerance=config.promotion_tolerance,
        keep=config.keep_versions,
    )
    return {
        "model_version": gate.pop("version"),
        "model_created": created,
        **metrics,
        **gate,
        "artifacts": str(config.artifacts),
    }
