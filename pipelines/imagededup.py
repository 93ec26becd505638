"""Image dedup after fetching: exact and near-duplicate images.

Exact duplicates share the sha256 of the downloaded bytes; near
duplicates have 64-bit perceptual hashes (imagehash.phash) within a Hamming
distance `threshold`. Candidates for near-duplicate pairs are found by the
pigeonhole principle: split the hash into `threshold + 1` bands; two hashes
within `threshold` bits agree exactly on at least one band, so grouping by
(band index, band value) finds every such pair without comparing all pairs.

The representative is chosen without any order dependence: an image is
dropped when some other image near it ranks better (more original pixels,
then the smaller uid). That decision is local to each candidate pair, so it
is the same on any runner, worker count or bundle order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import apache_beam as beam

from pipelines.grouping import MAX_GROUP, KeeperPerKey
from pipelines.stages import key_sizes
from wit.shardformat import ErrorKind, Status


@dataclass(frozen=True)
class ImageInfo:
    """What image dedup needs to know of one successfully fetched sample."""

    uid: str
    key: str
    shard: int
    sha256: str
    phash: int
    pixels: int

    @property
    def rank(self) -> tuple[int, str]:
        """Smaller is better: more original pixels first, then the uid."""
        return (-self.pixels, self.uid)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def bands(phash: int, threshold: int, bits: int = 64) -> list[tuple[int, int]]:
    """(band index, band value) keys: two hashes within `threshold` share one."""
    n = threshold + 1
    edges = [round(i * bits / n) for i in range(n + 1)]
    return [(i, (phash >> edges[i]) & ((1 << (edges[i + 1] - edges[i])) - 1)) for i in range(n)]


def best_of(infos: Sequence[ImageInfo]) -> ImageInfo:
    return min(infos, key=lambda i: i.rank)


def better_neighbours(group: Sequence[ImageInfo], threshold: int) -> Iterable[tuple[ImageInfo, ImageInfo]]:
    """(member, best-ranked other member within `threshold`) for each dominated member."""
    ordered = sorted(group, key=lambda i: i.rank)
    for j, info in enumerate(ordered):
        for better in ordered[:j]:
            if hamming(info.phash, better.phash) <= threshold:
                yield info, better
                break


def near_duplicates(infos: Sequence[ImageInfo], threshold: int) -> dict[str, ImageInfo]:
    """Reference in-memory version of the Beam near-dup stage: dropped uid -> better image."""
    groups: dict[tuple[int, int], list[ImageInfo]] = {}
    for info in infos:
        for band in bands(info.phash, threshold):
            groups.setdefault(band, []).append(info)
    dropped: dict[str, ImageInfo] = {}
    for group in groups.values():
        for info, better in better_neighbours(group, threshold):
            if info.uid not in dropped or better.rank < dropped[info.uid].rank:
                dropped[info.uid] = better
    return dropped


class Verdict(NamedTuple):
    """A downloaded image the writer turns into a dropped sample; `duplicate_of` is the kept image's key."""

    uid: str
    status: Status
    kind: ErrorKind
    message: str
    duplicate_of: str


def _rank(info: ImageInfo) -> tuple[int, str]:
    return info.rank


class ImageDedup(beam.PTransform):
    """ImageInfo in; (shard, Verdict) out for every dropped image."""

    def __init__(self, threshold: int, max_group: int = MAX_GROUP):
        super().__init__()
        self.threshold, self.max_group = threshold, max_group

    def expand(self, infos):
        exact = (
            infos
            | "BySha256" >> beam.Map(lambda i: (i.sha256, i))
            | "KeeperPerSha256" >> KeeperPerKey("sha256", _rank, self.max_group)
            | "ExactDup" >> beam.FlatMap(_exact_verdicts).with_outputs("verdicts", main="kept")
        )
        if self.threshold < 0:
            return exact.verdicts
        t = self.threshold
        near = (
            exact.kept
            | "Bands" >> beam.FlatMap(lambda i: [(band, i) for band in bands(i.phash, t)])
            | "GroupBand" >> beam.GroupByKey()
            | "Neighbours" >> beam.ParDo(_Neighbours(t))
            | "BestNeighbour" >> beam.CombinePerKey(lambda ds: min(ds, key=lambda d: d[0].rank))
            | "NearVerdict" >> beam.Map(_near_verdict)
        )
        return (exact.verdicts, near) | "AllVerdicts" >> beam.Flatten()


def _exact_verdicts(item):
    _sha, info, keeper = item
    if info.uid == keeper.uid:
        yield info
    else:
        yield beam.pvalue.TaggedOutput("verdicts", (info.shard, Verdict(
            info.uid, Status.DUPLICATE, ErrorKind.DUPLICATE, "the same bytes as a kept image", keeper.key)))


class _Neighbours(beam.DoFn):
    """((shard, uid), (better image, distance)) for each image of a band group that a better one is near."""

    def __init__(self, threshold: int):
        self.threshold = threshold

    def process(self, item):
        group = list(item[1])
        key_sizes("phash_band").update(len(group))
        for info, better in better_neighbours(group, self.threshold):
            yield (info.shard, info.uid), (better, hamming(info.phash, better.phash))


def _near_verdict(item):
    (shard, uid), (better, distance) = item
    return shard, Verdict(uid, Status.NEAR_DUPLICATE, ErrorKind.NEAR_DUPLICATE,
                          f"pHash {distance} bits from a kept image", better.key)
