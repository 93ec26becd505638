"""Exact dedup before fetching: one pair per normalised URL.

The uid of a pair is a hash of its normalised URL, the same in every run and
seed: it orders the shards and ties the output back to the input. Among the
captions of one URL, the kept one matches the most queries (then the smallest
text), so a URL keeps its most useful caption. Repeated (url, caption) pairs
are counted apart from other captions of the same URL.

One combine does it (`choose_pair` is the same rule in memory), so a
placeholder URL repeated millions of times costs no worker more than an
accumulator per bundle: the best pair so far, how many pairs, and the distinct captions
seen, up to `MAX_CAPTIONS`. Repeats are told from other captions exactly up to
that many distinct captions per URL; past it, further captions count as other
captions.
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import apache_beam as beam

from pipelines.grouping import CombineInPartitions, spread
from pipelines.records import PAIR, Pair, id_count
from pipelines.sizing import MAX_CAPTIONS
from pipelines.counters import CountingDoFn, count_in, counter

_DEFAULT_PORTS = {"http": 80, "https": 443}


# A URL already in canonical form: lowercase scheme and host, no user, query or fragment, and no port or one
# that is not the scheme's default. Most are, and taking them as they are saves the parse.
_CANONICAL = re.compile(r"(https?)://[a-z0-9.-]*[a-z0-9-](?::([1-9][0-9]{0,4}))?(/[^?#\s]*)?")


def normalize_url(url: str) -> str:
    """Canonical URL for exact dedup: scheme/host lowercased, default port,
    fragment and empty query dropped, query parameters sorted."""
    m = _CANONICAL.fullmatch(url)
    if m:
        scheme, port, path = m.groups()
        if port is None or (int(port) <= 65535 and int(port) != _DEFAULT_PORTS[scheme]):
            return url if path else url + "/"
    return _normalized_by_parts(url)


def _normalized_by_parts(url: str) -> str:
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


def choose_pair(choices: Iterable[Pair]) -> tuple[Pair, int, int]:
    """Keep one pair per normalised URL: the caption matching most queries, then the smallest text.

    Returns (kept, exact repeats of a (url, caption) pair, other captions of the URL dropped).
    """
    by_caption: dict[str, list[Pair]] = {}
    count = 0
    for choice in choices:
        by_caption.setdefault(choice.caption, []).append(choice)
        count += 1
    firsts = [min(group, key=lambda c: (c.url, c.file, c.row)) for group in by_caption.values()]
    best = min(firsts, key=lambda c: (-id_count(c.matched), c.caption, c.url, c.file, c.row))
    return best, count - len(by_caption), len(by_caption) - 1


def _most_useful(p: tuple) -> tuple:
    """The caption matching most queries, then the smallest caption, url, and place in the input: the same
    pair whatever order the runner brings them in."""
    caption, url, matched, file, row, _additional = p
    return -id_count(matched), caption, url, file, row


class OnePerUrl(beam.CombineFn):
    """(best pair, pairs, distinct captions up to MAX_CAPTIONS, captions past them) of one URL; pairs as the
    plain tuples Beam carries. The caption set is None while the URL has one pair (most URLs): the set would
    only repeat the best pair's caption, and cross the shuffle."""

    def create_accumulator(self):
        return None, 0, None, 0

    def add_input(self, acc, pair: tuple):
        best, n, captions, more = acc
        if best is None:
            return pair, 1, None, 0
        if captions is None:
            captions = {best[PAIR.CAPTION]}
        if _most_useful(pair) < _most_useful(best):
            best = pair
        if pair[PAIR.CAPTION] not in captions:
            if len(captions) < MAX_CAPTIONS:
                captions.add(pair[PAIR.CAPTION])
            else:
                more += 1
        return best, n + 1, captions, more

    def merge_accumulators(self, accumulators):
        best, n, captions, more = None, 0, set(), 0
        for b, m, c, o in accumulators:
            if b is None:
                continue
            if best is None or _most_useful(b) < _most_useful(best):
                best = b
            n, more = n + m, more + o
            for caption in ((b[PAIR.CAPTION],) if c is None else c):
                if caption in captions:
                    continue
                if len(captions) < MAX_CAPTIONS:
                    captions.add(caption)
                else:
                    more += 1
        return best, n, captions, more

    def extract_output(self, acc):
        best, n, captions, more = acc
        return best, n, (1 if captions is None else len(captions)) + more


class DedupUrls(beam.PTransform):
    """Pairs in; (uid, Pair) out, one per normalised URL. URLs are spread over `partitions` by their uid, so
    that the shuffle moves lists (`pipelines.grouping.CombineInPartitions`)."""

    def __init__(self, partitions: int):
        super().__init__()
        self.partitions = partitions

    def expand(self, pairs):
        n = self.partitions
        best = pairs | "OnePerUrl" >> CombineInPartitions(OnePerUrl(), lambda p: normalize_url(p[PAIR.URL]),
                                                          lambda url: spread(url, n), "url_partition")
        return count_in(best, "CountDuplicates", _CountDuplicates())


class _CountDuplicates(CountingDoFn):
    kept, repeats, others = counter("unique_pairs"), counter("duplicate_pairs"), counter("duplicate_urls")

    def process(self, item):
        norm_url, (best, n, captions) = item
        self.tally.key_size("url", n)
        self.tally.count(self.kept)
        self.tally.count(self.repeats, n - captions)
        self.tally.count(self.others, captions - 1)
        yield uid_for(norm_url), best  # a plain tuple, as Beam carries a Pair
