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
URL dedup and balancing; its drops are listed in DIR/caption_near_duplicates-*.tsv,
written by shards as they come, and counted as `caption_near_duplicates`. A
band shared by very many captions (one spam text on thousands of pages) is
never gathered on one worker: its keeper reaches its members as a side input
(`pipelines.grouping.KeeperPerKey`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import apache_beam as beam
import numpy as np

from pipelines.grouping import KeeperPerKey, Smallest
from pipelines.sizing import MAX_GROUP
from pipelines.counters import CountingDoFn, count_in, counter
from wit.core import fileio
from wit.core.text import match_form

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
    from datasketch import LeanMinHash, MinHash  # imported when used: a default build looks for no near captions

    mh = MinHash(num_perm=NUM_PERM, seed=1)
    mh.update_batch(list(shingles(caption)))
    values = LeanMinHash(mh).hashvalues.astype(np.uint64).tobytes()
    priority = hashlib.blake2b(f"{seed}:{uid}".encode(), digest_size=8).digest()
    return CaptionSketch(uid, caption, priority, values)


@lru_cache(maxsize=None)
def lsh_params(threshold: float) -> tuple[int, int]:
    """(bands, rows) minimising false positives and negatives at this threshold (datasketch's choice)."""
    from datasketch import MinHashLSH

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
    """One bucket in memory: the stage's rule (`_drop` against the lowest priority) for tests and small data."""
    members = list(members)
    keeper = min(members, key=_priority)
    return [d for m in members for d in _drop(m, keeper, threshold)]


CAPTION_REPORT = "caption_near_duplicates"  # DIR/caption_near_duplicates-SSSSS-of-NNNNN.tsv
CAPTION_REPORT_HEADER = "uid\tcaption\tkept_uid\tkept_caption\tsimilarity"


def _priority(s: CaptionSketch) -> tuple[bytes, str]:
    return s.priority, s.uid


class CaptionDedup(beam.PTransform):
    """(uid, Pair) in; the same out, minus pairs whose caption nearly repeats a kept one's. Off (the input
    passes through) at threshold 0; the drops are written to DIR/caption_near_duplicates-*.tsv."""

    def __init__(self, threshold: float, seed: int, out: str, max_group: int = MAX_GROUP, partitions: int = 1):
        super().__init__()
        self.threshold, self.seed, self.out, self.max_group = threshold, seed, out, max_group
        self.partitions = partitions  # of the band keys, for their grouping

    def expand(self, pairs):
        if self.threshold <= 0:
            return pairs
        t, seed = self.threshold, self.seed
        dropped = (
            pairs
            | "Sketch" >> beam.Map(lambda kv: sketch(kv[0], kv[1][0], seed))  # a pair's caption
            | "CaptionBands" >> beam.FlatMap(lambda s: [(k, s) for k in band_keys(s, t)])
            | "KeeperPerBand" >> KeeperPerKey("caption_band", _priority, self.max_group, self.partitions)
            | "DropNearKeeper" >> beam.FlatMap(lambda item: _drop(item[1], item[2], t))
            | "DropByUid" >> beam.Map(lambda d: (d.uid, d))
            | "OneDropPerUid" >> beam.CombinePerKey(Smallest(_strongest))
        )
        dropped = count_in(dropped, "DropOnly", _DropOnly())
        _ = (dropped
             | "ReportLine" >> beam.Map(lambda kv: _report_line(kv[1]))
             | "CaptionReport" >> beam.io.WriteToText(fileio.join(self.out, CAPTION_REPORT), file_name_suffix=".tsv",
                                                      header=CAPTION_REPORT_HEADER))
        joined = {"pair": pairs, "dropped": dropped} | "JoinCaptionDrops" >> beam.CoGroupByKey()
        return count_in(joined, "KeepUndropped", _KeepUndropped())


def _drop(member: CaptionSketch, keeper: CaptionSketch, threshold: float) -> list[Dropped]:
    if member.uid == keeper.uid:
        return []
    sim = similarity(keeper, member)
    return [Dropped(member.uid, member.caption, keeper.uid, keeper.caption, sim)] if sim >= threshold else []


def _strongest(d: Dropped) -> tuple[float, str]:
    return -d.similarity, d.kept_uid


class _DropOnly(CountingDoFn):
    """A caption's strongest drop; how many keepers dropped it is the size of its key."""

    def process(self, kv):
        uid, (drop, n) = kv
        self.tally.key_size("caption_drops", n)
        yield uid, drop


class _KeepUndropped(CountingDoFn):
    dropped = counter("caption_near_duplicates")

    def process(self, item):
        uid, joined = item
        if joined["dropped"]:
            self.tally.count(self.dropped, len(joined["pair"]))
            return
        for pair in joined["pair"]:
            yield uid, pair


def _report_line(d: Dropped) -> str:
    return "\t".join([d.uid, _one_line(d.caption), d.kept_uid, _one_line(d.kept_caption), f"{d.similarity:.3f}"])


def _one_line(text: str) -> str:
    return " ".join(text.split())
