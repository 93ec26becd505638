"""Reading candidate (image URL, caption) pairs from Parquet, JSONL or CSV/TSV.

Column names are configurable as in img2dataset (`url_col`, `caption_col`).
A bad row becomes a `Reject` naming its file and row, so one bad row never
costs the rest of the file. A file damaged part-way (a truncated or corrupt
compressed stream, a Parquet row group that does not decode, columns that
cannot be the url and caption) keeps the rows read before the damage and
yields one `Reject` with `damaged=True`, naming the row where reading stopped
and why: the job goes on without the rest, counts it as `damaged_files` and
lists it in stats.json; `strict=True` (`wit build --strict`) stops the job
instead with `CandidateFileError`. A file that cannot be opened at all (no
header, not Parquet) always stops it.

`ReadCandidates` is the job's first stage: file paths in, candidates and
rejects out, counted as `candidates` and `rejected_rows`. A file is read in
parts (Parquet row groups, 64 MiB byte ranges of JSONL and TSV), so one 50 GB
file is many work items, and every row keeps its number in its file.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import repeat
from typing import BinaryIO, Iterable, Iterator, Optional, Sequence, Union
from urllib.parse import urlsplit

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines.sizing import READ_BATCH, SPLIT_BYTES
from pipelines.counters import MAIN, CountingDoFn, count_in, counter
from wit.core import fileio
from wit.core.errors import InputError
from wit.core.runner import relax_gc
from wit.core.text import clean_caption

FORMATS = ("parquet", "jsonl", "csv", "tsv")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".deflate", ".lzma", ".xz")
# Read with Python's own modules, which raise on a truncated or corrupt stream (Beam's stop quietly).
_STDLIB_DECOMPRESS = {".gz": lambda raw: gzip.GzipFile(fileobj=raw), ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile,
                      ".lzma": lzma.LZMAFile}
_DAMAGE = (EOFError, OSError, zlib.error, lzma.LZMAError)
MAX_URL_CHARS = 16_384
MAX_CAPTION_CHARS = 65_536
# Python's csv refuses fields over 128 KiB with an error that ends the file; fields are read whole instead and
# a row whose url or caption is over the limits above is rejected on its own.
csv.field_size_limit(2**31 - 1)


class CandidateFileError(InputError):
    """A candidate file that cannot be read at all."""


@dataclass(frozen=True)
class Candidate:
    url: str
    caption: str
    source: str
    row: int
    additional: tuple = ()  # values of the columns `wit build --save-additional-columns` names, in order


@dataclass(frozen=True)
class Reject:
    source: str
    row: int
    reason: str
    damaged: bool = False  # the file stops being readable at `row`: the rest of it is not read

    def __str__(self) -> str:
        if self.damaged:
            return f"{self.source}: damaged at row {self.row}: {self.reason}; the rows before it were read"
        return f"{self.source}: row {self.row}: {self.reason}"


def detect_format(path: str) -> str:
    name = path.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    for fmt, exts in (("parquet", (".parquet", ".pq")), ("jsonl", (".jsonl", ".json", ".ndjson")),
                      ("csv", (".csv",)), ("tsv", (".tsv", ".txt"))):
        if name.endswith(exts):
            return fmt
    raise CandidateFileError(f"{path}: cannot tell the format from the extension; pass --input-format")


def _has_http_host(url: str) -> bool:
    """http(s) with a host, as urlsplit would read it, without parsing the rest (most URLs are plain)."""
    head = url[:8].lower()
    start = 7 if head.startswith("http://") else 8 if head.startswith("https://") else 0
    # brackets (an IPv6 literal) and non-ASCII (NFKC-changing host characters) are for urlsplit to judge: later
    # stages split every URL, and one it refuses must not get past here
    if start and url.isascii() and "[" not in url and "]" not in url:
        return len(url) > start and url[start] not in "/?#"
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def _valid_unicode(text: str) -> bool:
    """False for lone surrogates (JSON's "\\ud800" escapes), which no file can encode as UTF-8."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate(url: object, caption: object, source: str, row: int,
             additional: tuple = ()) -> Union[Candidate, Reject]:
    """Turn one raw row into a Candidate, or a Reject saying why not."""
    if url is None or isinstance(url, str) and not url.strip():
        return Reject(source, row, "missing url")
    if not isinstance(url, str):
        return Reject(source, row, f"url is a {type(url).__name__}, not text")
    url = url.strip()
    if len(url) > MAX_URL_CHARS:
        return Reject(source, row, f"url of {len(url):,} characters (over {MAX_URL_CHARS:,})")
    if not _valid_unicode(url):
        return Reject(source, row, "url holds a lone surrogate (invalid Unicode)")
    if not _has_http_host(url):
        return Reject(source, row, f"not an http(s) url: {url[:200]!r}")
    if caption is None:
        return Reject(source, row, "missing caption")
    if not isinstance(caption, str):
        return Reject(source, row, f"caption is a {type(caption).__name__}, not text")
    if len(caption) > MAX_CAPTION_CHARS:
        return Reject(source, row, f"caption of {len(caption):,} characters (over {MAX_CAPTION_CHARS:,})")
    if not _valid_unicode(caption):
        return Reject(source, row, "caption holds a lone surrogate (invalid Unicode)")
    text = clean_caption(caption)
    if not text:
        return Reject(source, row, "empty caption")
    return Candidate(url, text, source, row, additional)




