"""Writing the shared volume: whole files or nothing, under names no other writer has.

Every writer (``train``, ``infer``, ``sample-data``, ``fetch``), in any pod on any node,
writes a new file under a temporary name of its own in the target folder, syncs it and
renames it into place. The names come from ``mkstemp``/``mkdtemp``: an exclusive create
(``O_CREAT | O_EXCL``) of ``.tmp-<target>.<random>``, so no two writers ever share one,
whatever their process ids (every container's main process is pid 1).

A claim is a small file created exclusively, held while one run works on one target and
removed after; a claim older than its lease was left by a killed run and is broken.

What this relies on from the volume's filesystem, which local filesystems, NFSv3 and later
(and so EFS, Filestore, Azure Files NFS), CephFS and GlusterFS provide: an exclusive
create fails when the name exists, and a rename within a folder is atomic. It does not
rely on process ids, on ``flock`` (which some NFS setups do not honour across nodes), or
on clocks agreeing closer than a claim's lease.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from job.errors import BadInputError, TransientError

logger = logging.getLogger(__name__)

#: Every temporary on the volume starts with this, so a sweep can find the leftovers.
TMP_PREFIX = ".tmp-"
#: Claims start with this (never with TMP_PREFIX: a temporaries sweep must not take them).
CLAIM_PREFIX = ".claim-"
#: Published files and folders are plain data: readable by every pod and notebook
#: (``mkstemp``'s 0600 and ``mkdtemp``'s 0700 are meant for secrets).
FILE_MODE = 0o644
DIR_MODE = 0o755


def now_utc() -> str:
    """The time as ``2026-12-01T02:37:17Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def holder() -> str:
    """Who writes: the host (in a pod, the pod's name) and the process."""
    return f"{os.uname().nodename} pid {os.getpid()}"


