"""Image dedup after fetching: exact and near-duplicate images, and images of evaluation sets.

Exact duplicates share the sha256 of the downloaded bytes. Near duplicates
have 64-bit perceptual hashes (imagehash.phash) within a Hamming distance
`threshold`. An image is dropped when some other image near it ranks better
(more original pixels, then the smaller uid). That decision is local to each
pair, so it is the same on any runner, worker count or bundle order.

Candidate pairs are found as Manku, Jain and Das Sarma find near-duplicate
simhashes among billions ("Detecting Near-Duplicates for Web Crawling", WWW
2007): the hash is cut into B blocks; two hashes within t bits differ in at
most t blocks, so they agree on every block of at least one of the C(B, t)
sets of B - t blocks. Each set is a *table*, keyed by the hash masked to its
blocks, and only images sharing a key in some table are compared. B grows
with the number of images (`tables_for`), so a key has enough bits that a
group holds at most a few hundred images of uniform hashes whatever the
dataset's size; the comparisons within a group run in a numba kernel that
verifies the distance.

Real pHashes are not uniform: blank, solid-colour and placeholder images
collapse onto a few values, and a million of them in one group would cost a
million squared comparisons. A group of more than `limit` images is the
degenerate class: each member is compared with the group's best `limit`
members and with the best member carrying its very hash, which bounds the
work per image; the images dropped that way are counted (`degenerate`).

Evaluation images (`--exclude-near`) enter every table as members that rank
above all others and are never dropped themselves, so each downloaded image
within the threshold of one is dropped with its own status, naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
import numba
import numpy as np

from pipelines.grouping import KeeperListsPerKey, pack, unpack, windowed
from pipelines.records import IMAGE, EvalImage, ImageInfo, Verdict
from pipelines.sizing import (FLUSH_FOUND, LIMIT, MAX_GROUP, MAX_TABLES, MIX, TARGET_GROUP, phash_partitions,
                              sha256_partitions)
from pipelines.counters import CountingDoFn, count_in
from wit.core.shardformat import Status
from wit.core.errors import ErrorKind


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def near_duplicates(infos: Sequence[ImageInfo], threshold: int) -> dict[str, ImageInfo]:
    """Reference in-memory near-dup verdicts, by comparing all pairs: dropped uid -> best-ranked better image
    within the threshold. Quadratic: the specification the stage is tested against."""
    ordered = sorted(infos, key=lambda i: i.rank)
    dropped: dict[str, ImageInfo] = {}
    for j, info in enumerate(ordered):
        for better in ordered[:j]:
            if hamming(info.phash, better.phash) <= threshold:
                dropped[info.uid] = better
                break
    return dropped


# ---------------------------------------------------------------- tables

@dataclass(frozen=True)
class Tables:
    """The tables for a threshold: each is the mask of the bits two hashes must share to be compared in it."""

    threshold: int
    blocks: int
    masks: tuple[int, ...]

    @property
    def key_bits(self) -> int:
        return min(m.bit_count() for m in self.masks)

    def keys(self, phash: int) -> list[int]:
        return [phash & m for m in self.masks]


def tables_for(threshold: int, images: int) -> Tables:
    """The fewest tables whose keys are long enough that a group holds about TARGET_GROUP of `images`
    uniform hashes (at most MAX_TABLES tables)."""
    if not 0 <= threshold < 64:
        raise ValueError(f"threshold must be in 0..63, got {threshold}")
    chosen = None
    for blocks in range(threshold + 1, 65):
        if chosen is not None and math.comb(blocks, threshold) > MAX_TABLES:
            break
        edges = [round(i * 64 / blocks) for i in range(blocks + 1)]
        block_masks = [((1 << (edges[i + 1] - edges[i])) - 1) << edges[i] for i in range(blocks)]
        masks = tuple(sum(block_masks[i] for i in kept) for kept in combinations(range(blocks), blocks - threshold))
        chosen = Tables(threshold, blocks, masks)
        if images <= TARGET_GROUP * 2 ** chosen.key_bits:
            break
    return chosen


# ---------------------------------------------------------------- the kernel

@numba.njit(cache=True, inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@numba.njit(cache=True)
def better_members(keys, phash, is_ref, threshold, limit):
    """Members sorted by (key, rank): for each, the index of the best-ranked member of its group within
    `threshold` bits (-1: none), and whether its group was over `limit` (the bounded rule then applies)."""
    n = keys.shape[0]
    best = np.full(n, -1, np.int64)
    hot = np.zeros(n, np.bool_)
    t = np.uint64(threshold)
    s = 0
    while s < n:
        e = s + 1
        while e < n and keys[e] == keys[s]:
            e += 1
        over = e - s > limit
        for j in range(s + 1, e):
            if is_ref[j]:
                continue
            top = min(j, s + limit)
            for i in range(s, top):
                if _popcount(phash[i] ^ phash[j]) <= t:
                    best[j] = i
                    break
            hot[j] = over
        if over:  # the same hash as a better member: the best member carrying it
            order = np.argsort(phash[s:e], kind="mergesort")  # stable: equal hashes stay in rank order
            first = s + order[0]
            for k in range(1, e - s):
                j = s + order[k]
                if phash[j] != phash[first]:
                    first = j
                elif not is_ref[j] and (best[j] < 0 or first < best[j]):
                    best[j] = first
        s = e
    return best, hot


# ---------------------------------------------------------------- what was found

def join(cls, parts: Sequence):
    """NamedTuples of equally long numpy arrays, joined column by column."""
    return cls(*(np.concatenate([p[i] for p in parts]) for i in range(len(cls._fields))))


def take(columns, index: np.ndarray):
    """Rows `index` of a NamedTuple of equally long numpy arrays."""
    return type(columns)(*(column[index] for column in columns))


class Group(NamedTuple):
    """Members of one (table, partition), numbers only (so they cross a shuffle as a few buffers); `ref`
    indexes the evaluation images (-1: a downloaded image). uids are 16 hexadecimal digits and sample keys
    digits, so both travel as numbers."""

    uid: np.ndarray  # uint64
    phash: np.ndarray  # uint64
    pixels: np.ndarray  # int64
    shard: np.ndarray  # int64
    ref: np.ndarray  # int64
    key: np.ndarray  # int64


class Found(NamedTuple):
    """Downloaded images found near a better one: the image, and the better one (`ref` >= 0: an evaluation
    image). `exact`: the same bytes; `hot`: found by the bounded rule."""

    uid: np.ndarray  # uint64
    shard: np.ndarray  # int64
    distance: np.ndarray  # int64
    hot: np.ndarray  # bool
    exact: np.ndarray  # bool
    ref: np.ndarray  # int64
    b_pixels: np.ndarray  # int64
    b_uid: np.ndarray  # uint64
    b_key: np.ndarray  # int64


def found_row(uid: int, shard: int, distance: int = 0, hot: bool = False, exact: bool = False, ref: int = -1,
              b_pixels: int = 0, b_uid: int = 0, b_key: int = 0) -> tuple:
    """One row of `Found`, as `found_rows` takes it: an image found near `ref` (an evaluation image) or, with
    `exact`, the same bytes as the kept image b_*."""
    return uid, shard, distance, hot, exact, ref, b_pixels, b_uid, b_key


def found_rows(rows: Sequence[tuple]) -> Found:
    columns = list(zip(*rows)) if rows else [()] * len(Found._fields)
    types = (np.uint64, np.int64, np.int64, bool, bool, np.int64, np.int64, np.uint64, np.int64)
    return Found(*(np.array(c, t) for c, t in zip(columns, types)))


def best_found(f: Found) -> Found:
    """One row per image: the best-ranked image it is near (an evaluation image first, then more pixels,
    then the smaller uid). A near duplicate is found in several tables."""
    order = np.lexsort((f.b_uid, -f.b_pixels, f.ref, f.ref < 0, f.uid))
    f = take(f, order)
    return take(f, np.flatnonzero(np.r_[True, f.uid[1:] != f.uid[:-1]]) if len(f.uid) else order)


def verdicts(f: Found, refs: Sequence[EvalImage], key_digits: int) -> dict[str, Verdict]:
    """The verdicts of `best_found` rows; kept samples' keys have `key_digits` digits."""
    out = {}
    for uid, distance, hot, exact, ref, b_key in zip(f.uid.tolist(), f.distance.tolist(), f.hot.tolist(),
                                                     f.exact.tolist(), f.ref.tolist(), f.b_key.tolist()):
        uid = f"{uid:016x}"
        if ref >= 0:
            r = refs[ref]
            out[uid] = Verdict(uid, Status.EVAL_DUPLICATE, ErrorKind.EVAL_DUPLICATE,
                               f"pHash {distance} bits from evaluation image {r.source}/{r.key}",
                               f"{r.source}/{r.key}", hot, r.source)
        elif exact:
            out[uid] = Verdict(uid, Status.DUPLICATE, ErrorKind.DUPLICATE, "the same bytes as a kept image",
                               f"{b_key:0{key_digits}d}")
        else:
            out[uid] = Verdict(uid, Status.NEAR_DUPLICATE, ErrorKind.NEAR_DUPLICATE,
                               f"pHash {distance} bits from a kept image", f"{b_key:0{key_digits}d}", hot)
    return out


