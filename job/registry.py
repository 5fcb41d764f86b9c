"""The model registry on the shared volume: which version is current, the promotion gate,
the promotion history, promoting an older version back (rollback), and retention.

Besides :mod:`job.artifacts`' layout it keeps one file::

    history.jsonl   one JSON object a line per change of CURRENT, appended, never rewritten

A version's status is derived, never stored twice: ``current`` (named by ``CURRENT``),
``previous`` (current once: in the history, or published before the gate existed, when
every training made its model current), ``rejected`` (its training's gate kept the
champion) or ``candidate`` (never current: ``train --promote never``, or a training killed
between writing the version and ``CURRENT``).

Every change (promote, prune, a training's publish) happens under the store's training
lock; readers (list, show, history) take no lock: versions are immutable and ``CURRENT``
is replaced atomically.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job import artifacts, volume
from job.errors import BadInputError, ModelUnavailableError, TransientError
from job.model import Model, PairStats, rmse

logger = logging.getLogger(__name__)

HISTORY = "history.jsonl"
#: ``train --promote``: compare with the champion, promote regardless, or only publish.
POLICIES = ("gate", "always", "never")
#: A version name as :func:`job.artifacts.publish` makes them (and nothing that could
#: leave the models folder).
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*$")


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on a challenger."""

    promote: bool
    reason: str


def decide(
    challenger: float, champion: float | None, tolerance: float, policy: str = "gate"
) -> Decision:
    """Whether a challenger with evaluation RMSE ``challenger`` replaces a champion with
    ``champion`` (None: there is none, or it cannot be read): only if it is at most
    ``tolerance`` (relative) worse, unless the policy says ``always`` or ``never``."""
    if policy == "always":
        return Decision(True, "--promote always")
    if policy == "never":
        return Decision(False, "--promote never: published as a candidate")
    if champion is None:
        return Decision(True, "no champion to compare with")
    bound = champion * (1 + tolerance)
    if challenger <= bound:
        return Decision(
            True, f"rmse_eval {challenger:.6g} <= champion's {champion:.6g} x (1 + {tolerance:g})"
        )
    return Decision(
        False, f"rmse_eval {challenger:.6g} > champion's {champion:.6g} x (1 + {tolerance:g})"
    )


def who() -> str:
    """``user@host`` of this process, for the history (in a pod: the uid, which has no name)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


# -- the history --------------------------------------------------------------------------


def read_history(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The promotion history, oldest first. A line that is not a JSON object (a write cut
    by a crash) is skipped with a warning: the rest still counts."""
    path = Path(root) / HISTORY
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("version"), str):
            logger.warning("%s:%d: not a history entry; skipped", path, number)
            continue
        entries.append(entry)
    return entries


#: The columns of a history entry as ``models history`` and the report show them.
HISTORY_COLUMNS = ("time", "cause", "version", "previous_version", "by", "reason")


