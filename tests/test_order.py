import pytest

from pipelines.records import Pair, pack_ids
from pipelines.sizing import BUCKET_BYTES, plan_buckets
from pipelines.order import (bucket_of, bucket_offsets, ranked, read_index, read_shard,
                             write_bucket, write_index)
from wit.core.shardformat import Status


def _members(n=200):
    uids = sorted(f"{i * 2654435761 % 2**64:016x}" for i in range(1, n + 1))
    return [(uid, Pair(f"caption {uid}", f"http://x/{uid}", pack_ids((1, 2))), (2,)) for uid in uids]


@pytest.mark.parametrize("buckets", [1, 7, 300])
def test_the_plan_is_the_uid_order_cut_into_shards_whatever_the_buckets(tmp_path, buckets):
    members = _members()
    by_bucket: dict[int, list] = {}
    for m in reversed(members):
        by_bucket.setdefault(bucket_of(m[0], buckets), []).append(m)
    offsets = bucket_offsets({b: len(ms) for b, ms in by_bucket.items()})
    for b, ms in by_bucket.items():
        write_bucket(str(tmp_path), b, offsets[b], ranked(ms), shard_size=10)
    total = write_index(str(tmp_path), [(b, offsets[b], len(ms)) for b, ms in by_bucket.items()])
    index = read_index(str(tmp_path))
    shards = [read_shard(str(tmp_path), s, 10, index) for s in range(-(-total // 10))]
    assert [s.uid for shard in shards for s in shard] == [m[0] for m in members]  # the uid order
    assert [len(shard) for shard in shards] == [10] * 20
    assert shards[1][3].key == "000013" and all(s.status is Status.PENDING for s in shards[0])
    assert shards[0][0].matched_query_ids == (1, 2) and shards[0][0].selected_query_ids == (2,)


def test_buckets_grow_with_the_input_so_each_stays_the_same_size():
    assert plan_buckets(0) == 1 and plan_buckets(2 * BUCKET_BYTES - 1) == 1 and plan_buckets(2 * BUCKET_BYTES) == 2
    assert plan_buckets(200 * 10**9) == 800_000  # 200 GB of candidates
    assert bucket_of("0" * 16, 800_000) == 0 and bucket_of("f" * 16, 800_000) == 799_999
