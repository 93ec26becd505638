from pipelines.match import Pair
from pipelines.order import assign_keys, bucket_of, bucket_offsets
from wit.shardformat import Status


def test_keys_are_the_uid_order_cut_into_shards():
    uids = sorted(f"{i:04x}{i * 7919 % 65536:012x}" for i in range(0, 65536, 997))
    by_bucket: dict[int, list] = {}
    for uid in uids:
        by_bucket.setdefault(bucket_of(uid), []).append((uid, (Pair("c", f"http://x/{uid}", (1,)), (1,))))
    offsets = bucket_offsets({b: len(m) for b, m in by_bucket.items()})
    got = [s for item in reversed(list(by_bucket.items())) for s in assign_keys(item, offsets, shard_size=10)]
    ordered = sorted(got, key=lambda kv: kv[1].key)
    assert [s.uid for _, s in ordered] == uids  # the global order is the uid order, whatever the bucket order
    assert [shard for shard, _ in ordered] == [i // 10 for i in range(len(uids))]
    assert ordered[13][1].key == "000013" and all(s.status is Status.PENDING for _, s in got)