def members(infos: Sequence[tuple]) -> Group:
    """ImageInfos (or the plain tuples Beam carries) as columns."""
    n = len(infos)
    uid, key, shard, _sha, phash, pixels = zip(*infos) if infos else ((),) * len(ImageInfo._fields)
    return Group(np.fromiter((int(u, 16) for u in uid), np.uint64, n), np.array(phash, np.uint64),
                 np.array(pixels, np.int64), np.array(shard, np.int64), np.full(n, -1, np.int64),
                 np.fromiter(map(int, key), np.int64, n))


def references(refs: Sequence[EvalImage]) -> Group:
    n = len(refs)
    return Group(np.zeros(n, np.uint64), np.fromiter((r.phash for r in refs), np.uint64, n),
                 np.full(n, np.iinfo(np.int64).max, np.int64), np.full(n, -1, np.int64),
                 np.arange(n, dtype=np.int64), np.zeros(n, np.int64))


def by_rank(g: Group) -> Group:
    """Members in rank order: evaluation images first, then more pixels, then the smaller uid."""
    return take(g, np.lexsort((g.uid, -g.pixels, g.ref < 0)))


def group_found(g: Group, mask: int, threshold: int, limit: int = LIMIT, ranked: bool = True) -> tuple[Found, int]:
    """The downloaded members of `g` (in `by_rank` order, unless not `ranked`) that a better member sharing
    their key in one table is near, and the size of the largest group compared pairwise (groups over
    `limit` are the degenerate class: their members are marked `hot`)."""
    keys = g.phash & np.uint64(mask)
    if ranked:
        order = np.argsort(keys, kind="stable")  # by key, in rank order within a key
    else:  # one sort for both: by key, then by rank
        order = np.lexsort((g.uid, -g.pixels, g.ref < 0, keys))
    g, keys = take(g, order), keys[order]
    best, hot = better_members(keys, g.phash, g.ref >= 0, threshold, limit)
    sizes = np.diff(np.flatnonzero(np.r_[True, keys[1:] != keys[:-1], True]))
    largest = int(sizes[sizes <= limit].max(initial=0))
    j = np.flatnonzero(best >= 0)
    i = best[j]
    distance = np.bitwise_count(g.phash[i] ^ g.phash[j]).astype(np.int64)
    return Found(g.uid[j], g.shard[j], distance, hot[j], np.zeros(len(j), bool), g.ref[i], g.pixels[i], g.uid[i],
                 g.key[i]), largest


