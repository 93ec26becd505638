"""Atomic writes through Beam's FileSystems, so local, gs:// and s3:// paths all work.

Everything the job writes goes to a temporary name beside the target and is
renamed into place when complete: a crash never leaves a half-written file
under a final name, so a rerun can trust what it finds.
"""

from __future__ import annotations

import posixpath
import uuid
from contextlib import contextmanager
from typing import BinaryIO, Iterator, Sequence

from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems

from wit.errors import InputError


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def _tmp_name(path: str) -> str:
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:12]}") if head else f".{tail}.tmp"


@contextmanager
def atomic_open(path: str) -> Iterator[BinaryIO]:
    """A binary stream whose content appears at `path` only if the block succeeds."""
    tmp = _tmp_name(path)
    stream = FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED)
    try:
        yield stream
        stream.close()
    except BaseException:
        stream.close()
        delete([tmp])
        raise
    if FileSystems.exists(path):
        delete([path])
    FileSystems.rename([tmp], [path])


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