def fsync_dir(path: Path) -> None:
    """Make the renames in the folder ``path`` durable. A filesystem that cannot sync a
    folder (EINVAL) is let be; any other failure is raised."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def writing(what: str, where: Path | None = None) -> Iterator[None]:
    """Turn a failure to write to the shared volume into one clear error: permission
    denied, a path through a file or a read-only mount are deployment problems (exit 2:
    a retry cannot help, check the path, the pod's fsGroup and the claim), anything else
    (a full or failing volume) may pass (exit 75).

    The error names the file (a rename's target), or the folder when the file was one of
    our temporaries; ``where`` when the error names no file (arrow's do not)."""
    try:
        yield
    except OSError as exc:
        code, reason = system_error(exc)
        if isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM):
            raise BadInputError(
                f"{_where(exc, where)}permission denied: cannot write {what} "
                "(is the volume writable by this user? on Kubernetes: the pod's fsGroup)"
            ) from exc
        if code in _NEVER_PASSES:
            raise BadInputError(
                f"{_where(exc, where)}cannot write {what}: {reason} "
                "(a wrong path, or a volume mounted read-only: a retry cannot help)"
            ) from exc
        raise TransientError(f"{_where(exc, where)}cannot write {what}: {reason}") from exc


#: Write errors of the path or the mount, not of the moment: exit 2 like permission denied.
_NEVER_PASSES = (errno.ENOTDIR, errno.EROFS)
#: How arrow names the system's error in the message of its own ``OSError`` ("Error
#: writing bytes to file. Detail: [errno 28] No space left on device"); some of them
#: leave the errno unset.
_ARROW_ERRNO = re.compile(r"\[errno (\d+)\] ([^\n]+)")


def system_error(exc: OSError) -> tuple[int | None, str]:
    """The errno of ``exc`` and the system's words for it (``28``, ``No space left on
    device``), also from an error of arrow's."""
    words = exc.strerror or str(exc)
    found = _ARROW_ERRNO.search(words)
    if found is None:
        return exc.errno, words
    return exc.errno or int(found[1]), found[2].strip()


def _where(exc: OSError, where: Path | None) -> str:
    name = exc.filename2 or exc.filename or where  # a rename's target, or the file
    if not name:
        return ""
    path = Path(os.fsdecode(name))
    return f"{path.parent if path.name.startswith(TMP_PREFIX) else path}: "


def temporary_file(target: Path) -> Path:
    """Create an empty file of our own beside ``target``, named ``.tmp-<name>.<random>``."""
    import tempfile  # here: the every-minute run with nothing to do needs none

    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{target.name}.", dir=target.parent)
    os.close(fd)
    return Path(name)


def temporary_dir(target: Path) -> Path:
    """Create an empty folder of our own beside ``target``, named ``.tmp-<name>.<random>``."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}.", dir=target.parent))
    path.chmod(DIR_MODE)
    return path


@contextlib.contextmanager
def replacing(target: Path, claim: Claim | None = None) -> Iterator[Path]:
    """Yield a new temporary file of our own beside ``target`` to write; when the block
    ends without error it is synced and renamed over ``target``, and the folder synced.
    With ``claim``, the rename happens only if we still hold it (checked right before).
    On any error, the rename included, the temporary is removed and ``target`` is left as
    it was."""
    tmp = temporary_file(target)
    try:
        yield tmp
        with open(tmp, "rb") as handle:  # the writer may have used its own handle
            os.fsync(handle.fileno())
        tmp.chmod(FILE_MODE)
        if claim is not None:
            claim.check(str(target))
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


class ClaimLostError(TransientError):
    """Our claim was taken over (our lease ran out while we worked): we must not publish."""


@dataclass(frozen=True)
class Claim:
    """An exclusive claim on a name, held by this run until :func:`release`."""

    path: Path
    content: bytes
    lease_s: float

    def held(self) -> bool:
        """Whether the claim at ``path`` is still this one (not broken and retaken)."""
        try:
            return self.path.read_bytes() == self.content
        except FileNotFoundError:
            return False

    def check(self, what: str) -> None:
        """Raise :class:`ClaimLostError` unless we still hold the claim: called right before
        publishing ``what``, so a run whose claim was taken over publishes nothing."""
        if not self.held():
            raise ClaimLostError(
                f"{self.path}: this run's claim is not its own any more (broken after "
                f"its lease of {self.lease_s:.0f} s, or removed); not publishing {what}"
            )

    def renew(self) -> bool:
        """Restart the lease (the claim's modification time) if we still hold the claim;
        return whether we do."""
        if not self.held():
            return False
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path)
            return True
        return False


def claim_path(target: Path) -> Path:
    """The claim file of ``target``: ``.claim-<name>`` beside it."""
    return target.with_name(CLAIM_PREFIX + target.name)


def try_claim(target: Path, lease_s: float, **note: Any) -> Claim | None:
    """Claim ``target`` for this run (the file :func:`claim_path`); ``None`` when another
    live run holds it.

    The one way to say "mine" on the volume. The claim is written whole to a temporary
    file of our own and ``link(2)``-ed to its name: atomic, fails when the name exists (on
    a local disk and on NFS, CephFS, EFS alike), and the claim is never seen empty. It
    holds who took it, when, its lease and a random token (what :meth:`Claim.held`
    compares). A claim not renewed for ``lease_s`` was left by a killed run: it is broken
    (see :func:`_break_if_stale`) and taken.
    """
    path = claim_path(target)
    body = {"holder": holder(), "since": now_utc(), "lease_s": lease_s, **note}
    content = json.dumps({**body, "token": os.urandom(8).hex()}).encode()
    tmp = temporary_file(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(FILE_MODE)
        for _ in range(3):  # a third pass only after two stale claims in a row
            try:
                os.link(tmp, path)
            except FileExistsError:
                held_by = _break_if_stale(path, lease_s)
                if held_by is None:
                    continue
                logger.info("%s: held by %s", path, held_by)
                return None
            fsync_dir(path.parent)
            return Claim(path, content, lease_s)
        return None
    finally:
        tmp.unlink(missing_ok=True)


def read_claim(path: Path) -> dict[str, Any] | None:
    """The content of the claim at ``path``; None when there is none or it is unreadable."""
    try:
        body = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _break_if_stale(path: Path, lease_s: float) -> str | None:
    """Remove the claim at ``path`` if it was not renewed for ``lease_s``. Return ``None``
    when it is gone (broken here, or released meanwhile), else who holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:  # the content and the age of one file (the name may be replaced meanwhile)
        seen = os.read(fd, 4096)
        age = time.time() - os.fstat(fd).st_mtime
    finally:
        os.close(fd)
    if age <= lease_s:
        return _describe(seen)
    broken = temporary_file(path)
    try:
        os.rename(path, broken)  # atomic: of several breakers, one takes it
    except FileNotFoundError:
        broken.unlink(missing_ok=True)
        return None
    try:
        taken = broken.read_bytes()
        if taken != seen:
            # Between our read and our rename another run broke the stale claim and took
            # a new one: that is what we moved. Hand it back with link(2), which fails if a
            # third run took the name meanwhile: then that run is the one holder, and the
            # run we moved finds its claim gone before it publishes (Claim.check).
            with contextlib.suppress(FileExistsError):
                os.link(broken, path)
            return _describe(taken)
        logger.warning(
            "%s: breaking a claim not renewed for %.0f s (its lease: %.0f s), %s: "
            "its run was killed",
            path,
            age,
            lease_s,
            _describe(seen),
        )
        return None
    finally:
        broken.unlink(missing_ok=True)


def _describe(content: bytes) -> str:
    try:
        body = json.loads(content)
        what = f" for {body['purpose']}" if body.get("purpose") else ""
        return f"{body['holder']}{what} since {body['since']}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return "a run that had not written its name yet"


def release(claim: Claim) -> None:
    """Remove our claim (unless a run broke it after our lease ran out and holds it now)."""
    with contextlib.suppress(FileNotFoundError):
        if claim.held():
            claim.path.unlink()


@contextlib.contextmanager
def renewing(claim: Claim, every_s: float | None = None) -> Iterator[None]:
    """Renew ``claim`` on a thread of its own every ``every_s`` (a third of the lease by
    default) while the block runs, so a slow but live holder keeps it however long it
    works; a killed one stops renewing and its claim goes stale after one lease."""
    import threading  # here: only a run with work to do needs it

    interval = every_s if every_s is not None else claim.lease_s / 3
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                if not claim.renew():
                    return  # taken over: Claim.check refuses the publish
            except OSError as exc:  # a flaky volume: the next beat tries again
                logger.warning("%s: cannot renew the claim: %s", claim.path, exc)

    thread = threading.Thread(target=beat, name="claim-renewal", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


#: A temporary untouched this long was left by a killed run: a live writer renames its
#: temporary seconds after its last write (a version, a partial, one input's predictions).
TEMPORARY_AFTER_S = 3600
#: An input's predictions temporary with no claim on the input, untouched this long, is a
#: killed run's (see LEFTOVERS): a margin for a writer of that folder that takes no claim.
UNCLAIMED_AFTER_S = 60
#: A sharded training's run folder untouched this long belongs to a training that ended
#: long ago (a training Job's deadline is 7200 s); it keeps PUBLISHED until then, so that
#: a late or repeated shard of the run does nothing.
RUN_AFTER_S = 7 * 86400


@dataclass(frozen=True)
class Leftover:
    """One rule of the sweep: what a killed run leaves where, and when it is surely one."""

    what: str
    places: tuple[str, ...]
    """Folders, relative to the artifacts folder; ``*`` is every run folder of partials/;
    ``predictions`` and ``data`` are the folders the sweeping command writes, if given."""
    pattern: str
    after_s: float | None
    """Untouched for this long: a leftover. None: a claim, stale after its own lease."""
    why: str
    locked_after_s: float | None = None
    """The age that suffices for a sweeper holding the training lock, if another."""
    unclaimed: bool = False
    """Only the temporaries of a target nobody holds a claim on (after the claims rule)."""


#: The one table of what the sweep removes (every command that writes runs it).
LEFTOVERS = (
    Leftover(
        "a temporary of the model store (a version, CURRENT or the history being written, a "
        "version being pruned)",
        (".", "models"),
        TMP_PREFIX + "*",
        TEMPORARY_AFTER_S,
        "every writer of them holds the training lock: for its holder, any is a leftover",
        locked_after_s=0,
    ),
    Leftover(
        "a temporary of predictions, partials or the journal (a file, a claim being made)",
        ("predictions", "partials/*", "runs"),
        TMP_PREFIX + "*",
        TEMPORARY_AFTER_S,
        "a live writer renames its temporary seconds after its last write",
    ),
    Leftover(
        "a claim (an input being predicted, a reduce)",
        ("predictions", "partials/*"),
        CLAIM_PREFIX + "*",
        None,
        "a live holder renews its claim every third of its lease",
    ),
    Leftover(
        "an input's predictions being written by a run that was killed (its claim broken)",
        ("predictions",),
        TMP_PREFIX + "*",
        UNCLAIMED_AFTER_S,
        "infer writes an input's predictions only while it holds the input's claim, and "
        "renames or removes them before it lets go: with the claim gone they are nobody's "
        "(a node restart leaves a whole month's worth; not an hour's wait for them)",
        unclaimed=True,
    ),
    Leftover(
        "a temporary of a data file (sample-data, fetch)",
        ("data",),
        TMP_PREFIX + "*",
        TEMPORARY_AFTER_S,
        "sample-data and fetch rename their file seconds after its last write",
    ),
    Leftover(
        "a sharded training's run folder",
        ("partials",),
        "*",
        RUN_AFTER_S,
        "a training ends within its Job's deadline, far sooner",
    ),
)


def sweep(
    artifacts: Path | None,
    predictions: Path | None = None,
    *,
    data: Path | None = None,
    locked: bool = False,
) -> None:
    """Remove what killed runs left below ``artifacts`` (and in ``predictions``, where
    infer writes, ``<artifacts>/predictions`` by default; in ``data``, where sample-data
    and fetch write), by the rules of :data:`LEFTOVERS`; ``locked``: the caller holds the
    training lock. Without ``artifacts``, only the folders given are swept."""
    now = time.time()
    for rule in LEFTOVERS:
        after = rule.locked_after_s if locked and rule.locked_after_s is not None else rule.after_s
        for folder in _places(artifacts, predictions, data, rule.places):
            for path in folder.glob(rule.pattern):
                if rule.unclaimed and _claimed(path):
                    continue
                if after is None:
                    body = read_claim(path) or {}
                    lease = body.get("lease_s")
                    _break_if_stale(
                        path, lease if isinstance(lease, int | float) else TEMPORARY_AFTER_S
                    )
                    continue
                with contextlib.suppress(FileNotFoundError):  # another run removed it first
                    if path.lstat().st_mtime <= now - after:
                        logger.warning(
                            "removing %s (%s), left by an interrupted run", path, rule.what
                        )
                        if path.is_dir() and not path.is_symlink():
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            path.unlink()


def _claimed(temporary: Path) -> bool:
    """Whether the target of ``temporary`` (``.tmp-<target>.<random>``) has a claim, or is
    no claimable target at all (a hidden file's temporary: an index, a claim being made)."""
    target = temporary.name[len(TMP_PREFIX) :].rpartition(".")[0]
    return not target or target.startswith(".") or claim_path(temporary.with_name(target)).exists()


def _places(
    artifacts: Path | None, predictions: Path | None, data: Path | None, places: tuple[str, ...]
) -> list[Path]:
    found: list[Path] = []
    for place in places:
        if place == "data":
            if data is not None:
                found.append(data)
        elif place == "predictions" and predictions is not None:
            found.append(predictions)
        elif artifacts is None:
            continue
        elif "*" in place:
            found.extend(p for p in artifacts.glob(place) if p.is_dir() and not p.is_symlink())
        else:
            found.append(artifacts / place)
    return [f for f in found if f.is_dir()]