@dataclass(frozen=True)
class Part:
    """A piece of one candidate file that one worker reads: row groups [start, end) of a Parquet file, or
    the lines starting in bytes [start, end) of a text file (end -1: to the end). `first_row` is the
    part's first row number (for text, its first line's), None until counted."""

    path: str
    fmt: str
    start: int
    end: int
    first_row: Optional[int]
    header: Optional[tuple[str, ...]] = None  # CSV/TSV: the file's column names


def _compressed(path: str) -> bool:
    return path.lower().endswith(_COMPRESSION_SUFFIXES)


@contextmanager
def _open(path: str, fmt: str) -> Iterator[BinaryIO]:
    # Parquet and byte ranges need a seekable, uncompressed stream; compressed text is read whole.
    opener = _STDLIB_DECOMPRESS.get(path[path.rfind("."):].lower())
    if fmt != "parquet" and _compressed(path) and opener is None:  # .zst, .deflate: Beam's decompressors
        with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as stream:
            yield stream
        return
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        if fmt == "parquet" or opener is None:
            yield raw
        else:
            with opener(raw) as stream:
                yield stream


class _Damaged(Exception):
    """The file cannot be read past this point; the message says why."""


def _damage(e: BaseException, path: str) -> str:
    if isinstance(e, _Damaged):
        return str(e)
    if isinstance(e, EOFError):
        return "the compressed stream ends early (truncated file)"
    if any(m in str(e) for m in ("Not a gzipped file", "Invalid data stream", "Input format not supported")):
        return f"not {path.rsplit('.', 1)[-1]} data as its name says ({e})"
    return f"corrupt compressed data ({type(e).__name__}: {e})"


def _parquet(stream: BinaryIO, path: str):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(stream)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise CandidateFileError(f"{path}: not a readable Parquet file: {e}") from e


