import random

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.imagededup import ImageDedup, ImageInfo, Verdict, bands, best_of, hamming, near_duplicates
from wit.shardformat import ErrorKind, Status


def test_bands_pigeonhole_finds_every_close_pair():
    rng = random.Random(0)
    for threshold in (0, 3, 4, 8):
        for _ in range(300):
            a = rng.getrandbits(64)
            b = a
            for bit in rng.sample(range(64), rng.randint(0, threshold)):
                b ^= 1 << bit
            assert set(bands(a, threshold)) & set(bands(b, threshold))


def _infos(n=200, seed=1):
    rng = random.Random(seed)
    infos, base = [], [rng.getrandbits(64) for _ in range(n // 4)]
    for i in range(n):
        h = rng.choice(base)
        for bit in rng.sample(range(64), rng.randint(0, 6)):
            h ^= 1 << bit
        infos.append(ImageInfo(uid=f"{i:04d}", key=f"k{i:04d}", shard=i % 3, sha256=f"s{i % 97}", phash=h,
                               pixels=rng.randint(1, 5) * 1000))
    return infos


def test_near_duplicates_match_brute_force():
    infos = _infos()
    got = near_duplicates(infos, 4)
    for info in infos:
        better = [o for o in infos if o.rank < info.rank and hamming(o.phash, info.phash) <= 4]
        if better:
            assert got[info.uid] == best_of(better)
        else:
            assert info.uid not in got


def _reference_verdicts(infos, threshold=4):
    by_sha: dict[str, list[ImageInfo]] = {}
    for i in infos:
        by_sha.setdefault(i.sha256, []).append(i)
    expected, kept = [], []
    for group in by_sha.values():
        best = best_of(group)
        kept.append(best)
        expected += [(i.shard, Verdict(i.uid, Status.DUPLICATE, ErrorKind.DUPLICATE, "the same bytes as a kept image",
                                       best.key)) for i in group if i is not best]
    by_uid = {i.uid: i for i in infos}
    expected += [(by_uid[uid].shard, Verdict(uid, Status.NEAR_DUPLICATE, ErrorKind.NEAR_DUPLICATE,
                                             f"pHash {hamming(by_uid[uid].phash, b.phash)} bits from a kept image",
                                             b.key))
                 for uid, b in near_duplicates(kept, threshold).items()]
    return expected


@pytest.mark.parametrize("max_group", [10_000, 2])
def test_beam_image_dedup_matches_reference(max_group):
    """With max_group 2, every sha256 shared by three or more images is resolved without grouping."""
    infos = _infos()
    with TestPipeline() as p:
        assert_that(p | beam.Create(infos) | ImageDedup(4, max_group), equal_to(_reference_verdicts(infos)))


def test_messages_carry_no_sample_keys():
    messages = {v.message for _, v in _reference_verdicts(_infos(n=400))}
    assert len(messages) <= 1 + 5  # same bytes, or one of the distances 0..4
