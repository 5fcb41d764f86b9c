"""Reading trip files: resolve a source to parquet files, check them, stream their columns.

A source is a parquet file, a directory of them, or a glob; a local path or a URL that
pyarrow's filesystems open (``s3://``, ``gs://``, ``hdfs://``, and ``https://`` through
fsspec). Only the needed columns are read, one row group at a time with ``pre_buffer``
off, so memory depends on the size of a row group, not of the file.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import logging
import os
import posixpath
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from job.errors import BadInputError, TransientError

logger = logging.getLogger(__name__)

PICKUP = "tpep_pickup_datetime"
DROPOFF = "tpep_dropoff_datetime"
PU = "PULocationID"
DO = "DOLocationID"
ZONES = (PU, DO)
#: Columns a training or evaluation file must have; inference needs no drop-off time.
TRAIN_COLUMNS = (PICKUP, DROPOFF, PU, DO)
INFER_COLUMNS = (PICKUP, PU, DO)

#: Attempts and first delay for opening a file when the failure may pass (network, I/O).
RETRIES = 3
RETRY_DELAY_S = 0.5

T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    """One parquet file: how to name it to a user, and where pyarrow finds it."""

    uri: str
    path: str
    filesystem: pafs.FileSystem
    listed: bool = False
    """Found by listing a folder or a glob (the incoming queue), not named by the user."""
    size: int | None = None
    """The file's size, modification time and (a local file) change time and inode, as
    the listing saw them: enough to order a queue and to tell a file from its rewrite
    without opening it. ``None`` for a file named by the user (not listed)."""
    mtime_ns: int | None = None
    ctime_ns: int | None = None
    inode: int | None = None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)


@dataclass(frozen=True)
class Batch:
    """A slice of a file's rows as numpy arrays; zones have nulls as -1."""

    pickup_us: np.ndarray  # int64 microseconds since the epoch; 0 where null
    dropoff_us: np.ndarray | None
    times_valid: np.ndarray | None  # where both times are set; None when none is null
    pu: np.ndarray  # int64
    do: np.ndarray  # int64
    arrow: pa.RecordBatch  # the columns as read, to write them back unchanged


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if uri.startswith(("http://", "https://")):
        try:
            import fsspec
            from pyarrow.fs import FSSpecHandler, PyFileSystem
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BadInputError(
                f"{uri}: reading https:// needs fsspec and aiohttp (pip install 'taxi-job[http]')"
            ) from exc
        return PyFileSystem(FSSpecHandler(fsspec.filesystem("http"))), uri
    if "://" in uri:
        try:
            return pafs.FileSystem.from_uri(uri)  # type: ignore[no-any-return]
        except (pa.ArrowInvalid, OSError) as exc:
            raise BadInputError(f"{uri}: cannot open this location: {exc}") from exc
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())


def _display(uri: str, fs_path: str) -> str:
    """How to name a file to a user: with the source's scheme, as they wrote it."""
    if "://" in uri and "://" not in fs_path:
        return uri.split("://", 1)[0] + "://" + fs_path
    return fs_path


def resolve(uri: str, *, allow_empty: bool = False) -> list[Source]:
    """The parquet files a source names, sorted; raise ``BadInputError`` when there are none.

    A directory contributes its ``*.parquet`` files, leaving out hidden and temporary
    ones (a file being copied in should be written under a hidden name and renamed).
    With ``allow_empty`` an existing empty directory or a glob that matches nothing is
    no error (an inference run with nothing new to do).
    """
    fs, path = _filesystem(uri)
    if any(ch in path for ch in "*?["):
        parent, pattern = posixpath.split(path)
        if any(ch in parent for ch in "*?["):
            raise BadInputError(f"{uri}: only the last part of a path may be a glob")
        files = _listing(uri, fs, parent, lambda name: fnmatch.fnmatch(name, pattern), True)
        if not files and not allow_empty:
            raise BadInputError(f"{uri}: no file matches this pattern")
        return files
    info = _retrying(lambda: _file_info(fs, path, uri), uri)
    if info.type == pafs.FileType.NotFound:
        raise BadInputError(f"{uri}: no such file or directory")
    if info.type == pafs.FileType.Directory:
        files = _listing(uri, fs, path, lambda name: name.endswith(".parquet"), False)
        if not files and not allow_empty:
            raise BadInputError(f"{uri}: the directory holds no .parquet file")
        return files
    return [Source(uri, path, fs)]