def split_file(path: str, size: int, fmt: str = "auto", split_bytes: int = SPLIT_BYTES) -> list[Part]:
    """The parts a file is read in: each Parquet row group; byte ranges of `split_bytes` for uncompressed JSONL
    and TSV (whose records are single lines); one part for CSV (a quoted field may hold a newline) and for
    compressed files."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise CandidateFileError(f"{path}: unknown input format {fmt!r} (one of {', '.join(FORMATS)})")
    if fmt == "parquet":
        with _open(path, fmt) as stream:
            meta = _parquet(stream, path).metadata
        parts, row = [], 0
        for i in range(meta.num_row_groups):
            parts.append(Part(path, fmt, i, i + 1, row))
            row += meta.row_group(i).num_rows
        return parts
    header = None
    if fmt in ("csv", "tsv"):
        try:
            with _open(path, fmt) as stream:
                header = _header(stream.readline(), path, fmt)
        except _DAMAGE:
            pass  # read_part meets the damage again and reports it where the rows are counted
    if fmt == "csv" or _compressed(path) or size <= split_bytes:
        return [Part(path, fmt, 0, -1, 0, header)]
    return [Part(path, fmt, start, min(start + split_bytes, size), 0 if start == 0 else None, header)
            for start in range(0, size, split_bytes)]


def lines_in(part: Part) -> int:
    """How many lines start in the part's byte range (a line starts at 0 and after every newline)."""
    with _open(part.path, part.fmt) as stream:
        begin = max(part.start - 1, 0)
        stream.seek(begin)
        remaining, newlines = part.end - 1 - begin, 0
        while remaining > 0:
            chunk = stream.read(min(remaining, 1 << 20))
            if not chunk:
                break
            newlines += chunk.count(b"\n")
            remaining -= len(chunk)
    return newlines + (1 if part.start == 0 else 0)


def number_parts(parts: Sequence[Part], lines: Sequence[int]) -> list[Part]:
    """One file's parts with their first row numbers, given the lines starting in each."""
    numbered, row = [], 0
    for part, n in sorted(zip(parts, lines), key=lambda pn: pn[0].start):
        numbered.append(replace(part, first_row=row))
        row += n
    return numbered


def _lines(stream: BinaryIO, part: Part) -> Iterator[bytes]:
    """The lines starting in the part's byte range, each with its newline."""
    if part.start > 0:
        stream.seek(part.start - 1)
        if stream.read(1) != b"\n":
            stream.readline()  # the end of a line that started in the part before
    pos = stream.tell() if part.end >= 0 else 0
    while part.end < 0 or pos < part.end:
        line = stream.readline()
        if not line:
            return
        pos += len(line)
        yield line


def _header(line: bytes, path: str, fmt: str) -> Optional[tuple[str, ...]]:
    text = line.decode("utf-8", errors="replace").rstrip("\r\n").removeprefix("\ufeff")  # Excel's BOM
    if not text:
        return None
    return tuple(next(csv.reader([text]))) if fmt == "csv" else tuple(text.split("\t"))


def _require_columns(path: str, names: Sequence[str], url_col: str, caption_col: str,
                     additional: Sequence[str] = ()) -> None:
    missing = [c for c in (url_col, caption_col, *additional) if c not in names]
    if missing:
        raise CandidateFileError(
            f"{path}: missing column(s) {', '.join(missing)}; columns are {', '.join(map(str, names))} "
            "(set --url-col / --caption-col / --save-additional-columns)")


def read_part(part: Part, url_col: str = "url", caption_col: str = "caption", strict: bool = False,
              additional: Sequence[str] = ()) -> Iterator[Union[Candidate, Reject]]:
    """A Candidate or a Reject per row of the part (rows counted from 0 in the file, as in pandas; CSV and
    TSV rows after the header); then, if the file is damaged, one Reject(damaged=True) where it stopped."""
    last = None
    try:
        for item in _read_rows(part, url_col, caption_col, tuple(additional)):
            last = item.row
            yield item
    except (_Damaged, *_DAMAGE) as e:
        at = part.first_row if last is None else last + 1
        reason = _damage(e, part.path)
        if strict:
            raise CandidateFileError(f"{part.path}: damaged at row {at}: {reason}") from e
        yield Reject(part.path, at, reason, damaged=True)


def _parquet_columns(pf, path: str, url_col: str, caption_col: str, additional: Sequence[str]) -> None:
    import pyarrow as pa

    names = pf.schema_arrow.names
    _require_columns(path, names, url_col, caption_col, additional)
    for col in (url_col, caption_col):
        if names.count(col) > 1:
            raise _Damaged(f"{names.count(col)} columns are named {col!r}; which one holds the {col} is unclear")
        kind = pf.schema_arrow.field(col).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
            raise _Damaged(f"column {col!r} holds {kind}, not text (set --url-col / --caption-col)")


