import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from pipelines import textdedup
from pipelines.records import Pair, pack_ids
from pipelines.textdedup import CAPTION_REPORT, CaptionDedup

SPAM = [f"Buy cheap red shoes online at the best price in town today | ShoeShop {year}" for year in range(2000, 2010)]
OTHER = ["a photo of a dog playing in the snow", "sunset over the mountains with a lake", "a red circle"]


def _true_jaccard(a: str, b: str) -> float:
    sa, sb = textdedup.shingles(a), textdedup.shingles(b)
    return len(sa & sb) / len(sa | sb)


def test_minhash_estimates_the_jaccard_similarity():
    a, b = SPAM[0], SPAM[1]
    est = textdedup.similarity(textdedup.sketch("a", a, 0), textdedup.sketch("b", b, 0))
    assert abs(est - _true_jaccard(a, b)) < 0.15
    assert textdedup.similarity(textdedup.sketch("a", OTHER[0], 0), textdedup.sketch("b", OTHER[1], 0)) < 0.1
    # case, punctuation and spacing do not make captions different
    same = textdedup.similarity(textdedup.sketch("a", "A red  circle!", 0), textdedup.sketch("b", "a red circle", 0))
    assert same == 1.0


def test_similar_captions_share_a_band_and_the_lowest_priority_is_kept():
    sketches = [textdedup.sketch(f"u{i}", c, seed=0) for i, c in enumerate(SPAM)]
    keys = [set(textdedup.band_keys(s, 0.7)) for s in sketches]
    assert all(keys[0] & k for k in keys[1:])
    drops = textdedup.drops_in_bucket(sketches, 0.7)
    keeper = min(sketches, key=lambda s: (s.priority, s.uid))
    assert {d.kept_uid for d in drops} == {keeper.uid}
    assert {d.uid for d in drops} == {s.uid for s in sketches} - {keeper.uid}


def test_caption_dedup_transform_drops_near_duplicates_and_reports_them(tmp_path):
    captions = SPAM + OTHER
    pairs = [(f"u{i:02d}", Pair(c, f"http://x/{i}.jpg", pack_ids((0,)))) for i, c in enumerate(captions)]
    with beam.Pipeline("DirectRunner") as p:
        kept = p | beam.Create(pairs) | CaptionDedup(0.7, seed=0, out=str(tmp_path))
        kept_uids = kept | "KeptUids" >> beam.Keys()
        assert_that(kept_uids | "CountKept" >> beam.combiners.Count.Globally(), equal_to([1 + len(OTHER)]),
                    label="OneSpamKept")
        assert_that(kept_uids | beam.Filter(lambda u: int(u[1:]) >= len(SPAM)),
                    equal_to([f"u{i:02d}" for i in range(len(SPAM), len(captions))]), label="OthersKept")
    (part,) = tmp_path.glob(f"{CAPTION_REPORT}-*.tsv")
    lines = part.read_text().splitlines()
    assert lines[0].split("\t") == ["uid", "caption", "kept_uid", "kept_caption", "similarity"]
    assert len(lines) == 1 + len(SPAM) - 1
    assert all(float(line.split("\t")[4]) >= 0.7 for line in lines[1:])


def test_caption_dedup_is_off_at_threshold_zero(tmp_path):
    pairs = [(f"u{i:02d}", Pair(c, f"http://x/{i}.jpg", pack_ids((0,)))) for i, c in enumerate(SPAM)]
    with beam.Pipeline("DirectRunner") as p:
        kept = p | beam.Create(pairs) | CaptionDedup(0.0, seed=0, out=str(tmp_path))
        assert_that(kept, equal_to(pairs))
    assert not list(tmp_path.glob(f"{CAPTION_REPORT}*"))