def _listing(
    uri: str, fs: pafs.FileSystem, folder: str, wanted: Callable[[str], bool], missing_ok: bool
) -> list[Source]:
    """The files of ``folder`` whose name is ``wanted`` (never a hidden one), sorted by
    path, with what the listing knows of each: a local folder through ``os.scandir`` (one
    ``stat`` a file, which also gives the change time and inode pyarrow leaves out), any
    other through the filesystem's own listing."""
    if isinstance(fs, pafs.LocalFileSystem):

        def scan() -> list[Source]:
            found = []
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if entry.name.startswith(".") or not wanted(entry.name):
                            continue
                        try:
                            stat = entry.stat()
                        except FileNotFoundError:  # removed (or set aside) meanwhile
                            continue
                        if not S_ISREG(stat.st_mode):
                            continue
                        found.append(
                            Source(
                                entry.path,
                                entry.path,
                                fs,
                                listed=True,
                                size=stat.st_size,
                                mtime_ns=stat.st_mtime_ns,
                                ctime_ns=stat.st_ctime_ns,
                                inode=stat.st_ino,
                            )
                        )
            except FileNotFoundError:
                if not missing_ok:
                    raise
            return found

        files = _retrying(scan, uri)
    else:
        selector = pafs.FileSelector(folder, allow_not_found=missing_ok)
        infos = _retrying(lambda: fs.get_file_info(selector), uri)
        files = [
            Source(
                _display(uri, i.path),
                i.path,
                fs,
                listed=True,
                size=i.size,
                mtime_ns=i.mtime_ns if i.mtime is not None else None,
            )
            for i in infos
            if i.is_file and not i.base_name.startswith(".") and wanted(i.base_name)
        ]
    return sorted(files, key=lambda s: s.path)