def _read_rows(part: Part, url_col: str, caption_col: str,
               additional: tuple[str, ...] = ()) -> Iterator[Union[Candidate, Reject]]:
    path = part.path
    with _open(path, part.fmt) as stream:
        if part.fmt == "parquet":
            pf = _parquet(stream, path)
            _parquet_columns(pf, path, url_col, caption_col, additional)
            row = part.first_row
            batches = pf.iter_batches(columns=[url_col, caption_col, *additional], batch_size=8192,
                                      row_groups=list(range(part.start, part.end)))
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                except Exception as e:  # pyarrow raises several types for corrupt pages
                    raise _Damaged(f"corrupt Parquet data: {e}") from e
                columns = [column.to_pylist() for column in batch.columns]
                extras = zip(*columns[2:]) if additional else repeat(())
                for url, caption, extra in zip(columns[0], columns[1], extras):
                    yield validate(url, caption, path, row, extra)
                    row += 1
        elif part.fmt == "jsonl":
            yield from _jsonl(_lines(stream, part), part, url_col, caption_col, additional)
        elif part.fmt == "tsv":
            yield from _tsv(_lines(stream, part), part, url_col, caption_col, additional)
        else:
            yield from _csv(stream, part, url_col, caption_col, additional)


def _jsonl(lines: Iterable[bytes], part: Part, url_col: str, caption_col: str, additional: tuple[str, ...] = ()):
    for row, raw in enumerate(lines, part.first_row):
        line = raw.decode("utf-8", errors="replace")
        if row == 0:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            yield Reject(part.path, row, f"invalid JSON: {e.msg}")
            continue
        except RecursionError:
            yield Reject(part.path, row, "JSON nested too deeply to read")
            continue
        if not isinstance(record, dict):
            yield Reject(part.path, row, "JSON line is not an object")
            continue
        yield validate(record.get(url_col), record.get(caption_col), part.path, row,
                       tuple(record.get(c) for c in additional))


def _tsv(lines: Iterable[bytes], part: Part, url_col: str, caption_col: str, additional: tuple[str, ...] = ()):
    """Tab-separated, one record a line, no quoting (img2dataset's reading): a field holds no tab or newline."""
    if part.header is None:  # an empty file; or a damaged one, which reading its first line says
        next(iter(lines), None)
        return
    _require_columns(part.path, part.header, url_col, caption_col, additional)
    ui, ci, width = part.header.index(url_col), part.header.index(caption_col), len(part.header)
    ai = [part.header.index(c) for c in additional]
    for line_no, raw in enumerate(lines, part.first_row):
        if line_no == 0:
            continue  # the header
        fields = raw.decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
        if len(fields) != width:
            yield Reject(part.path, line_no - 1, f"{len(fields)} fields, header has {width}")
            continue
        yield validate(fields[ui], fields[ci], part.path, line_no - 1, tuple(fields[i] for i in ai))


def _csv(stream: BinaryIO, part: Part, url_col: str, caption_col: str, additional: tuple[str, ...] = ()):
    reader = csv.reader(fileio.iter_lines(stream))
    try:
        header = next(reader)
    except StopIteration:
        return
    if header:
        header[0] = header[0].removeprefix("\ufeff")  # Excel writes a byte-order mark first
    _require_columns(part.path, header, url_col, caption_col, additional)
    ui, ci = header.index(url_col), header.index(caption_col)
    ai = [header.index(c) for c in additional]
    row = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # a NUL byte, a bad quote under strict dialects: this record only
            yield Reject(part.path, row, f"unreadable CSV record (line {reader.line_num}): {e}")
            row += 1
            continue
        if len(fields) != len(header):
            yield Reject(part.path, row, f"{len(fields)} fields, header has {len(header)}")
        else:
            yield validate(fields[ui], fields[ci], part.path, row, tuple(fields[i] for i in ai))
        row += 1


