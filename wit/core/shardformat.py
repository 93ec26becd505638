"""The shard format: the contract between the dataset job and the trainer.

It sits in wit's core so that the job writes it and the trainer, the reports
and other tools read it without importing the Beam job.

    DIR/shards/00000.tar            webdataset: KEY.jpg, KEY.txt, KEY.json (successes only)
    DIR/shards/00000.parquet        one row per sample, every status (img2dataset columns + ours)
    DIR/shards/00000_stats.json     per-shard counts; written last, so it marks the shard finished

Keys follow img2dataset: shard number then index in the shard, zero padded.
Bytes are reproducible: tar members have mtime 0 and fixed owner/mode, rows
are in key order, and nothing time-dependent is stored.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import BinaryIO, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wit.core import fileio
from wit.core.errors import ErrorKind
class Status(str, Enum):
    """What became of a selected pair; img2dataset's statuses and ours. `PENDING` is the transient state of
    a pair assigned to a shard and not yet downloaded; it is never written to a finished shard."""

    SUCCESS = "success"
    FAILED_TO_DOWNLOAD = "failed_to_download"
    FAILED_TO_RESIZE = "failed_to_resize"
    OPTED_OUT = "opted_out"
    DUPLICATE = "duplicate"
    NEAR_DUPLICATE = "near_duplicate"
    EVAL_DUPLICATE = "eval_duplicate"  # within the near-duplicate threshold of an evaluation image
    PENDING = "pending"

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(s for s in Status if s is not Status.PENDING)  # the final ones, in report order


@dataclass(frozen=True)
class Sample:
    key: str
    uid: str
    url: str
    caption: str
    status: Status = Status.SUCCESS
    error_message: Optional[str] = None
    error_kind: Optional[ErrorKind] = None
    duplicate_of: Optional[str] = None  # the key of the kept image a duplicate was dropped for
    width: Optional[int] = None
    height: Optional[int] = None
    original_width: Optional[int] = None
    original_height: Optional[int] = None
    sha256: Optional[str] = None
    phash: Optional[str] = None
    http_status: Optional[int] = None
    matched_query_ids: tuple[int, ...] = ()
    selected_query_ids: tuple[int, ...] = ()
    source_file: Optional[str] = None  # the input file and row the pair was read from: join on uid or these
    source_row: Optional[int] = None
    exif: Optional[str] = None  # the image's EXIF tags as JSON, as img2dataset stores them
    # input columns kept as they were (`wit build --save-additional-columns`): (name, value) pairs, written as
    # columns of their own in the Parquet files and keys of the sample's JSON, as img2dataset writes them
    additional: tuple[tuple[str, object], ...] = ()
    jpg: Optional[bytes] = field(default=None, repr=False)

    def __post_init__(self) -> None:  # values read back from Parquet or JSON arrive as plain strings
        if not isinstance(self.status, Status):
            object.__setattr__(self, "status", Status(self.status))
        if self.error_kind is not None and not isinstance(self.error_kind, ErrorKind):
            object.__setattr__(self, "error_kind", ErrorKind(self.error_kind))

    def metadata(self) -> dict:
        """The sample's JSON/Parquet record (everything but the image)."""
        record = {name: getattr(self, name) for name in _METADATA}
        record["status"] = self.status.value
        record["error_kind"] = self.error_kind.value if self.error_kind else None
        record["matched_query_ids"] = list(self.matched_query_ids)
        record["selected_query_ids"] = list(self.selected_query_ids)
        record.update(self.additional)
        return record


_METADATA = tuple(f.name for f in fields(Sample) if f.name not in ("jpg", "additional"))  # asdict() copies deeply
_TYPES = {
    "width": pa.int32(), "height": pa.int32(), "original_width": pa.int32(), "original_height": pa.int32(),
    "http_status": pa.int32(), "source_row": pa.int64(), "matched_query_ids": pa.list_(pa.int32()),
    "selected_query_ids": pa.list_(pa.int32()), "jpg": pa.binary(),
}
STAGING_SCHEMA = pa.schema([pa.field(f.name, _TYPES.get(f.name, pa.string())) for f in fields(Sample)
                            if f.name != "additional"])
