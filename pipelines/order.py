"""Order and shard: selected pairs get their key and shard before anything is downloaded.

The order is the uid's (a hash of the normalised URL), so it is exact and
seed-free, and a rerun knows which shards are finished. Ranking happens in
65,536 buckets of the uid's first hex digits (a few thousand pairs each at 400
million), and a bucket's offset is the number of pairs in the buckets before it.
"""

from __future__ import annotations

import apache_beam as beam

from wit.shardformat import Sample, Status, key_for

BUCKET_HEX_DIGITS = 4


def bucket_of(uid: str) -> int:
    return int(uid[:BUCKET_HEX_DIGITS], 16)


def bucket_offsets(counts: dict[int, int]) -> dict[int, int]:
    offsets, total = {}, 0
    for bucket in sorted(counts):
        offsets[bucket] = total
        total += counts[bucket]
    return offsets


def assign_keys(item, offsets: dict[int, int], shard_size: int):
    """Global index = bucket offset + rank of the uid in its bucket."""
    bucket, members = item
    base = offsets[bucket]
    for rank, (uid, (pair, selected)) in enumerate(sorted(members, key=lambda m: (m[0], m[1][0].url))):
        index = base + rank
        shard = index // shard_size
        yield shard, Sample(key=key_for(shard, index % shard_size, shard_size), uid=uid, url=pair.url,
                            caption=pair.caption, status=Status.PENDING, matched_query_ids=pair.matched,
                            selected_query_ids=selected)


class AssignShards(beam.PTransform):
    """(uid, (Pair, selecting ids)) in; (shard, pending Samples) out, one element per shard."""

    def __init__(self, shard_size: int):
        super().__init__()
        self.shard_size = shard_size

    def expand(self, selected):
        offsets = (
            selected
            | "BucketOne" >> beam.Map(lambda kv: (bucket_of(kv[0]), 1))
            | "BucketCount" >> beam.CombinePerKey(sum)
            | "BucketDict" >> beam.combiners.ToDict()
            | "Offsets" >> beam.Map(bucket_offsets)
        )
        return (
            selected
            | "ByBucket" >> beam.Map(lambda kv: (bucket_of(kv[0]), kv))
            | "GroupBucket" >> beam.GroupByKey()
            | "AssignKeys" >> beam.FlatMap(assign_keys, beam.pvalue.AsSingleton(offsets), self.shard_size)
            | "GroupShard" >> beam.GroupByKey()
        )