def find_near(infos: Sequence[ImageInfo], threshold: int, refs: Sequence[EvalImage] = (),
              limit: int = LIMIT) -> dict[str, Verdict]:
    """Every table's groups in memory: the stage's near-duplicate verdicts without Beam."""
    refs = sorted_refs(refs)
    tables = tables_for(threshold, len(infos) + len(refs))
    g = by_rank(join(Group, [members(infos), references(refs)]))
    found = join(Found, [group_found(g, mask, threshold, limit)[0] for mask in tables.masks])
    return verdicts(best_found(found), refs, len(infos[0].key) if infos else 0)


def sorted_refs(refs: Sequence[EvalImage]) -> tuple[EvalImage, ...]:
    """Evaluation images in (set, key) order: an image near several is dropped for the first."""
    return tuple(sorted(refs, key=lambda r: (r.source, r.key)))


# ---------------------------------------------------------------- the Beam stage

def partition_of(keys: np.ndarray, table: int, partitions: int) -> np.ndarray:
    """Spreads a table's keys evenly over its partitions (equal keys, one partition)."""
    mixed = (keys ^ np.uint64(table)) * MIX
    return ((mixed >> np.uint64(32)) % np.uint64(partitions)).astype(np.int64)


def _rank(info: tuple) -> tuple[int, str]:
    return -info[IMAGE.PIXELS], info[IMAGE.UID]  # ImageInfo.rank of a plain tuple


