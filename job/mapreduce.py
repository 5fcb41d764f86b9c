"""Training as a map-reduce over the shards of an Indexed Job, with the one-process result.

The model's normal equations need only per-zone-pair counts, sums and sums of squares,
which add up exactly over any split of the rows. So each shard (map) streams its share
(:func:`shards.assign`) into those and writes them to the volume; the shard that finds
every partial there claims the reduce (exactly one), merges them in shard order (the same
float sums whichever shard reduces), then fits, scores and publishes through the same
:func:`pipeline.finish` as a one-process training, under the training lock.

A shard may run again (an Indexed Job's retry, a node lost, a duplicate): its partial is
reused when the inputs are unchanged, a run publishes at most once (``PUBLISHED``, and the
run id in the model's metadata, checked under the lock), and a killed reducer's index is
retried by the Job and takes its own claim over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job import artifacts, reading, registry, shards, volume
from job.errors import BadInputError, TaxiJobError, TransientError
from job.model import Model, PairAccumulator, fit
from job.pipeline import (
    Aggregate,
    TrainConfig,
    aggregate_parts,
    check_options,
    finish,
    require_trips,
)

logger = logging.getLogger(__name__)

#: One shard's statistics of its share, per role ("train", "eval").
Parts = dict[str, Aggregate]


@dataclass(frozen=True)
class Plan:
    """What every shard of a run reads, worked out alike by each from the files' footers."""

    sources: dict[str, list[reading.Source]]
    fingerprints: dict[str, list[dict[str, Any]]]
    parts: list[dict[str, list[shards.Part]]]
    digest: str
    """Of the options and the inputs' fingerprints: partials of another plan are read anew."""
    options: dict[str, Any]
    """What every shard of a run must be given alike (:func:`run_options`)."""


def run_options(config: TrainConfig) -> dict[str, Any]:
    """The options that decide a run's model: every shard of one run id must agree on them,
    and a run id that published may not be reused with others (either would leave the
    model to whichever shard or run came last)."""
    return {
        "train_data": str(config.train_data),
        "eval_data": str(config.eval_data),
        "min_duration": config.min_duration,
        "max_duration": config.max_duration,
        "shards": config.shards,
    }


def _check_same(config: TrainConfig, options: dict[str, Any], seen: Any, where: str) -> None:
    """Refuse (exit 2) when ``seen`` (the options a shard or the published run of this run
    id recorded) differs from ``options``, naming the run id and the first option."""
    if not isinstance(seen, dict):
        return  # written before options were recorded
    for key, value in options.items():
        if key in seen and seen[key] != value:
            raise BadInputError(
                f"run id {config.run_id}: {where} --{key.replace('_', '-')} {seen[key]}, "
                f"this shard {value}; every shard of a run needs the same options and "
                "inputs, and a new training a new --run-id"
            )