OWN_COLUMNS = frozenset(STAGING_SCHEMA.names)
SCHEMA = STAGING_SCHEMA.remove(STAGING_SCHEMA.get_field_index("jpg"))


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


@dataclass(frozen=True)
class ShardPaths:
    """The files of one shard: the three the shard is made of, and the staging file of its download."""

    tar: str
    parquet: str
    stats: str  # written last: it marks the shard finished
    staging: str


def paths(out_dir: str, shard: int) -> ShardPaths:
    base = fileio.join(out_dir, "shards", shard_name(shard))
    return ShardPaths(tar=base + ".tar", parquet=base + ".parquet", stats=base + "_stats.json",
                      staging=fileio.join(out_dir, "_staging", shard_name(shard) + ".parquet"))


def index_digits(shard_size: int) -> int:
    return len(str(max(shard_size - 1, 1)))


def key_for(shard: int, index: int, shard_size: int) -> str:
    """The shard number then the index in the shard, zero padded, as img2dataset's keys."""
    return f"{shard:05d}{index:0{index_digits(shard_size)}d}"


def keys_for(first: int, n: int, shard_size: int) -> pa.Array:
    """`key_for` of the n samples numbered from `first` across shards, as one Arrow column."""
    import pyarrow.compute as pc

    shard, index = np.divmod(np.arange(first, first + n, dtype=np.int64), shard_size)
    return pc.binary_join_element_wise(
        pc.utf8_lpad(pc.cast(pa.array(shard), pa.string()), 5, "0"),
        pc.utf8_lpad(pc.cast(pa.array(index), pa.string()), index_digits(shard_size), "0"), "")


def additional_columns(table: pa.Table, names: Sequence[str], rows: Sequence[tuple]) -> pa.Table:
    """`table` with a column per additional input column, from each row's (name, value) pairs; types as
    Arrow infers them (text where every value is missing)."""
    for name in names:
        values = [dict(r).get(name) for r in rows]
        array = pa.array(values)
        table = table.append_column(name, array.cast(pa.string()) if pa.types.is_null(array.type) else array)
    return table


_ENUM_COLUMNS = frozenset({"status", "error_kind"})
_TUPLE_COLUMNS = frozenset({"matched_query_ids", "selected_query_ids"})


# Images converted to Arrow, written and read at a time. One conversion holds the GIL throughout, so a whole
# shard's images at once stalled the downloading process's fetch threads; and a column of a whole shard's
# images is a fresh buffer of its full size, whose pages the kernel must zero first, which cost several times
# the work itself. Slices stall briefly and reuse one slice's memory (bench/download.py, figures in
# bench/RESULTS.md).
IMAGES_PER_CHUNK = 500


def to_table(samples: Sequence[Sample], schema: pa.Schema) -> pa.Table:
    columns: dict[str, object] = {}
    for name in schema.names:
        values = [getattr(s, name) for s in samples]
        if name in _ENUM_COLUMNS:
            values = [None if v is None else v.value for v in values]
        elif name in _TUPLE_COLUMNS:
            values = [list(v) for v in values]
        columns[name] = values
    table = pa.table(columns, schema=schema)
    names = list(dict.fromkeys(name for s in samples for name, _value in s.additional))
    return additional_columns(table, names, [s.additional for s in samples]) if names else table


def from_table(table: Union[pa.Table, pa.RecordBatch]) -> list[Sample]:
    """Samples from a shard's or the plan's Parquet; columns that are not Sample's own are additional ones."""
    out = []
    extra = [name for name in table.schema.names if name not in OWN_COLUMNS]
    for row in table.to_pylist():
        row["matched_query_ids"] = tuple(row.get("matched_query_ids") or ())
        row["selected_query_ids"] = tuple(row.get("selected_query_ids") or ())
        if extra:
            row["additional"] = tuple((name, row.pop(name)) for name in extra)
        out.append(Sample(**row))
    return out


