"""Reading candidate (image URL, caption) pairs from Parquet, JSONL or CSV/TSV.

Column names are configurable as in img2dataset (`url_col`, `caption_col`).
A bad row becomes a `Reject` naming its file and row, so one bad row never
costs the rest of the file; a file that cannot be parsed at all raises
`CandidateFileError` naming the file.

`ReadCandidates` is the job's first stage: file paths in, candidates and
rejects out, counted as `candidates` and `rejected_rows`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Sequence, Union
from urllib.parse import urlsplit

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines.stages import counter
from wit import fileio
from wit.errors import InputError
from wit.text import clean_caption

FORMATS = ("parquet", "jsonl", "csv", "tsv")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".deflate", ".lzma", ".xz")


class CandidateFileError(InputError):
    """A candidate file that cannot be read at all."""


@dataclass(frozen=True)
class Candidate:
    url: str
    caption: str
    source: str
    row: int


@dataclass(frozen=True)
class Reject:
    source: str
    row: int
    reason: str

    def __str__(self) -> str:
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


def validate(url: object, caption: object, source: str, row: int) -> Union[Candidate, Reject]:
    """Turn one raw row into a Candidate, or a Reject saying why not."""
    if not isinstance(url, str) or not url.strip():
        return Reject(source, row, "missing url")
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return Reject(source, row, f"not an http(s) url: {url[:200]!r}")
    if not isinstance(caption, str):
        return Reject(source, row, "missing caption")
    text = clean_caption(caption)
    if not text:
        return Reject(source, row, "empty caption")
    return Candidate(url, text, source, row)


def _rows_parquet(stream: BinaryIO, path: str, url_col: str, caption_col: str) -> Iterator[tuple[object, object]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(stream)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise CandidateFileError(f"{path}: not a readable Parquet file: {e}") from e
    _require_columns(path, pf.schema_arrow.names, url_col, caption_col)
    try:
        for batch in pf.iter_batches(columns=[url_col, caption_col], batch_size=8192):
            yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist())
    except Exception as e:
        raise CandidateFileError(f"{path}: corrupt Parquet data: {e}") from e


def _require_columns(path: str, names: list[str], url_col: str, caption_col: str) -> None:
    missing = [c for c in (url_col, caption_col) if c not in names]
    if missing:
        raise CandidateFileError(
            f"{path}: missing column(s) {', '.join(missing)}; columns are {', '.join(map(str, names))} "
            "(set --url-col / --caption-col)")


def iter_file(stream: BinaryIO, path: str, fmt: str, url_col: str = "url",
              caption_col: str = "caption") -> Iterator[Union[Candidate, Reject]]:
    """Yield a Candidate or a Reject per row (rows counted from 0, as in pandas)."""
    if fmt == "parquet":
        for row, (url, caption) in enumerate(_rows_parquet(stream, path, url_col, caption_col)):
            yield validate(url, caption, path, row)
    elif fmt == "jsonl":
        for row, line in enumerate(fileio.iter_lines(stream)):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield Reject(path, row, f"invalid JSON: {e.msg}")
                continue
            if not isinstance(record, dict):
                yield Reject(path, row, "JSON line is not an object")
                continue
            yield validate(record.get(url_col), record.get(caption_col), path, row)
    elif fmt in ("csv", "tsv"):
        reader = csv.reader(fileio.iter_lines(stream), delimiter="," if fmt == "csv" else "\t")
        try:
            header = next(reader)
        except StopIteration:
            return
        _require_columns(path, header, url_col, caption_col)
        ui, ci = header.index(url_col), header.index(caption_col)
        try:
            for row, fields in enumerate(reader):
                if len(fields) != len(header):
                    yield Reject(path, row, f"{len(fields)} fields, header has {len(header)}")
                    continue
                yield validate(fields[ui], fields[ci], path, row)
        except csv.Error as e:
            raise CandidateFileError(f"{path}: line {reader.line_num}: {e}") from e
    else:
        raise CandidateFileError(f"{path}: unknown input format {fmt!r} (one of {', '.join(FORMATS)})")


def read_path(path: str, fmt: str = "auto", url_col: str = "url",
              caption_col: str = "caption") -> Iterator[Union[Candidate, Reject]]:
    """Read one file through Beam's FileSystems (local, gs://, s3://, hdfs://...)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    # Parquet needs a seekable, uncompressed stream; text formats may be compressed.
    compression = CompressionTypes.UNCOMPRESSED if fmt == "parquet" else CompressionTypes.AUTO
    with FileSystems.open(path, compression_type=compression) as stream:
        yield from iter_file(stream, path, fmt, url_col, caption_col)


class ReadCandidates(beam.PTransform):
    """Candidate files in (the pipeline's root); (candidates, rejects) out."""

    def __init__(self, files: Sequence[str], fmt: str, url_col: str, caption_col: str):
        super().__init__()
        self.files, self.fmt, self.url_col, self.caption_col = sorted(files), fmt, url_col, caption_col

    def expand(self, root):
        read = (
            root
            | "CandidateFiles" >> beam.Create(self.files)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadFile" >> beam.ParDo(_ReadFile(self.fmt, self.url_col, self.caption_col))
            .with_outputs(_REJECTS, main="candidates")
        )
        return read.candidates, read[_REJECTS]


_REJECTS = "rejects"


class _ReadFile(beam.DoFn):
    rows, rejected = counter("candidates"), counter("rejected_rows")

    def __init__(self, fmt: str, url_col: str, caption_col: str):
        self.fmt, self.url_col, self.caption_col = fmt, url_col, caption_col

    def process(self, path: str):
        n = bad = 0
        for item in read_path(path, self.fmt, self.url_col, self.caption_col):
            n += 1
            if isinstance(item, Reject):
                bad += 1
                yield beam.pvalue.TaggedOutput(_REJECTS, item)
            else:
                yield item
        self.rows.inc(n)
        self.rejected.inc(bad)