def plan(config: TrainConfig) -> Plan:
    """Resolve and check every input (so a bad file fails every shard alike), and assign
    their files or row groups to the shards."""
    sources: dict[str, list[reading.Source]] = {}
    fingerprints: dict[str, list[dict[str, Any]]] = {}
    groups: dict[str, list[list[int]]] = {}
    for role, uri in (("train", config.train_data), ("eval", config.eval_data)):
        sources[role] = reading.resolve(uri)
        fingerprints[role], groups[role] = [], []
        for source in sources[role]:
            parquet = reading.open_parquet(source)
            reading.check_schema(source, parquet.schema_arrow, reading.TRAIN_COLUMNS)
            if parquet.metadata.num_rows == 0:
                raise BadInputError(f"{source.uri}: the file has no rows")
            fingerprints[role].append(reading.fingerprint(source, parquet))
            meta = parquet.metadata
            groups[role].append([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    loads = [0] * config.shards
    by_role = {role: shards.assign(groups[role], config.shards, loads) for role in shards.ROLES}
    parts = [{role: by_role[role][k] for role in shards.ROLES} for k in range(config.shards)]
    identity = {
        "shards": config.shards,
        "min_duration": config.min_duration,
        "max_duration": config.max_duration,
        "inputs": fingerprints,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return Plan(sources, fingerprints, parts, digest, run_options(config))


def _map(config: TrainConfig, the_plan: Plan, shard: int, path: Path) -> Parts:
    """Read shard ``shard``'s share and write its partial statistics to ``path``."""
    low, high = config.min_duration, config.max_duration
    result = {
        role: aggregate_parts(
            the_plan.sources[role], the_plan.parts[shard][role], low, high, f"{role} shard {shard}"
        )
        for role in shards.ROLES
    }
    header = {
        "run_id": config.run_id,
        "shard": shard,
        "shards": config.shards,
        "plan": the_plan.digest,
        "options": the_plan.options,
        **{
            role: {"rows_read": result[role].rows_read, "rows_kept": result[role].rows_kept}
            for role in shards.ROLES
        },
    }
    with volume.writing("partial statistics"):
        shards.write_partial(path, header, {role: result[role].stats for role in shards.ROLES})
    return result


def _reuse(config: TrainConfig, the_plan: Plan, folder: Path, shard: int) -> Parts | None:
    """Shard ``shard``'s partial of this plan from ``folder``; None when it is missing,
    damaged or written for other inputs (then the share is read again)."""
    path = shards.partial_path(folder, shard, config.shards)
    if not path.exists():
        return None
    try:
        header, stats = shards.read_partial(path)
    except shards.PartialError as exc:
        logger.warning("%s; reading that share again", exc)
        return None
    if header.get("plan") != the_plan.digest or header.get("shard") != shard:
        logger.warning("%s: written for other inputs or options; reading them again", path)
        return None
    return {
        role: Aggregate(stats[role], header[role]["rows_read"], header[role]["rows_kept"], [])
        for role in shards.ROLES
    }


def _partial(config: TrainConfig, the_plan: Plan, folder: Path, shard: int) -> Parts:
    """Shard ``shard``'s partial statistics: the ones on the volume, or read afresh."""
    found = _reuse(config, the_plan, folder, shard)
    if found is not None:
        return found
    return _map(config, the_plan, shard, shards.partial_path(folder, shard, config.shards))


def _merge(parts: list[Parts], role: str, fingerprints: list[Any]) -> Aggregate:
    """The statistics of all shards, added in shard order: the same floating-point sums
    whichever shard reduces and however often any ran."""
    accumulator = PairAccumulator()
    for part in parts:
        accumulator.add_stats(part[role].stats)
    return Aggregate(
        accumulator.result(),
        sum(p[role].rows_read for p in parts),
        sum(p[role].rows_kept for p in parts),
        fingerprints,
    )


def _with_records(
    config: TrainConfig, the_plan: Plan, evaluation: Aggregate, model: Model
) -> Aggregate:
    """``evaluation`` with ``model``'s records of its rows. They need a prediction per row,
    and the shards read their share before any model existed: so the reducer reads the
    evaluation month once more, whole, in the one-process order (the same records, to the
    last bit). Its pair statistics, for the gate, stay the shards' merged ones."""
    sources = the_plan.sources["eval"]
    again = aggregate_parts(
        sources,
        [(k, None) for k in range(len(sources))],
        config.min_duration,
        config.max_duration,
        "evaluation records",
        model,
    )
    if again.fingerprints != the_plan.fingerprints["eval"]:
        raise TransientError(
            f"{config.eval_data}: changed while the training read it; reading it again "
            "on the next attempt"
        )
    return dataclasses.replace(evaluation, records=again.records)


def _published_version(root: Path, run_id: str) -> str | None:
    """A model version this run published already (the reducer died before ``PUBLISHED``),
    read through the store's checked load: a damaged version does not count."""
    for version in reversed(artifacts.versions(root)):
        try:
            metadata = artifacts.load(root, version).metadata
        except TaxiJobError:
            continue
        if metadata.get("run_id") == run_id:
            return version
    return None


def _check_partners(config: TrainConfig, the_plan: Plan, folder: Path) -> None:
    """Refuse (exit 2) when a shard of this run wrote its partial with other options."""
    for k in range(config.shards):
        if k == config.shard_index:
            continue
        try:
            header, _ = shards.read_partial(shards.partial_path(folder, k, config.shards))
        except shards.PartialError:
            continue  # not there (yet), or damaged: the reducer reads that share again
        _check_same(config, the_plan.options, header.get("options"), f"shard {k} ran with")


def train_shard(config: TrainConfig) -> dict[str, Any]:
    """Read this shard's share of the inputs into partial statistics; when every shard's
    are there, claim the reduce and, if this shard wins, fit, score and publish."""
    check_options(config)
    shards.check(config.shards, config.shard_index, config.run_id, needs_run_id=True)
    assert config.run_id is not None
    started = time.perf_counter()
    shard, count = config.shard_index, config.shards
    identity = {"run_id": config.run_id, "shard": shard, "shards": count}
    folder = shards.run_dir(config.artifacts, config.run_id)
    with volume.writing("partial statistics"):
        folder.mkdir(parents=True, exist_ok=True)
    done = shards.published(folder)
    if done is not None:
        version = done.get("model_version")
        _check_same(config, run_options(config), done.get("options"), f"published {version} with")
        if "plan" in done and done["plan"] != plan(config).digest:
            raise BadInputError(
                f"run id {config.run_id}: published {version} already, from inputs that "
                f"have changed since ({config.train_data}, {config.eval_data}); a new "
                "training needs a new --run-id"
            )
        logger.info("run %s published %s already; nothing to do", config.run_id, done)
        with volume.writing("partial statistics"):  # a late duplicate's, if any
            shards.remove_partials(folder)
        return {**identity, "published_already": done.get("model_version"), "seconds": 0.0}

    the_plan = plan(config)
    mine = _partial(config, the_plan, folder, shard)
    done = shards.published(folder)
    if done is not None:  # a late duplicate: the run was published while this shard read
        logger.info("run %s published %s meanwhile; nothing to do", config.run_id, done)
        with volume.writing("partial statistics"):
            shards.remove_partials(folder)
        return {**identity, "published_already": done.get("model_version"), "seconds": 0.0}
    # After writing ours: of two shards that disagree, the later to write sees the other.
    _check_partners(config, the_plan, folder)
    summary: dict[str, Any] = {
        **identity,
        "rows_read": mine["train"].rows_read,
        "rows_kept": mine["train"].rows_kept,
        "eval_rows_read": mine["eval"].rows_read,
        "eval_rows_kept": mine["eval"].rows_kept,
    }
    missing = shards.missing(folder, count)
    if missing:
        # Not an error: a later shard reduces. But if none comes (a Job that runs fewer
        # pods than --shards), nothing is published: say so where it can be seen.
        logger.warning(
            "shard %d of %d done; shard(s) %s not done yet: the last of them to finish "
            "reduces; if they never run, run %s publishes nothing",
            shard,
            count,
            missing,
            config.run_id,
        )
        return {
            **summary,
            "reducer": None,
            "missing_shards": missing,
            "seconds": round(time.perf_counter() - started, 3),
        }
    with volume.writing("the reduce claim"):
        holder, claim = shards.claim(folder, shard)
    if holder != shard:
        logger.info("shard %d done; shard %d reduces", shard, holder)
        return {**summary, "reducer": holder, "seconds": round(time.perf_counter() - started, 3)}
    reduce_started = time.perf_counter()
    renewal = volume.renewing(claim) if claim is not None else contextlib.nullcontext()
    with renewal, artifacts.training_lock(config.artifacts, config.lock_timeout, "a reduce"):
        done = shards.published(folder)
        version = (
            done["model_version"] if done else _published_version(config.artifacts, config.run_id)
        )
        if version is None:
            # Publishing now: only while the reduce is still ours (a run that published
            # meanwhile removed the claim with its partials: nothing to check then).
            if claim is not None:
                claim.check(f"run {config.run_id}'s model")
            parts = [
                mine if k == shard else _partial(config, the_plan, folder, k) for k in range(count)
            ]
            merged = {
                role: _merge(parts, role, the_plan.fingerprints[role]) for role in shards.ROLES
            }
            low, high = config.min_duration, config.max_duration
            require_trips(merged["train"], config.train_data, low, high, "training")
            require_trips(merged["eval"], config.eval_data, low, high, "evaluation")
            model = fit(merged["train"].stats)
            evaluation = _with_records(config, the_plan, merged["eval"], model)
            extra = {"run_id": config.run_id, "shards": count}
            summary = {
                **identity,
                **finish(config, merged["train"], evaluation, extra, model=model),
            }
            version = summary["model_version"]
        else:
            logger.warning(
                "run %s published %s already; not publishing again", config.run_id, version
            )
            # A reducer killed between writing the version and switching CURRENT left
            # a model that passed its gate but serves nothing: finish the switch.
            registry.finish_interrupted(config.artifacts, version)
            summary = {**summary, "published_already": version}
        with volume.writing("partial statistics"):
            shards.mark_published(
                folder,
                {
                    "model_version": version,
                    "run_id": config.run_id,
                    "plan": the_plan.digest,
                    "options": the_plan.options,
                },
            )
            shards.remove_partials(folder)
    return {
        **summary,
        "reducer": shard,
        "reduce_seconds": round(time.perf_counter() - reduce_started, 3),
        "seconds": round(time.perf_counter() - started, 3),
    }