def write_parquet(path: str, samples: Sequence[Sample], schema: pa.Schema) -> None:
    """zstd for the metadata; the staging file's JPEG bytes are stored as they are (they do not compress, and
    compressing and decompressing them took a visible part of the time after the last response:
    bench/download.py)."""
    if "jpg" not in schema.names:
        with fileio.atomic_open(path) as f:
            pq.write_table(to_table(samples, schema), f, compression="zstd")
        return
    at = schema.get_field_index("jpg")
    meta = to_table(samples, schema.remove(at))
    compression = {name: "zstd" for name in meta.column_names}
    with fileio.atomic_open(path) as f, pq.ParquetWriter(f, meta.schema.insert(at, schema.field("jpg")),
                                                         compression={**compression, "jpg": "none"},
                                                         use_dictionary=meta.column_names) as writer:
        for start in range(0, len(samples), IMAGES_PER_CHUNK):  # a row group per slice of images
            part = samples[start:start + IMAGES_PER_CHUNK]
            images = pa.array([s.jpg for s in part], pa.binary())
            writer.write_table(meta.slice(start, len(part)).add_column(at, schema.field("jpg"), images))


def read_parquet(path: str, columns: Optional[list[str]] = None) -> pa.Table:
    return pq.read_table(pa.py_buffer(fileio.read_bytes(path)), columns=columns)  # BytesIO would copy them


def read_samples(path: str) -> list[Sample]:
    """A staging file's samples, read IMAGES_PER_CHUNK rows at a time. Decoding a shard's image column whole
    takes a fresh buffer of its full size, and the kernel's zeroing of those new pages cost several times the
    decoding itself; slices reuse one slice's memory (bench/download.py; figures in bench/RESULTS.md). A local
    file is mapped rather than read into a fresh buffer, for the same reason: its pages are the page cache's."""
    f = pq.ParquetFile(pa.memory_map(path) if fileio.is_local(path) else pa.py_buffer(fileio.read_bytes(path)))
    out: list[Sample] = []
    for batch in f.iter_batches(batch_size=IMAGES_PER_CHUNK, use_threads=False):
        out += from_table(batch)
    return out


MAX_MESSAGES = 1_000  # distinct error messages a shard's status_dict lists; the rest are counted together
OTHER_MESSAGES = "(other messages)"


def shard_stats(shard: int, samples: Iterable[Sample]) -> dict:
    """img2dataset-style per-shard stats, plus a count for each of our statuses."""
    samples = list(samples)
    status = Counter(s.status for s in samples)
    errors = Counter(s.error_message for s in samples if s.error_message)
    if len(errors) > MAX_MESSAGES:  # messages name no sample, but a shard of odd failures can still vary
        kept = dict(errors.most_common(MAX_MESSAGES))
        kept[OTHER_MESSAGES] = sum(errors.values()) - sum(kept.values())
        errors = Counter(kept)
    stats = {"shard": shard_name(shard), "count": len(samples), "successes": status[Status.SUCCESS]}
    stats.update({s.value: status[s] for s in STATUSES if s is not Status.SUCCESS})
    stats["status_dict"] = {"success": status[Status.SUCCESS], **dict(sorted(errors.items()))}  # as img2dataset
    return stats


def status_count(stats: dict, status: Status) -> int:
    """A status's count in a shard's stats (img2dataset names the success count `successes`)."""
    return stats.get("successes" if status is Status.SUCCESS else status.value, 0)


_BLOCK = tarfile.BLOCKSIZE


def _tarfile_header(name: str, size: int) -> bytes:
    """A member's ustar header as tarfile lays it out: mtime 0, mode 0444, owner wit."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o444, "wit", "wit"
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def _template() -> tuple[bytes, int]:
    """A header of an empty name and size, and its checksum without those two fields and the checksum's
    own: a member's header is then three slices and a sum."""
    header = bytearray(_tarfile_header("", 0))
    header[124:136] = bytes(12)
    header[148:156] = b" " * 8
    return bytes(header), sum(header)


_HEADER, _HEADER_SUM = _template()
_ZEROS = bytes(_BLOCK)
_WRITE_SIZE = 1 << 20


