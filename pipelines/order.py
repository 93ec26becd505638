"""Order and shard: selected pairs get their key before anything is downloaded, and the result is the
build's plan.

The order is the uid's (a hash of the normalised URL), so it is exact and
seed-free, and a rerun knows which shards are finished. Ranking happens in
buckets of consecutive uids, one per `BUCKET_BYTES` of input, so none holds more
than a few thousand pairs whatever the dataset's size; a bucket's first index
is the number of pairs in the buckets before it, and shard s holds indices
[s * size, (s + 1) * size).

The plan is DIR/plan/BUCKET.parquet, one file per bucket in key order (key, uid,
url, caption and the matched and selecting query ids), with DIR/plan/_index.json
listing each bucket's first index and rows: what `wit build --plan-only` stops
at, what the download reads a shard from, and a URL list img2dataset takes as
it is. Writing buckets rather than shards spares the selection a second shuffle.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from itertools import chain
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.grouping import ListsPerKey, unpack
from pipelines.records import PAIR, SELECTED, Selected, id_counts, ids_of
from pipelines.counters import CountingDoFn, count_in
from wit.core import fileio, shardformat
from wit.core.runner import relax_gc
from wit.core.shardformat import Sample, Status, keys_for

INDEX = "_index.json"
PLAN_SCHEMA = pa.schema([shardformat.SCHEMA.field(name) for name in
                         ("key", "uid", "url", "caption", "matched_query_ids", "selected_query_ids", "source_file",
                          "source_row")])


def bucket_of(uid: str, buckets: int) -> int:
    """Buckets split the uid range evenly, so a smaller bucket number means smaller uids."""
    return int(uid[:12], 16) * buckets >> 48


def bucket_offsets(counts: dict[int, int]) -> dict[int, int]:
    offsets, total = {}, 0
    for bucket in sorted(counts):
        offsets[bucket] = total
        total += counts[bucket]
    return offsets


def ranked(members: Iterable[Selected]) -> list[Selected]:
    """A bucket's selected pairs (as the plain tuples Beam carries) in key order: by uid (and URL, should two
    URLs share a uid)."""
    return sorted(members, key=lambda m: (m[SELECTED.UID], m[SELECTED.PAIR][PAIR.URL]))


def plan_path(out: str, bucket: int) -> str:
    return fileio.join(out, "plan", f"{bucket:07d}.parquet")


def _id_lists(lists: Sequence[tuple[int, ...]]) -> pa.ListArray:
    """Query-id tuples as an Arrow list column, built from flat values and offsets: faster than pyarrow's
    own conversion of nested Python sequences (bench/scale.py)."""
    lengths = np.fromiter(map(len, lists), np.int32, len(lists))
    return _list_array(lengths, np.fromiter(chain.from_iterable(lists), np.int32, int(lengths.sum())))


def _packed_id_lists(packed: Sequence[bytes]) -> pa.ListArray:
    """`pack_ids`ed query ids as an Arrow list column."""
    return _list_array(id_counts(packed), ids_of(b"".join(packed)))


def _list_array(lengths: np.ndarray, values: np.ndarray) -> pa.ListArray:
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def write_bucket(out: str, bucket: int, first: int, members: Sequence[Selected],
                 shard_size: int, files: Sequence[str] = (), additional: Sequence[str] = ()) -> None:
    """A bucket's ranked pairs, their keys counted from `first`, as one plan file. Written whole to memory
    first: a Parquet writer makes many small writes, which a filesystem stream pays for each."""
    uids, pairs, selected = zip(*members) if members else ((), (), ())
    captions, urls, matched, file_ids, rows, extras = zip(*pairs) if pairs else ((), (), (), (), (), ())
    table = pa.table({
        "key": keys_for(first, len(members), shard_size),
        "uid": uids, "url": urls, "caption": captions,
        "matched_query_ids": _packed_id_lists(matched), "selected_query_ids": _id_lists(selected),
        "source_file": [files[i] if 0 <= i < len(files) else None for i in file_ids],
        "source_row": [r if r >= 0 else None for r in rows],
    }, schema=PLAN_SCHEMA)
    if additional:
        table = shardformat.additional_columns(table, additional, [tuple(zip(additional, e)) for e in extras])
    buffer = io.BytesIO()
    # unique strings: a dictionary only costs time
    pq.write_table(table, buffer, compression="zstd", use_dictionary=False)
    fileio.write_bytes(plan_path(out, bucket), buffer.getvalue())


def write_index(out: str, ranges: Iterable[tuple[int, int, int]]) -> int:
    """DIR/plan/_index.json: (bucket, first index, rows) of every bucket, in key order; returns the rows."""
    ranges = sorted(ranges, key=lambda r: r[1])
    fileio.write_bytes(fileio.join(out, "plan", INDEX), json.dumps(ranges).encode())
    return sum(n for _, _, n in ranges)


def read_index(out: str) -> list[tuple[int, int, int]]:
    return [tuple(r) for r in json.loads(fileio.read_bytes(fileio.join(out, "plan", INDEX)))]


def read_shard(out: str, shard: int, shard_size: int, index: Sequence[tuple[int, int, int]]) -> list[Sample]:
    """Shard `shard`'s pending samples, from the plan files of the buckets it overlaps."""
    start, end = shard * shard_size, (shard + 1) * shard_size
    samples = []
    for bucket, first, rows in index:
        if first >= end or first + rows <= start:
            continue
        table = shardformat.read_parquet(plan_path(out, bucket))
        lo, hi = max(start - first, 0), min(end - first, rows)
        samples += [replace(s, status=Status.PENDING) for s in shardformat.from_table(table.slice(lo, hi - lo))]
    return samples


