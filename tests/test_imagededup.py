import random

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.sizing import LIMIT, TARGET_GROUP
from pipelines.imagededup import (ImageDedup, best_found, find_near, found_rows,
                                  hamming, near_duplicates, shard_verdicts, tables_for)
from pipelines.records import EvalImage, ImageInfo
from wit.core.shardformat import Status


def _flip(h: int, bits: int, rng: random.Random) -> int:
    for bit in rng.sample(range(64), bits):
        h ^= 1 << bit
    return h


def _best_of(infos):
    return min(infos, key=lambda i: i.rank)


@pytest.mark.parametrize("threshold", [0, 1, 3, 4, 6, 8])
@pytest.mark.parametrize("images", [100, 10**6, 10**9])
def test_every_pair_within_the_threshold_shares_a_key_in_some_table(threshold, images):
    tables = tables_for(threshold, images)
    assert len(tables.masks) <= 64 and len(set(tables.masks)) == len(tables.masks)
    rng = random.Random(threshold)
    for _ in range(300):
        a = rng.getrandbits(64)
        b = _flip(a, rng.randint(0, threshold), rng)
        assert any(ka == kb for ka, kb in zip(tables.keys(a), tables.keys(b)))


def test_keys_grow_with_the_number_of_images_so_groups_stay_small():
    small, large, larger = tables_for(4, 200), tables_for(4, 4 * 10**8), tables_for(4, 10**10)
    assert len(small.masks) == 5  # threshold + 1 blocks while that keeps groups small
    for n, t in ((4 * 10**8, large), (10**10, larger)):  # a group of uniform hashes: at most TARGET_GROUP
        assert n / 2 ** t.key_bits <= TARGET_GROUP < LIMIT and len(t.masks) <= 64
    assert len(large.masks) == 15 and len(larger.masks) == 35  # 20- and 27-bit keys


