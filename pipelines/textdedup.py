"""Near-duplicate captions: MinHash over word 3-grams, banded LSH, one keeper per bucket.

Templated spam ("Buy cheap X online | SiteName 2019") repeats a caption with
small edits across thousands of URLs. Each caption's MinHash (datasketch) is
cut into b bands of r rows, with (b, r) chosen by datasketch's MinHashLSH for
the threshold; captions sharing a band meet in one bucket, where the
lowest-priority caption (a seeded hash, so runs are reproducible) is kept and
every other caption whose estimated Jaccard similarity to it reaches the
threshold is dropped. The lowest-priority caption of any similar group is
never dropped, so no group disappears entirely.

`CaptionDedup` is the job's optional stage (`--caption-dup-threshold`), between
URL dedup and balancing; its drops are listed in DIR/caption_near_duplicates.tsv
and counted as `caption_near_duplicates`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import apache_beam as beam
import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from pipelines.stages import counter
from wit import fileio
from wit.text import match_form

NUM_PERM = 128


@dataclass(frozen=True)
class CaptionSketch:
    uid: str
    caption: str
    priority: bytes
    hashvalues: bytes  # uint64 MinHash values


@dataclass(frozen=True)
class Dropped:
    uid: str
    caption: str
    kept_uid: str
    kept_caption: str
    similarity: float


def shingles(caption: str, n: int = 3) -> set[bytes]:
    """Word n-grams of the matching form; a caption shorter than n words is one shingle."""
    words = match_form(caption).split()
    if len(words) < n:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def sketch(uid: str, caption: str, seed: int) -> CaptionSketch:
    mh = MinHash(num_perm=NUM_PERM, seed=1)
    mh.update_batch(list(shingles(caption)))
    values = LeanMinHash(mh).hashvalues.astype(np.uint64).tobytes()
    priority = hashlib.blake2b(f"{seed}:{uid}".encode(), digest_size=8).digest()
    return CaptionSketch(uid, caption, priority, values)


@lru_cache(maxsize=None)
def lsh_params(threshold: float) -> tuple[int, int]:
    """(bands, rows) minimising false positives and negatives at this threshold (datasketch's choice)."""
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    return lsh.b, lsh.r


def band_keys(s: CaptionSketch, threshold: float) -> list[bytes]:
    b, r = lsh_params(threshold)
    values = s.hashvalues
    step = 8 * r
    return [i.to_bytes(2, "big") + hashlib.blake2b(values[i * step:(i + 1) * step], digest_size=12).digest()
            for i in range(b)]


def similarity(a: CaptionSketch, b: CaptionSketch) -> float:
    va = np.frombuffer(a.hashvalues, dtype=np.uint64)
    vb = np.frombuffer(b.hashvalues, dtype=np.uint64)
    return float(np.count_nonzero(va == vb)) / len(va)


def drops_in_bucket(members: Iterable[CaptionSketch], threshold: float) -> list[Dropped]:
    members = sorted(members, key=lambda s: (s.priority, s.uid))
    keeper = members[0]
    out = []
    for other in members[1:]:
        sim = similarity(keeper, other)
        if sim >= threshold:
            out.append(Dropped(other.uid, other.caption, keeper.uid, keeper.caption, sim))
    return out


CAPTION_REPORT = "caption_near_duplicates.tsv"


class CaptionDedup(beam.PTransform):
    """(uid, Pair) in; the same out, minus pairs whose caption nearly repeats a kept one's. Off (the input
    passes through) at threshold 0; the drops go to DIR/caption_near_duplicates.tsv."""

    def __init__(self, threshold: float, seed: int, out: str):
        super().__init__()
        self.threshold, self.seed, self.out = threshold, seed, out

    def expand(self, pairs):
        if self.threshold <= 0:
            return pairs
        t, seed = self.threshold, self.seed
        dropped = (
            pairs
            | "Sketch" >> beam.Map(lambda kv: sketch(kv[0], kv[1].caption, seed))
            | "CaptionBands" >> beam.FlatMap(lambda s: [(k, s) for k in band_keys(s, t)])
            | "GroupCaptionBand" >> beam.GroupByKey()
            | "DropsInBucket" >> beam.FlatMap(lambda kv: drops_in_bucket(kv[1], t))
            | "DropByUid" >> beam.Map(lambda d: (d.uid, d))
            | "OneDropPerUid" >> beam.CombinePerKey(lambda ds: min(ds, key=lambda d: (-d.similarity, d.kept_uid)))
        )
        _ = (dropped
             | "DroppedList" >> beam.combiners.ToList()
             | "CaptionReport" >> beam.Map(_write_caption_report, self.out))
        return (
            {"pair": pairs, "dropped": dropped}
            | "JoinCaptionDrops" >> beam.CoGroupByKey()
            | "KeepUndropped" >> beam.ParDo(_KeepUndropped())
        )


class _KeepUndropped(beam.DoFn):
    dropped = counter("caption_near_duplicates")

    def process(self, item):
        uid, joined = item
        if joined["dropped"]:
            self.dropped.inc(len(joined["pair"]))
            return
        for pair in joined["pair"]:
            yield uid, pair


def _write_caption_report(dropped: list, out: str) -> None:
    lines = ["uid\tcaption\tkept_uid\tkept_caption\tsimilarity"]
    for _uid, d in sorted(dropped):
        lines.append("\t".join([d.uid, _one_line(d.caption), d.kept_uid, _one_line(d.kept_caption),
                                f"{d.similarity:.3f}"]))
    fileio.write_bytes(fileio.join(out, CAPTION_REPORT), ("\n".join(lines) + "\n").encode())


def _one_line(text: str) -> str:
    return " ".join(text.split())