def history_row(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """A history entry's :data:`HISTORY_COLUMNS`, ``None`` for those it lacks."""
    return tuple(entry.get(key) for key in HISTORY_COLUMNS)


def _append_history(root: Path, entry: Mapping[str, Any]) -> None:
    """Append one line with one ``write`` to a file opened for appending, then sync: a
    crash leaves at worst a cut last line, which :func:`read_history` skips."""
    line = (json.dumps(dict(entry), default=str) + "\n").encode()
    with volume.writing("the promotion history"):
        fd = os.open(root / HISTORY, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o664)
        try:
            # A line cut by a crash before this one would swallow it: start on a new line.
            if os.fstat(fd).st_size and os.pread(fd, 1, os.fstat(fd).st_size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def make_current(
    root: Path,
    version: str,
    *,
    cause: str,
    reason: str | None,
    by: str,
    scores: Mapping[str, float | None],
) -> dict[str, Any]:
    """Point ``CURRENT`` at ``version`` and record it in the history; return the entry.
    Call it while holding the training lock. ``CURRENT`` first: it is what readers act
    on, and the history only describes it."""
    previous = _current_or_none(root)
    artifacts.set_current(root, version)
    entry = {
        "time": volume.now_utc(),
        "version": version,
        "previous_version": previous,
        "cause": cause,
        "reason": reason,
        "by": by,
        **scores,
    }
    try:
        _append_history(root, entry)
    except TransientError as exc:
        # CURRENT has changed: failing now would report a run whose model infer already
        # uses as failed, and its Job would train and publish again. The history only
        # describes CURRENT; a full volume loses one line of it, loudly.
        logger.warning("%s is current, but not in the history: %s", version, exc)
    logger.info(
        "%s is current (was %s; %s)",
        version,
        previous,
        cause,
        extra={"model_version": version, "previous_version": previous, "cause": cause},
    )
    return entry


def _current_or_none(root: Path) -> str | None:
    try:
        return artifacts.current_version(root)
    except ModelUnavailableError:
        return None


# -- versions and their status ------------------------------------------------------------


def existing_store(root: str | os.PathLike[str]) -> Path:
    """``root`` if it is a folder; a usage error (exit 2) naming it, else: a mistyped
    ``--artifacts`` must not read as a store with no versions and no history."""
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(f"{root}: no such artifacts folder (check --artifacts)")
    return root


def check_version(root: Path, version: str) -> str:
    """``version`` if it names a published version (``current``: the current one); a usage
    error (exit 2) naming the versions there are, else."""
    if version == "current":
        return artifacts.current_version(root)
    if not _VERSION.match(version) or not (root / artifacts.MODELS / version).is_dir():
        known = artifacts.versions(root)
        hint = f"newest: {known[-1]}" if known else "there is none yet"
        raise BadInputError(
            f"{root / artifacts.MODELS}: no model version {version!r} "
            f"({hint}; `taxi-job models list`, on a cluster `taxi-job launch models list`, "
            "shows them all)"
        )
    return version


def status(
    version: str,
    metadata: Mapping[str, Any] | None,
    current: str | None,
    was_current: set[str],
) -> str:
    """``current``, ``previous``, ``rejected`` or ``candidate`` (see the module's doc)."""
    if version == current:
        return "current"
    gate = (metadata or {}).get("gate")
    if version in was_current or (metadata is not None and gate is None):
        return "previous"  # no gate: published before the gate, when every model went live
    if isinstance(gate, dict) and gate.get("policy") == "gate" and not gate.get("promoted"):
        return "rejected"
    return "candidate"


def _was_current(history: Sequence[Mapping[str, Any]]) -> set[str]:
    return {e["version"] for e in history} | {
        e["previous_version"] for e in history if isinstance(e.get("previous_version"), str)
    }


def _entry(
    version: str, artifact: artifacts.Artifact | None, problem: str | None, state: str
) -> dict[str, Any]:
    meta = artifact.metadata if artifact is not None else {}
    metrics = meta.get("metrics") or {}
    gate = meta.get("gate") or {}
    inputs = meta.get("inputs") or {}
    return {
        "version": version,
        "status": state,
        "created": meta.get("created"),
        "rmse_train": metrics.get("rmse_train"),
        "rmse_eval": metrics.get("rmse_eval"),
        "rmse_eval_champion": gate.get("rmse_eval_champion"),
        "rows": metrics.get("rows_kept"),
        "train_inputs": [f.get("uri") for f in inputs.get("train") or []],
        "verified": artifact is not None,
        **({"problem": problem} if problem else {}),
    }


def list_versions(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every version, newest first, with its status and scores. A version that fails its
    checksum is listed (``verified: false`` and the problem), not hidden."""
    root = existing_store(root)
    current = _current_or_none(root)
    was_current = _was_current(read_history(root))
    listed = []
    for version in reversed(artifacts.versions(root)):
        artifact, problem = None, None
        try:
            artifact = artifacts.load(root, version)
        except ModelUnavailableError as exc:
            if not (root / artifacts.MODELS / version).is_dir():
                continue  # pruned while we looked
            problem = str(exc)
        metadata = artifact.metadata if artifact is not None else None
        state = status(version, metadata, current, was_current)
        listed.append(_entry(version, artifact, problem, state))
    return listed


def show(root: str | os.PathLike[str], version: str) -> dict[str, Any]:
    """A verified version's whole metadata (all but its weights), with its status."""
    root = existing_store(root)
    version = check_version(root, version)
    artifact = artifacts.load(root, version)
    state = status(
        version, artifact.metadata, _current_or_none(root), _was_current(read_history(root))
    )
    return {"status": state, "path": str(artifact.path), **artifact.metadata}


def _rmse_eval(artifact: artifacts.Artifact | None) -> float | None:
    if artifact is None:
        return None
    value = (artifact.metadata.get("metrics") or {}).get("rmse_eval")
    return float(value) if isinstance(value, int | float) else None


def promote(
    root: Path,
    version: str,
    *,
    reason: str | None = None,
    by: str | None = None,
    lock_timeout: float = 0.0,
) -> dict[str, Any]:
    """Make an existing, verified version current (a rollback when it is older than the
    current one), under the training lock, and record it; return the history entry."""
    version = check_version(root, version)
    with artifacts.training_lock(root, lock_timeout, "models promote"):
        artifact = artifacts.load(root, version)  # verified now, under the lock
        current = _current_or_none(root)
        if current == version:
            logger.info("%s is current already; nothing to do", version)
            return {"version": version, "previous_version": current, "changed": False}
        champion = None
        if current is not None:
            try:
                champion = artifacts.load(root, current)
            except ModelUnavailableError as exc:
                logger.warning("the current version cannot be read: %s", exc)
        cause = "rollback" if current is not None and version < current else "promote"
        entry = make_current(
            root,
            version,
            cause=cause,
            reason=reason,
            by=by or who(),
            scores={
                "rmse_eval": _rmse_eval(artifact),
                "rmse_eval_previous": _rmse_eval(champion),
            },
        )
    return {**entry, "changed": True}


# -- retention ----------------------------------------------------------------------------


def protected(root: Path) -> set[str]:
    """The versions retention never deletes: the current one and the one it replaced last
    (the rollback target). Without a history entry for the current version (a store from
    before the history), the newest version older than it stands in for the latter."""
    current = _current_or_none(root)
    if current is None:
        return set()
    keep = {current}
    history = read_history(root)
    last = next((e for e in reversed(history) if e["version"] == current), None)
    if last is not None:
        if isinstance(last.get("previous_version"), str):
            keep.add(last["previous_version"])
    else:
        older = [v for v in artifacts.versions(root) if v < current]
        keep.update(older[-1:])
    return keep


def prune_locked(root: Path, keep: int) -> list[str]:
    """Delete the versions beyond the newest ``keep``, except :func:`protected` ones; return
    them, oldest first. Call it while holding the training lock.

    Each version is renamed to a hidden temporary name first, then deleted: a prune killed
    half-way leaves a hidden folder (removed by the next holder of the lock), never a
    version with files missing."""
    if keep < 1:
        raise BadInputError(f"--keep {keep}: must keep at least 1 version")
    known = artifacts.versions(root)
    spare = protected(root)
    doomed = [v for v in known[: max(len(known) - keep, 0)] if v not in spare]
    models = root / artifacts.MODELS
    with volume.writing("the models folder"):
        for version in doomed:
            hidden = volume.temporary_dir(models / f"pruned-{version}")
            os.rename(models / version, hidden)  # replaces the empty folder reserved for it
            volume.fsync_dir(models)
            shutil.rmtree(hidden)
            logger.info("pruned %s", version, extra={"model_version": version})
    return doomed


def prune(root: Path, keep: int, lock_timeout: float = 0.0) -> dict[str, Any]:
    """:func:`prune_locked` under the training lock."""
    existing_store(root)
    if not (root / artifacts.MODELS).is_dir():
        return {"pruned": [], "kept": []}
    with artifacts.training_lock(root, lock_timeout, "models prune"):
        pruned = prune_locked(root, keep)
        kept = list(reversed(artifacts.versions(root)))
    return {"pruned": pruned, "kept": kept}


# -- the gate, for train ------------------------------------------------------------------


def finish_interrupted(root: Path, version: str) -> dict[str, Any] | None:
    """Make ``version`` current if its training was killed after writing it and before
    switching ``CURRENT`` (a sharded run's retried reducer finds it by its run id): only
    when its gate promoted it and the champion it beat is still current, so that a
    training or promotion made since then is not undone. Return the history entry, or
    None. Call it while holding the training lock."""
    try:
        artifact = artifacts.load(root, version)
    except ModelUnavailableError as exc:
        logger.warning("cannot finish publishing %s: %s", version, exc)
        return None
    gate = artifact.metadata.get("gate") or {}
    current = _current_or_none(root)
    if not gate.get("promoted") or current == version or current != gate.get("champion_version"):
        return None
    logger.warning("%s passed its gate; its training was killed before making it current", version)
    return make_current(
        root,
        version,
        cause="train",
        reason=f"{gate.get('reason')} (finished by a retry of the interrupted training)",
        by=who(),
        scores={
            "rmse_eval": _rmse_eval(artifact),
            "rmse_eval_previous": gate.get("rmse_eval_champion"),
        },
    )


def champion(root: Path) -> artifacts.Artifact | None:
    """The current model, or None when there is none or it fails verification (then the
    challenger is promoted: a fresh training is the cure for a damaged current model)."""
    try:
        return artifacts.load(root)
    except ModelUnavailableError as exc:
        if (root / artifacts.CURRENT).exists():
            logger.warning("the current model cannot be used as the champion: %s", exc)
        return None


def publish_trained(
    root: Path,
    model: Model,
    metadata: dict[str, Any],
    evaluation: PairStats,
    *,
    policy: str,
    tolerance: float,
    keep: int,
) -> dict[str, Any]:
    """The promotion gate: score the champion on the evaluation rows the challenger was
    scored on (their pair statistics: no second read), publish the challenger, make it
    current if it is no more than ``tolerance`` worse (or by ``policy``), prune to
    ``keep`` versions. Call it while holding the training lock; returns the summary's
    fields."""
    challenger_rmse = float(metadata["metrics"]["rmse_eval"])
    best = champion(root)
    champion_rmse = rmse(best.model, evaluation) if best is not None else None
    decision = decide(challenger_rmse, champion_rmse, tolerance, policy)
    gate = {
        "policy": policy,
        "tolerance": tolerance,
        "champion_version": best.version if best is not None else None,
        "rmse_eval_champion": champion_rmse,
        "promoted": decision.promote,
        "reason": decision.reason,
    }
    version = artifacts.publish(root, model, {**metadata, "gate": gate}, make_current=False)
    if decision.promote:
        make_current(
            root,
            version,
            cause="train",
            reason=decision.reason,
            by=who(),
            scores={"rmse_eval": challenger_rmse, "rmse_eval_previous": champion_rmse},
        )
    elif policy == "gate":
        logger.warning(
            "challenger %s rejected, %s stays current: %s",
            version,
            gate["champion_version"],
            decision.reason,
            extra={"model_version": version, "promoted": False},
        )
    pruned = prune_locked(root, keep)
    if policy != "gate":
        verdict = f"--promote {policy}"
    elif champion_rmse is None:
        verdict = "no champion"
    else:
        verdict = "passed" if decision.promote else "rejected"
    return {
        "promoted": decision.promote,
        "gate": verdict,
        "champion_version": gate["champion_version"],
        "rmse_eval_champion": champion_rmse,
        "current_version": _current_or_none(root),
        "pruned": pruned,
        "version": version,
    }