def read_path(path: str, fmt: str = "auto", url_col: str = "url", caption_col: str = "caption",
              split_bytes: int = SPLIT_BYTES, strict: bool = False,
              additional: Sequence[str] = ()) -> Iterator[Union[Candidate, Reject]]:
    """A whole file, part after part, as the job reads it (local, gs://, s3://, hdfs://...)."""
    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    parts = split_file(path, size, fmt, split_bytes)
    if any(p.first_row is None for p in parts):
        parts = number_parts(parts, [lines_in(p) for p in parts])
    for part in parts:
        yield from read_part(part, url_col, caption_col, strict, additional)




class ReadCandidates(beam.PTransform):
    """(path, size) of every candidate file in (the pipeline's root); (lists of up to READ_BATCH candidates,
    rejects) out.

    Files are cut into parts (`split_file`), so one large file is read by many workers; the parts of a
    text file are numbered by counting the lines before them, so every row keeps its number in the file.
    """

    def __init__(self, files: Sequence[tuple[str, int]], fmt: str, url_col: str, caption_col: str,
                 split_bytes: int = SPLIT_BYTES, strict: bool = False, additional: Sequence[str] = ()):
        super().__init__()
        self.files, self.fmt, self.url_col, self.caption_col = sorted(files), fmt, url_col, caption_col
        self.split_bytes, self.strict, self.additional = split_bytes, strict, tuple(additional)

    def expand(self, root):
        parts = (
            root
            | "CandidateFiles" >> beam.Create(self.files)
            | "SpreadFiles" >> beam.Reshuffle()
            | "SplitFiles" >> beam.FlatMap(_split, self.fmt, self.split_bytes).with_outputs(_UNNUMBERED,
                                                                                            main="numbered")
        )
        numbered = (
            parts[_UNNUMBERED]
            | "CountLines" >> beam.Map(lambda p: (p.path, (p, lines_in(p))))
            | "PartsOfFile" >> beam.GroupByKey()
            | "NumberParts" >> beam.FlatMap(lambda kv: number_parts(*zip(*kv[1])))
        )
        spread = (parts.numbered, numbered) | "AllParts" >> beam.Flatten() | "SpreadParts" >> beam.Reshuffle()
        read = count_in(spread, "ReadPart", _ReadPart(self.url_col, self.caption_col, self.strict, self.additional),
                        tags=[_REJECTS])
        return read[MAIN], read[_REJECTS]


_REJECTS = "rejects"
_UNNUMBERED = "unnumbered"


def _split(file: tuple[str, int], fmt: str, split_bytes: int):
    parts = split_file(file[0], file[1], fmt, split_bytes)
    counted = any(p.first_row is None for p in parts)  # then every part of the file is counted, the first too
    for part in parts:
        yield beam.pvalue.TaggedOutput(_UNNUMBERED, part) if counted else part


class _ReadPart(CountingDoFn):
    rows, rejected, damaged = counter("candidates"), counter("rejected_rows"), counter("damaged_files")

    def __init__(self, url_col: str, caption_col: str, strict: bool = False, additional: Sequence[str] = ()):
        self.url_col, self.caption_col, self.strict, self.additional = url_col, caption_col, strict, additional

    def setup(self):
        relax_gc()

    def process(self, part: Part):
        n = bad = 0
        batch: list[Candidate] = []
        for item in read_part(part, self.url_col, self.caption_col, self.strict, self.additional):
            if isinstance(item, Reject):
                if item.damaged:
                    self.tally.count(self.damaged)
                else:
                    n += 1
                    bad += 1
                yield beam.pvalue.TaggedOutput(_REJECTS, item)
            else:
                n += 1
                batch.append(item)
                if len(batch) == READ_BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch
        self.tally.count(self.rows, n)
        self.tally.count(self.rejected, bad)