def _file_info(fs: pafs.FileSystem, path: str, uri: str) -> pafs.FileInfo:
    """``fs.get_file_info``, except that over HTTP a server error is not "not found".

    fsspec's HTTP filesystem reports any failed request as a missing file; ask the server
    once more so that a 5xx or a refused connection is retried rather than reported as
    bad input.
    """
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound and uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(urllib.request.Request(uri, method="HEAD"), timeout=30).close()
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:
                raise OSError(f"HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, TimeoutError) as exc:
            raise OSError(str(exc)) from exc
    return info


def _http_error(exc: BaseException) -> bool:
    """An error of the HTTP client under ``https://`` sources (aiohttp, through fsspec):
    the network or the server, not the data."""
    return type(exc).__module__.split(".")[0] in {"aiohttp", "fsspec"}


def _http_status(exc: BaseException) -> int:
    status = getattr(exc, "status", 0)
    return status if isinstance(status, int) else 0


def _retrying(call: Callable[[], T], uri: str) -> T:
    """Run ``call``; retry I/O failures that may pass, with exponential backoff."""
    delay = RETRY_DELAY_S
    for attempt in range(1, RETRIES + 1):
        try:
            return call()
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
            raise
        except (pa.ArrowInvalid, ValueError):
            raise
        except Exception as exc:
            if not isinstance(exc, OSError) and not _http_error(exc):
                raise
            if _http_status(exc) in range(400, 500) and _http_status(exc) not in (408, 429):
                raise BadInputError(f"{uri}: the server refused: {exc}") from exc
            if attempt == RETRIES:
                raise TransientError(f"{uri}: I/O failed {RETRIES} times: {exc}") from exc
            logger.warning("%s: %s; retrying in %.1fs (%d/%d)", uri, exc, delay, attempt, RETRIES)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def whole_pass(
    source: Source, parquet: pq.ParquetFile, work: Callable[[Source, pq.ParquetFile], T]
) -> T:
    """Run ``work`` over a whole file. When it fails part-way for a reason that may pass
    (``TransientError``: a dropped connection, NFS's ESTALE), open the file again and start
    over, with backoff: ``work`` must start from scratch each time."""
    delay = RETRY_DELAY_S
    for attempt in range(1, RETRIES + 1):
        try:
            return work(source, parquet)
        except TransientError as exc:
            if attempt == RETRIES:
                raise
            logger.warning("%s; reading it again in %.1fs (%d/%d)", exc, delay, attempt, RETRIES)
            time.sleep(delay)
            delay *= 2
            parquet = open_parquet(source)
    raise AssertionError("unreachable")  # pragma: no cover


def open_parquet(source: Source) -> pq.ParquetFile:
    """Open a parquet file for streaming, mapping failures to one clear error."""

    def _open() -> pq.ParquetFile:
        handle = source.filesystem.open_input_file(source.path)
        return pq.ParquetFile(handle, pre_buffer=False)

    try:
        return _retrying(_open, source.uri)
    except FileNotFoundError as exc:
        raise BadInputError(f"{source.uri}: no such file") from exc
    except PermissionError as exc:
        raise BadInputError(f"{source.uri}: permission denied") from exc
    except (IsADirectoryError, NotADirectoryError) as exc:
        raise BadInputError(f"{source.uri}: not a file") from exc
    except (pa.ArrowInvalid, ValueError) as exc:
        raise BadInputError(f"{source.uri}: not a parquet file or truncated ({exc})") from exc


def fingerprint(source: Source, parquet: pq.ParquetFile | None = None) -> dict[str, Any]:
    """Size, modification time and a hash of the parquet footer: enough to tell inputs apart
    without hashing gigabytes (the footer holds every row group's statistics and offsets).

    A local file also by its inode and change time: a rewrite in place that keeps the size
    and puts the modification time back (``os.utime``, ``touch -r``, ``rsync -t``) still
    changes the ctime, and a file replaced by a rename is another inode."""
    extra: dict[str, Any] = {}
    size: int | None
    mtime: int | None
    if source.is_local:
        try:
            stat = _retrying(lambda: os.stat(source.path), source.uri)
        except FileNotFoundError as exc:
            raise BadInputError(f"{source.uri}: no such file") from exc
        size, mtime = stat.st_size, stat.st_mtime_ns
        extra = {"inode": stat.st_ino, "ctime_ns": stat.st_ctime_ns}
    else:
        info = _retrying(lambda: source.filesystem.get_file_info(source.path), source.uri)
        size, mtime = info.size, info.mtime_ns if info.mtime is not None else None
    parquet = parquet or open_parquet(source)
    footer = parquet.metadata.to_dict()
    digest = hashlib.sha256(repr(sorted(footer.items())).encode()).hexdigest()
    return {"uri": source.uri, "size": size, "mtime_ns": mtime, "footer_sha256": digest, **extra}


def check_schema(source: Source, schema: pa.Schema, columns: tuple[str, ...]) -> None:
    """Raise ``BadInputError`` naming the file when a column is missing or of the wrong type."""
    missing = [c for c in columns if schema.get_field_index(c) < 0]
    if missing:
        raise BadInputError(f"{source.uri}: missing required column(s) {', '.join(missing)}")
    for column in columns:
        kind = schema.field(column).type
        if column in ZONES:
            ok = pa.types.is_integer(kind) or pa.types.is_floating(kind)
            expected = "an integer"
        else:
            ok = pa.types.is_timestamp(kind)
            expected = "a timestamp"
        if not ok:
            raise BadInputError(
                f"{source.uri}: column {column} has type {kind}, expected {expected}"
            )


def _numpy(column: pa.Array, fill: int | float) -> np.ndarray:
    """A fixed-width column as int64 or float64 numpy values, nulls replaced by ``fill``.

    Reads the arrow buffers directly: pyarrow's ``to_numpy`` and ``pa.scalar`` import
    pandas when it is installed, which costs more than reading the column."""
    array = column
    floating = pa.types.is_floating(array.type)
    wanted = pa.float64() if floating else pa.int64()
    if pa.types.is_timestamp(array.type) and array.type.unit == "us":
        array = array.view(pa.int64())  # the same 8 bytes; a cast would load pyarrow.compute
    elif array.type != wanted:
        array = array.cast(wanted)
    data = array.buffers()[1]
    values = np.frombuffer(data, np.float64 if floating else np.int64, len(array), array.offset * 8)
    if array.null_count:
        values = np.where(_valid(array), values, fill)
    return values


_ARROW_TYPES = {
    np.dtype(np.int64): pa.int64(),
    np.dtype(np.int32): pa.int32(),
    np.dtype(np.float64): pa.float64(),
}


def to_arrow(values: np.ndarray) -> pa.Array:
    """A numpy array as an arrow array without a copy (and without ``pa.array``, which
    imports pandas when it is installed)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(
        _ARROW_TYPES[values.dtype], len(values), [None, pa.py_buffer(values)]
    )


def _valid(array: pa.Array) -> np.ndarray:
    """Where ``array`` is not null, as a numpy bool array (from its validity bitmap)."""
    if array.null_count == 0:
        return np.ones(len(array), dtype=bool)
    bits = np.unpackbits(np.frombuffer(array.buffers()[0], np.uint8), bitorder="little")
    return bits[array.offset : array.offset + len(array)].astype(bool)


def _timestamps_us(column: pa.Array) -> np.ndarray:
    """Microseconds since the epoch as int64, whatever the file's unit; null as 0."""
    if column.type.unit != "us":
        column = column.cast(pa.timestamp("us", column.type.tz), safe=False)
    return _numpy(column, 0)


def _zones(source: Source, name: str, column: pa.Array) -> np.ndarray:
    """A zone column as int64 with null as -1 (the seed's ``fillna(-1).astype(int)``)."""
    if pa.types.is_floating(column.type):
        values = _numpy(column, -1.0)
        if not np.all(np.isfinite(values)) or np.any(values != np.floor(values)):
            raise BadInputError(
                f"{source.uri}: column {name} holds values that are not whole numbers"
            )
        return values.astype(np.int64)
    return _numpy(column, -1)


def prefetched(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` on a thread of its own, up to ``depth`` ahead of the caller, so that
    parquet decoding (which releases the GIL) overlaps the caller's numpy work. An error
    is raised in the caller's thread, in order; the thread ends when the caller stops."""
    slots: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> None:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue

    def run() -> None:
        try:
            for item in items:
                put((True, item))
                if stop.is_set():
                    return
            put((False, None))
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            put((False, exc))

    threading.Thread(target=run, name="parquet-reader", daemon=True).start()
    try:
        while True:
            ok, value = slots.get()
            if ok:
                yield value
            elif value is None:
                return
            else:
                raise value
    finally:
        stop.set()


#: Rows converted at a time: the temporaries of a batch stay in the CPU's cache and are
#: reused, and memory does not depend on the file's row-group size.
BATCH_ROWS = 1 << 16


def iter_batches(
    source: Source,
    columns: tuple[str, ...],
    parquet: pq.ParquetFile | None = None,
    batch_rows: int = BATCH_ROWS,
    row_groups: Sequence[int] | None = None,
) -> Iterator[Batch]:
    """Stream a checked file (only ``row_groups`` when given) in slices of ``batch_rows``;
    raise ``BadInputError`` for a file with no rows or one that turns out corrupt part-way."""
    parquet = parquet or open_parquet(source)
    check_schema(source, parquet.schema_arrow, columns)
    if parquet.metadata.num_rows == 0:
        raise BadInputError(f"{source.uri}: the file has no rows")
    batches = prefetched(
        parquet.iter_batches(
            batch_size=batch_rows, row_groups=row_groups, columns=list(columns), use_threads=True
        )
    )
    pool = pa.default_memory_pool()
    for count in itertools.count(1):
        if count % 16 == 0:
            # Arrow's allocator keeps freed pages for reuse, and with decoding buffers of
            # varying sizes the kept set grows with the rows read (+40% RSS from 1.4 to 5.5
            # million rows): hand them back now and then, so memory stays flat.
            pool.release_unused()
        try:
            arrow = next(batches)
        except StopIteration:
            return
        except (pa.ArrowInvalid, ValueError) as exc:
            raise BadInputError(f"{source.uri}: corrupt or truncated ({exc})") from exc
        except OSError as exc:
            # Arrow reports corrupt pages as an OSError with no errno; an errno means the
            # storage failed (EIO, ESTALE on NFS, a dropped connection): worth a retry.
            if source.is_local and exc.errno is None:
                raise BadInputError(f"{source.uri}: corrupt or truncated ({exc})") from exc
            raise TransientError(f"{source.uri}: reading failed: {exc}") from exc
        except Exception as exc:
            if not _http_error(exc):
                raise
            raise TransientError(f"{source.uri}: reading failed: {exc}") from exc
        if arrow.num_rows == 0:
            continue
        times = [arrow.column(c) for c in (PICKUP, DROPOFF) if c in columns]
        valid = None
        if any(t.null_count for t in times):
            valid = np.ones(arrow.num_rows, dtype=bool)
            for t in times:
                valid &= _valid(t)
        yield Batch(
            pickup_us=_timestamps_us(arrow.column(PICKUP)),
            dropoff_us=_timestamps_us(arrow.column(DROPOFF)) if DROPOFF in columns else None,
            times_valid=valid,
            pu=_zones(source, PU, arrow.column(PU)),
            do=_zones(source, DO, arrow.column(DO)),
            arrow=arrow,
        )