def _infos(n=200, seed=1, sha_mod=97):
    rng = random.Random(seed)
    infos, base = [], [rng.getrandbits(64) for _ in range(n // 4)]
    for i in range(n):
        h = _flip(rng.choice(base), rng.randint(0, 6), rng)
        infos.append(ImageInfo(uid=f"{i:016x}", key=f"{i:05d}", shard=i % 3, sha256=f"s{i % sha_mod}", phash=h,
                               pixels=rng.randint(1, 5) * 1000))
    return infos


def test_near_duplicates_match_brute_force():
    infos = _infos()
    got = near_duplicates(infos, 4)
    for info in infos:
        better = [o for o in infos if o.rank < info.rank and hamming(o.phash, info.phash) <= 4]
        if better:
            assert got[info.uid] == _best_of(better)
        else:
            assert info.uid not in got


@pytest.mark.parametrize("threshold", [0, 2, 4, 7])
def test_the_tables_give_the_reference_verdicts(threshold):
    infos = _infos(n=600, seed=threshold)
    got = find_near(infos, threshold)
    want = near_duplicates(infos, threshold)
    assert {uid: v.duplicate_of for uid, v in got.items()} == {uid: b.key for uid, b in want.items()}
    by_uid = {i.uid: i for i in infos}
    for uid, v in got.items():  # the distance is verified, and the message says it
        assert v.message == f"pHash {hamming(by_uid[uid].phash, want[uid].phash)} bits from a kept image"


def test_a_degenerate_hash_is_bounded_and_still_drops_every_copy():
    rng = random.Random(5)
    blank = rng.getrandbits(64)
    infos = [ImageInfo(f"{i:016x}", f"{i:05d}", 0, f"s{i}", blank, 100 + i) for i in range(3 * 50)]  # one value
    infos += [ImageInfo(f"{i + 5000:016x}", f"{i + 5000:05d}", 0, f"t{i}", _flip(blank, 1 + i % 3, rng), 10**6)
              for i in range(10)]  # nearly the same, better ranked
    got = find_near(infos, 4, limit=50)
    best = min(infos, key=lambda i: i.rank)
    assert set(got) == {i.uid for i in infos} - {best.uid}  # every image is within 4 bits of the best
    assert sum(v.degenerate for v in got.values()) == len(got)  # all found by the bounded rule...
    exact = find_near(infos, 4)
    assert not any(v.degenerate for v in exact.values()) and set(exact) == set(got)  # ...with the same drops


def test_images_near_an_evaluation_image_are_dropped_naming_it():
    rng = random.Random(7)
    infos = _infos(n=300, seed=3)
    refs = [EvalImage("cifar", f"{n:05d}", _flip(infos[n].phash, 2, rng)) for n in (4, 40, 80)]
    got = find_near(infos, 4, refs)
    near_ref = {i.uid: min((r for r in refs if hamming(r.phash, i.phash) <= 4), key=lambda r: r.key, default=None)
                for i in infos}
    for uid, ref in near_ref.items():
        if ref is not None:
            assert got[uid].status is Status.EVAL_DUPLICATE and got[uid].source == "cifar"
            assert got[uid].message.endswith(f"from evaluation image cifar/{got[uid].duplicate_of.split('/')[1]}")
    want = near_duplicates(infos, 4)  # the others: as if there were no evaluation set
    assert {uid: v.duplicate_of for uid, v in got.items() if near_ref[uid] is None} == \
        {uid: b.key for uid, b in want.items() if near_ref[uid] is None}
    assert sum(ref is not None for ref in near_ref.values()) >= 3


def test_an_image_found_in_several_tables_names_the_best_ranked_image_it_is_near():
    rows = [(7, 0, 2, False, False, -1, 500, 9, 11),  # near a kept image of 500 pixels
            (7, 0, 3, False, False, -1, 900, 12, 13),  # near a better one, found in another table
            (8, 1, 1, False, False, -1, 900, 12, 13),
            (8, 1, 4, False, False, 2, 0, 0, 0)]  # near an evaluation image: that comes first
    best = best_found(found_rows(rows))
    assert best.uid.tolist() == [7, 8] and best.b_key.tolist() == [13, 0] and best.ref.tolist() == [-1, 2]


def _reference_verdicts(infos, threshold=4):
    by_sha: dict[str, list[ImageInfo]] = {}
    for i in infos:
        by_sha.setdefault(i.sha256, []).append(i)
    expected, kept = [], []
    for group in by_sha.values():
        best = _best_of(group)
        kept.append(best)
        expected += [(i.shard, i.uid, Status.DUPLICATE, "the same bytes as a kept image", best.key)
                     for i in group if i is not best]
    by_uid = {i.uid: i for i in infos}
    expected += [(by_uid[uid].shard, uid, Status.NEAR_DUPLICATE,
                  f"pHash {hamming(by_uid[uid].phash, b.phash)} bits from a kept image", b.key)
                 for uid, b in near_duplicates(kept, threshold).items()]
    return expected


def _final(shard, lists):
    return [(shard, v.uid, v.status, v.message, v.duplicate_of) for v in shard_verdicts(lists, (), 5).values()]


@pytest.mark.parametrize("max_group,images", [(10_000, 200), (2, 200), (10_000, 5 * 10**6)])
def test_beam_image_dedup_matches_reference(max_group, images):
    """With max_group 2, every sha256 shared by three or more images is resolved without grouping; with
    5 million expected images, the tables have longer keys and partitions spread the images."""
    infos = _infos()
    expected = _reference_verdicts(infos)
    with TestPipeline() as p:
        verdicts = (p | beam.Create(infos) | ImageDedup(4, images, max_group=max_group)
                    | beam.GroupByKey() | beam.FlatMapTuple(_final))
        assert_that(verdicts, equal_to(expected))


def test_messages_carry_no_sample_keys():
    messages = {v[3] for v in _reference_verdicts(_infos(n=400))}
    assert len(messages) <= 1 + 5  # same bytes, or one of the distances 0..4