class AssignShards(beam.PTransform):
    """Lists of selected (uid, Pair, selecting ids) in; every bucket's pairs written to the plan; (bucket, first
    index, rows) out."""

    def __init__(self, shard_size: int, out: str, buckets: int, files: Sequence[str] = (),
                 additional: Sequence[str] = ()):
        super().__init__()
        self.shard_size, self.out, self.buckets, self.files = shard_size, out, buckets, tuple(files)
        self.additional = tuple(additional)

    def expand(self, selected):
        b = self.buckets
        by_bucket = selected | "ListsPerBucket" >> beam.ParDo(ListsPerKey(lambda m: bucket_of(m[SELECTED.UID], b)))
        offsets = (
            by_bucket
            | "ListSizes" >> beam.Map(lambda kv: (kv[0], kv[1][0]))
            | "BucketSizes" >> beam.CombinePerKey(sum)
            | "BucketDict" >> beam.combiners.ToDict()
            | "Offsets" >> beam.Map(bucket_offsets)
        )
        return count_in(by_bucket | "GroupBucket" >> beam.GroupByKey(), "WriteBucket",
                        _WriteBucket(self.out, self.shard_size, self.files, self.additional),
                        beam.pvalue.AsSingleton(offsets))


class _WriteBucket(CountingDoFn):
    def __init__(self, out: str, shard_size: int, files: Sequence[str] = (), additional: Sequence[str] = ()):
        self.out, self.shard_size, self.files, self.additional = out, shard_size, files, additional

    def setup(self):
        relax_gc()

    def process(self, item, offsets):
        bucket, lists = item
        members = ranked(m for _n, packed in lists for m in unpack(packed))
        self.tally.key_size("order_bucket", len(members))
        write_bucket(self.out, bucket, offsets[bucket], members, self.shard_size, self.files, self.additional)
        yield bucket, offsets[bucket], len(members)


class ReadPlan(beam.PTransform):
    """Shard numbers in; (shard, pending samples) out, read from the plan."""

    def __init__(self, out: str, shard_size: int):
        super().__init__()
        self.out, self.shard_size = out, shard_size

    def expand(self, shards):
        return count_in(shards, "ReadShard", _ReadShard(self.out, self.shard_size))


class _ReadShard(CountingDoFn):
    def __init__(self, out: str, shard_size: int):
        self.out, self.shard_size = out, shard_size

    def setup(self):
        self.index = read_index(self.out)

    def process(self, shard: int):
        samples = read_shard(self.out, shard, self.shard_size, self.index)
        self.tally.key_size("shard", len(samples))
        yield shard, samples