def _header(name: str, size: int) -> bytes:
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 100 or not raw.isascii() or size >= 8 ** 11:  # the rare header tarfile lays out otherwise
        return _tarfile_header(name, size)
    size_field = b"%011o\0" % size
    checksum = _HEADER_SUM + sum(raw) + sum(size_field)
    return b"".join((raw, _HEADER[len(raw):124], size_field, _HEADER[136:148], b"%06o\0 " % checksum,
                     _HEADER[156:]))


def write_members(f: BinaryIO, members: Iterable[tuple[str, bytes]]) -> None:
    """(name, bytes) members as a plain ustar stream: mtime 0, mode 0444, owner wit, so bytes are reproducible.

    The bytes are those `tarfile.open(mode="w|", format=USTAR_FORMAT)` writes (a test holds them equal); the
    headers are laid out here because tarfile's own took most of a shard's write time (bench/write.py).
    Not webdataset's TarWriter: importing webdataset imports torch, over a second of start-up that no
    dataset worker needs.
    """
    offset, parts, pending = 0, [], 0
    for name, data in members:
        pad = -len(data) % _BLOCK
        parts += (_header(name, len(data)), data, _ZEROS[:pad])
        pending += _BLOCK + len(data) + pad
        if pending >= _WRITE_SIZE:  # a write per megabyte, not three per member (bench/write.py)
            f.write(b"".join(parts))
            offset, parts, pending = offset + pending, [], 0
    offset += pending + 2 * _BLOCK  # the end-of-archive blocks, then zeros up to a whole record, as tarfile pads
    parts.append(bytes(2 * _BLOCK + (-offset % tarfile.RECORDSIZE)))
    f.write(b"".join(parts))


def write_tar(path: str, samples: Sequence[Sample]) -> None:
    """Successes as webdataset members: KEY.jpg, KEY.json, KEY.txt."""
    def members() -> Iterator[tuple[str, bytes]]:
        for s in samples:
            if s.status is Status.SUCCESS:
                yield f"{s.key}.jpg", s.jpg
                yield f"{s.key}.json", json.dumps(s.metadata(), sort_keys=True, ensure_ascii=False).encode("utf-8")
                yield f"{s.key}.txt", s.caption.encode("utf-8")

    with fileio.atomic_open(path) as f:
        write_members(f, members())


def iter_tar(path: str, on_error: Callable[[Exception], bool]) -> Iterator[dict]:
    """Samples of one tar, streamed and grouped as webdataset does (key = name up to the first dot):
    {"__key__", "__url__", "jpg": bytes, ...}. Unreadable parts go to `on_error` (return True to go on)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    try:
        stream = fileio.open_read(path)
    except Exception as e:
        on_error(OSError(f"{path}: {e}"))
        return
    with stream:
        yield from group_by_keys(tar_file_expander([{"url": path, "stream": stream}], handler=on_error),
                                 handler=on_error)


def write_shard(out_dir: str, shard: int, samples: Sequence[Sample]) -> dict:
    """Write tar, parquet, then stats (the 'finished' marker); returns the stats."""
    samples = sorted(samples, key=lambda s: s.key)
    p = paths(out_dir, shard)
    write_tar(p.tar, samples)
    write_parquet(p.parquet, samples, SCHEMA)  # reads SCHEMA's columns only: the images stay out
    stats = shard_stats(shard, samples)
    fileio.write_bytes(p.stats, json.dumps(stats, indent=1, sort_keys=True).encode() + b"\n")
    return stats


def numbered_files(out_dir: str, folder: str, suffix: str) -> list[tuple[int, str]]:
    """(shard, path) of DIR/folder/NNNNN{suffix}: the shards that reached a stage (staging, written)."""
    from apache_beam.io.filesystems import FileSystems

    pattern = fileio.join(fileio.escape(fileio.join(out_dir, folder)), f"*{suffix}")
    found = []
    for m in FileSystems.match([pattern])[0].metadata_list:
        name = m.path.rsplit("/", 1)[-1][: -len(suffix)]
        if name.isdigit():
            found.append((int(name), m.path))
    return found


def is_finished(out_dir: str, shard: int) -> bool:
    p = paths(out_dir, shard)
    return all(fileio.exists(path) for path in (p.tar, p.parquet, p.stats))
