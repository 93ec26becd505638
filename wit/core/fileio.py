"""Atomic writes through Beam's FileSystems, so local, gs:// and s3:// paths all work.

Everything the job writes goes to a temporary name beside the target and is
renamed into place when complete: a crash never leaves a half-written file
under a final name, so a rerun can trust what it finds.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from typing import BinaryIO, Iterator, Optional, Sequence

from apache_beam.io.filesystem import BeamIOError, CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems

from wit.core.errors import FolderBusy, InputError, WitError, cause_of


def is_local(path: str) -> bool:
    """A path on this machine's file system, not in an object store (gs://, s3://)."""
    return "://" not in path


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def _tmp_name(path: str) -> str:
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:12]}") if head else f".{tail}.tmp"


class OutputError(WitError):
    """An output file the system would not write (a full disk, no permission)."""


def _os_error(e: BaseException) -> Optional[OSError]:
    """The OSError under `e`; Beam's filesystems keep each path's in a BeamIOError's `exception_details`."""
    wrapper = cause_of(e, BeamIOError)
    details = getattr(wrapper, "exception_details", None)
    if isinstance(details, dict):
        found = next((x for x in details.values() if isinstance(x, OSError)), None)
        if found is not None:
            return found
    return cause_of(e, OSError)  # type: ignore[return-value]


@contextmanager
def atomic_open(path: str) -> Iterator[BinaryIO]:
    """A binary stream whose content appears at `path` only if the block succeeds. A write the system
    refuses (a full disk, a permission) removes the temporary and raises an `OutputError` naming `path`."""
    tmp = _tmp_name(path)
    try:
        stream = FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED)
    except Exception as e:
        raise _refused(path, e) from e
    try:
        yield stream
        stream.close()
    except BaseException as e:
        try:
            stream.close()
        except Exception:
            pass  # the block's own error is the one to report
        try:
            delete([tmp])
        except Exception:
            pass
        if isinstance(e, Exception) and _os_error(e) is not None:
            raise _refused(path, e) from e
        raise
    try:
        if FileSystems.exists(path):
            delete([path])
        FileSystems.rename([tmp], [path])
    except Exception as e:
        try:
            delete_if_exists(tmp)
        except Exception:
            pass
        raise _refused(path, e) from e


def _refused(path: str, e: Exception) -> Exception:
    os_error = _os_error(e)
    if os_error is None:
        return e
    return OutputError(f"{path}: cannot write: {os_error.strerror or os_error}")


def write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def open_read(path: str) -> BinaryIO:
    """A binary stream of the file as stored (no decompression by extension)."""
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def iter_lines(stream: BinaryIO) -> Iterator[str]:
    """Decoded lines of a Beam stream: its compressed streams offer readline() but are no io objects."""
    while True:
        line = stream.readline()
        if not line:
            return
        yield line.decode("utf-8", errors="replace")


def escape(path: str) -> str:
    """`path` as a glob that matches itself only: a folder named "run[1]" is a path, not a pattern."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path)


def delete(paths: Sequence[str]) -> None:
    """Beam's delete takes globs; these are paths."""
    FileSystems.delete([escape(p) for p in paths])


def delete_if_exists(path: str) -> None:
    if FileSystems.exists(path):
        delete([path])


def match_files(patterns: Sequence[str], what: str, error: type[Exception] = InputError) -> list[FileMetadata]:
    """Every file the globs name, sorted by path; a glob that names nothing is an error, not an empty input."""
    found: dict[str, FileMetadata] = {}
    for pattern in patterns:
        try:
            metadata = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:
            raise error(f"{what} {pattern}: {e}") from e
        if not metadata:
            raise error(f"{what} {pattern}: no file matches")
        found.update((m.path, m) for m in metadata)
    return [found[path] for path in sorted(found)]


LOCK_NAME = ".wit-lock"
LEASE_RENEW, LEASE_EXPIRES = 60.0, 600.0  # seconds, for folders on filesystems without locks


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime())}


@contextmanager
def folder_lock(folder: str, what: str) -> Iterator[None]:
    """One `what` at a time writes into `folder`; a second is refused at once with FolderBusy.

    A local folder is locked with flock on FOLDER/.wit-lock, which the system releases when the process
    ends however it ends, so a crashed run leaves nothing stuck. Object stores (gs://, s3://) have no
    locks: the lock is a lease file renewed every minute and taken over once ten minutes old; two runs
    started in the same second can both take it, so there it guards against the common mistake only.
    """
    if is_local(folder):
        import fcntl

        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, LOCK_NAME)
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise FolderBusy(f"{folder} is in use by another {what} ({_holder(f.read())}); wait for it to "
                                 f"end or use another folder") from None
            f.seek(0)
            f.truncate()
            f.write(json.dumps(_owner()))
            f.flush()
            yield
        return
    path = join(folder, LOCK_NAME)
    me = dict(_owner(), token=uuid.uuid4().hex)
    if exists(path):
        try:
            held = json.loads(read_bytes(path))
            fresh = time.time() - float(held.get("renewed", 0)) < LEASE_EXPIRES
        except (ValueError, TypeError, AttributeError):
            fresh = False
        if fresh:
            raise FolderBusy(f"{folder} is in use by another {what} ({_holder(json.dumps(held))}); wait for it "
                             f"to end, or for its lease ({path}) to be {LEASE_EXPIRES / 60:.0f} minutes old")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_RENEW):
            write_bytes(path, json.dumps(dict(me, renewed=time.time())).encode())

    write_bytes(path, json.dumps(dict(me, renewed=time.time())).encode())
    renewer = threading.Thread(target=renew, name="wit-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        delete_if_exists(path)


def _holder(text: str) -> str:
    try:
        held = json.loads(text)
        return f"pid {held['pid']} on {held['host']}, since {held['since']}"
    except (ValueError, KeyError, TypeError):
        return "owner unknown"
