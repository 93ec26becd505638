"""Deduplication: exact pairs and URLs before fetching, images after.

Images: exact duplicates share the sha256 of the downloaded bytes; near
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

import hashlib
from dataclasses import dataclass
from typing import Iterable, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str) -> str:
    """Canonical URL for exact dedup: scheme/host lowercased, default port,
    fragment and empty query dropped, query parameters sorted."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    if parts.username or parts.password:
        userinfo = parts.username or ""
        if parts.password:
            userinfo += f":{parts.password}"
        netloc = f"{userinfo}@{netloc}"
    query = urlencode(sorted(parse_qsl(parts.query, keep_blank_values=True)))
    return urlunsplit((scheme, netloc, parts.path or "/", query, ""))


def uid_for(normalized_url: str) -> str:
    """Stable 16-hex-digit identity of a pair, the same in every run and seed."""
    return hashlib.blake2b(normalized_url.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class PairChoice:
    caption: str
    url: str
    matched: tuple[int, ...]


def choose_pair(choices: Iterable[PairChoice]) -> tuple[PairChoice, int, int]:
    """Keep one pair per normalised URL: the caption matching most queries, then the smallest text.

    Returns (kept, exact repeats of a (url, caption) pair, other captions of the URL dropped).
    """
    by_caption: dict[str, list[PairChoice]] = {}
    count = 0
    for choice in choices:
        by_caption.setdefault(choice.caption, []).append(choice)
        count += 1
    firsts = [min(group, key=lambda c: c.url) for group in by_caption.values()]
    best = min(firsts, key=lambda c: (-len(c.matched), c.caption, c.url))
    return best, count - len(by_caption), len(by_caption) - 1


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