class ImageDedup(beam.PTransform):
    """ImageInfo in; (shard, (rows, packed `Found`)) out, per shard and bundle, for the dropped images
    (`shard_verdicts` turns them into verdicts). `images` (an upper bound of the images to come) sizes the
    tables and partitions; `refs` are the evaluation images, in `sorted_refs` order."""

    def __init__(self, threshold: int, images: int, refs: Sequence[EvalImage] = (), max_group: int = MAX_GROUP,
                 limit: int = LIMIT):
        super().__init__()
        self.threshold, self.images, self.refs = threshold, images, sorted_refs(refs)
        self.max_group, self.limit = max_group, limit

    def expand(self, infos):
        tables = tables_for(self.threshold, self.images + len(self.refs)) if self.threshold >= 0 else None
        exact = (
            infos
            | "KeeperPerSha256" >> KeeperListsPerKey("sha256", _rank, self.max_group,
                                                     sha256_partitions(self.images), keyed=_by_sha256)
            | "ExactDup" >> beam.ParDo(_ExactDup(tables, self.refs)).with_outputs(_FOUND, main="kept")
        )
        found = exact[_FOUND]
        if tables is not None:
            partitions = phash_partitions(self.images)
            grouped = (exact.kept
                       | "TableEntries" >> beam.ParDo(_TableEntries(tables, partitions))
                       | "GroupTablePartition" >> beam.GroupByKey())
            near = count_in(grouped, "NearInPartition",
                            _NearInPartition(tables, partitions, self.threshold, self.refs, self.limit))
            found = (found, near) | "AllFound" >> beam.Flatten()
        return found | "BestPerShard" >> beam.ParDo(_BestPerShard())


_FOUND = "found"


def _by_sha256(info: tuple) -> tuple:
    """(sha256, the info without it): the hash travels once."""
    without = list(info)
    without[IMAGE.SHA256] = None
    return info[IMAGE.SHA256], tuple(without)


def shard_verdicts(lists: Iterable[tuple[int, bytes]], refs: Sequence[EvalImage],
                   key_digits: int) -> dict[str, Verdict]:
    """One shard's share of the stage's output, as the writer applies it: one verdict per image."""
    parts = [Found(*unpack(packed)) for _n, packed in lists]
    return verdicts(best_found(join(Found, parts)), refs, key_digits) if parts else {}


class RefIndex:
    """The evaluation images by table key, to look one hash up against them alone."""

    def __init__(self, tables: Tables, refs: Sequence[EvalImage]):
        self.tables, self.refs = tables, refs
        self.by_key: list[dict[int, list[int]]] = [{} for _ in tables.masks]
        for n, ref in enumerate(refs):
            for table, key in zip(self.by_key, tables.keys(ref.phash)):
                table.setdefault(key, []).append(n)

    def near(self, phash: int) -> Optional[tuple[int, int]]:
        """The first evaluation image (in `refs` order) within the threshold, and its distance."""
        found = [n for table, key in zip(self.by_key, self.tables.keys(phash)) for n in table.get(key, ())
                 if hamming(self.refs[n].phash, phash) <= self.tables.threshold]
        return (min(found), hamming(self.refs[min(found)].phash, phash)) if found else None


