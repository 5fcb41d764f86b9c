"""The artifact store on the shared volume: immutable model versions and a ``CURRENT`` pointer.

Layout of the artifacts folder::

    CURRENT                     the current version's name, replaced atomically
    models/<version>/model.json weights, vocabulary, metrics, inputs' fingerprints, package version
    models/<version>/SHA256SUMS checksum of model.json, verified on every load
    .train.lock                 held (flock) by the one training that may publish
    predictions/                written by ``taxi-job infer``

Publishing writes a version under a hidden temporary name, syncs it, renames it into
``models/`` and only then replaces ``CURRENT``: a reader resolves ``CURRENT`` once and
never sees a half-written version, and a training killed at any point leaves the
previous model current. The format is JSON: loading it never runs code (no pickle).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from job.errors import ModelUnavailableError, NoModelYetError, TransientError
from job.model import Model
from job.volume import (
    fsync_dir,
    holder,
    now_utc,
    sweep,
    temporary_dir,
    write_atomic,
    writing,
)

logger = logging.getLogger(__name__)

FORMAT = "taxi-job/model/v1"
CURRENT = "CURRENT"
MODELS = "models"
MODEL_FILE = "model.json"
SUMS_FILE = "SHA256SUMS"
LOCK_FILE = ".train.lock"


@dataclass(frozen=True)
class Artifact:
    """A loaded, verified model version."""

    version: str
    path: Path
    model: Model
    metadata: dict[str, Any]


@contextlib.contextmanager
def training_lock(
    root: Path, timeout_s: float = 0.0, purpose: str = "a training"
) -> Iterator[None]:
    """Hold the store's exclusive lock for ``purpose`` (what the holder is doing: "a
    training", "models prune", ...); wait up to ``timeout_s`` for it, then raise
    ``TransientError`` naming who holds it for what.

    An ``flock``, not a :func:`volume.try_claim` claim: the kernel releases it the moment
    its holder dies, so a waiter (``--lock-timeout``) gets it at once, with no lease to
    outlast a two-hour training, and nothing to renew."""
    path = root / LOCK_FILE
    with writing("the training lock"):
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    held_by = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                    raise TransientError(
                        f"{path}: held by {held_by}; {purpose} cannot run at the same time "
                        f"(waited {timeout_s:.0f} s: retry later, or raise --lock-timeout)"
                    ) from None
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0.01)))
        with writing("the training lock", path):  # a full volume has no room for the note
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{holder()} for {purpose} since {now_utc()}".encode(), 0)
        sweep(root, locked=True)  # what killed runs left; a holder may sweep them all
        yield
    finally:
        os.close(fd)  # closing releases the flock


def publish(
    root: Path, model: Model, metadata: dict[str, Any], *, make_current: bool = True
) -> str:
    """Write a new immutable version and (unless ``make_current`` is false) make it current;
    return its name. Call it while holding :func:`training_lock`."""
    weights = model.to_dict()
    content_hash = hashlib.sha256(json.dumps(weights).encode()).hexdigest()
    version = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ") + "-" + content_hash[:8]
    body = {"format": FORMAT, "version": version, **metadata, "model": weights}
    data = (json.dumps(body, indent=1) + "\n").encode()
    sums = f"{hashlib.sha256(data).hexdigest()}  {MODEL_FILE}\n".encode()
    with writing(f"model version {version}", root / MODELS):
        models = root / MODELS
        models.mkdir(parents=True, exist_ok=True)
        tmp = temporary_dir(models / version)
        try:
            for name, content in ((MODEL_FILE, data), (SUMS_FILE, sums)):
                with open(tmp / name, "wb") as handle:
                    handle.write(content)
                    handle.flush()
                    os.fsync(handle.fileno())
            fsync_dir(tmp)
            os.rename(tmp, models / version)
        except BaseException:
            # A full volume fails here: the half version must not keep the space it took
            # (nor wait for the next training's sweep) while the volume is still full.
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(models)
    if make_current:
        set_current(root, version)
    logger.info("published model %s", version, extra={"model_version": version})
    return version


def set_current(root: Path, version: str) -> None:
    """Point ``CURRENT`` at ``version`` atomically. Call it while holding the lock."""
    with writing("CURRENT", root / CURRENT):
        write_atomic(root / CURRENT, (version + "\n").encode())


def current_version(root: str | os.PathLike[str]) -> str:
    """The name of the current version; ``ModelUnavailableError`` when there is none."""
    root = Path(root)
    try:
        version = (root / CURRENT).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise NoModelYetError(
            f"{root}: no model yet ({root / CURRENT} is missing); run `taxi-job train` first"
        ) from None
    if not version or "/" in version or version.startswith("."):
        raise ModelUnavailableError(f"{root / CURRENT}: does not name a model version")
    return version


def load(root: str | os.PathLike[str], version: str | None = None) -> Artifact:
    """Load and verify a version (the current one by default).

    Raises ``ModelUnavailableError`` when it is missing, fails its checksum or is malformed.
    """
    root = Path(root)
    version = version or current_version(root)
    path = root / MODELS / version
    try:
        data = (path / MODEL_FILE).read_bytes()
        sums = (path / SUMS_FILE).read_text(encoding="utf-8").split()
    except FileNotFoundError as exc:
        raise ModelUnavailableError(
            f"{path}: model version is incomplete ({exc.filename} missing)"
        ) from None
    if len(sums) < 1 or sums[0] != hashlib.sha256(data).hexdigest():
        raise ModelUnavailableError(
            f"{path / MODEL_FILE}: checksum mismatch (does not match {SUMS_FILE}); "
            "the artifact is corrupt or was modified — retrain or point CURRENT at another version"
        )
    try:
        body = json.loads(data)
        if body.get("format") != FORMAT:
            raise ValueError(f"unknown format {body.get('format')!r}")
        model = Model.from_dict(body["model"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelUnavailableError(f"{path / MODEL_FILE}: malformed model ({exc})") from exc
    metadata = {k: v for k, v in body.items() if k != "model"}
    return Artifact(version=version, path=path, model=model, metadata=metadata)


def versions(root: str | os.PathLike[str]) -> list[str]:
    """All published versions, oldest first."""
    models = Path(root) / MODELS
    if not models.is_dir():
        return []
    return sorted(p.name for p in models.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_sklearn(root: str | os.PathLike[str], version: str | None = None) -> tuple[Any, Any]:
    """For notebooks: the current (or a named) model as fitted scikit-learn objects,
    ``(DictVectorizer, LinearRegression)``, verified like any load. Needs scikit-learn.

    >>> vectorizer, regression = load_sklearn("/var/lib/taxi-job/artifacts")  # doctest: +SKIP
    >>> regression.predict(vectorizer.transform([{"PULocationID": "132", "DOLocationID": "236"}]))
    """
    from job.model import to_sklearn

    return to_sklearn(load(root, version).model)