class _ExactDup(beam.DoFn):
    """Keepers of their sha256 go on to the near-duplicate tables; the other copies are found, as the same
    bytes as the keeper or, when near an evaluation image, as near that (`Found` per bundle)."""

    def __init__(self, tables: Optional[Tables], refs: Sequence[EvalImage]):
        self.tables, self.refs = tables, refs

    def setup(self):
        self.index = RefIndex(self.tables, self.refs) if self.refs else None

    def start_bundle(self):
        self.rows: list[tuple] = []

    def process(self, items: list):
        """A list of (sha256, info, keeper); the keepers go on as one list."""
        kept = []
        for _sha, info, keeper in items:
            if info[IMAGE.UID] == keeper[IMAGE.UID]:
                kept.append(info)
                continue
            near = self.index.near(info[IMAGE.PHASH]) if self.index else None
            uid, shard = int(info[IMAGE.UID], 16), info[IMAGE.SHARD]
            if near:
                ref, distance = near
                self.rows.append(found_row(uid, shard, distance=distance, ref=ref))
            else:
                self.rows.append(found_row(uid, shard, exact=True, b_pixels=keeper[IMAGE.PIXELS],
                                           b_uid=int(keeper[IMAGE.UID], 16), b_key=int(keeper[IMAGE.KEY])))
        if kept:
            yield kept

    def finish_bundle(self):
        if self.rows:
            yield beam.pvalue.TaggedOutput(_FOUND, windowed(found_rows(self.rows)))
            self.rows = []


class _BestPerShard(beam.DoFn):
    """`Found` arrays in; (shard, (rows, packed Found)) out per shard and bundle, each image once."""

    def start_bundle(self):
        self.parts: list[Found] = []
        self.held = 0

    def process(self, found: Found):
        self.parts.append(found)
        self.held += len(found.uid)
        if self.held > FLUSH_FOUND:
            yield from self._packed()

    def _packed(self):
        if not self.parts:
            return []
        f = best_found(join(Found, self.parts))
        self.start_bundle()
        order = np.argsort(f.shard, kind="stable")
        f = take(f, order)
        bounds = np.flatnonzero(np.r_[True, f.shard[1:] != f.shard[:-1], True])
        return [(int(f.shard[a]), (int(b - a), pack(list(take(f, np.arange(a, b))))))
                for a, b in zip(bounds[:-1], bounds[1:])]

    def finish_bundle(self):
        for kv in self._packed():
            yield windowed(kv)


def to_wire(g: Group) -> list:
    """A downloaded images' Group as it crosses the shuffle once per table: 32 bytes an image, not 48 (pixels
    and shard fit 32 bits; `ref` is -1 for every downloaded image, so it stays home)."""
    return [g.uid, g.phash, g.pixels.astype(np.int32), g.shard.astype(np.int32), g.key]


def from_wire(columns: list) -> Group:
    uid, phash, pixels, shard, key = columns
    return Group(uid, phash, pixels.astype(np.int64), shard.astype(np.int64), np.full(len(uid), -1, np.int64), key)


class _TableEntries(beam.DoFn):
    """Lists of a bundle's images in; ((table, partition), packed members) out: one element per table
    partition and bundle, not one per (table, image)."""

    def __init__(self, tables: Tables, partitions: int):
        self.tables, self.partitions = tables, partitions

    def start_bundle(self):
        self.infos: list[tuple] = []

    def process(self, infos: list):
        self.infos += infos

    def finish_bundle(self):
        if not self.infos:
            return
        g = members(self.infos)
        self.infos = []
        for table, mask in enumerate(self.tables.masks):
            where = partition_of(g.phash & np.uint64(mask), table, self.partitions)
            for p in np.unique(where).tolist():
                yield windowed(((table, p), pack(to_wire(take(g, np.flatnonzero(where == p))))))


class _NearInPartition(CountingDoFn):
    """The members of one table partition, and the evaluation images whose keys fall in it, compared."""

    def __init__(self, tables: Tables, partitions: int, threshold: int, refs: Sequence[EvalImage], limit: int):
        self.tables, self.partitions, self.threshold, self.refs, self.limit = tables, partitions, threshold, refs, limit

    def setup(self):
        self.ref_group = references(self.refs)

    def process(self, item):
        (table, p), parts = item
        mask = self.tables.masks[table]
        r = self.ref_group
        mine = np.flatnonzero(partition_of(r.phash & np.uint64(mask), table, self.partitions) == p)
        g = join(Group, [from_wire(unpack(part)) for part in parts] + [take(r, mine)])
        self.tally.key_size("phash_partition", len(g.uid))
        found, largest = group_found(g, mask, self.threshold, self.limit, ranked=False)
        self.tally.key_size("phash_group", largest)
        if len(found.uid):
            yield found
