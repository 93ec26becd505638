"""Exact dedup before fetching: one pair per normalised URL.

The uid of a pair is a hash of its normalised URL, the same in every run and
seed: it orders the shards and ties the output back to the input. Among the
captions of one URL, the kept one matches the most queries (then the smallest
text), so a URL keeps its most useful caption. Repeated (url, caption) pairs
are counted apart from other captions of the same URL.
"""

from __future__ import annotations

import hashlib
from typing import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import apache_beam as beam

from pipelines.match import Pair
from pipelines.stages import counter

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


def choose_pair(choices: Iterable[Pair]) -> tuple[Pair, int, int]:
    """Keep one pair per normalised URL: the caption matching most queries, then the smallest text.

    Returns (kept, exact repeats of a (url, caption) pair, other captions of the URL dropped).
    """
    by_caption: dict[str, list[Pair]] = {}
    count = 0
    for choice in choices:
        by_caption.setdefault(choice.caption, []).append(choice)
        count += 1
    firsts = [min(group, key=lambda c: c.url) for group in by_caption.values()]
    best = min(firsts, key=lambda c: (-len(c.matched), c.caption, c.url))
    return best, count - len(by_caption), len(by_caption) - 1


class DedupUrls(beam.PTransform):
    """Pairs in; (uid, Pair) out, one per normalised URL."""

    def expand(self, pairs):
        return (
            pairs
            | "ByUrl" >> beam.Map(lambda p: (normalize_url(p.url), p))
            | "GroupUrl" >> beam.GroupByKey()
            | "ChoosePerUrl" >> beam.ParDo(_ChoosePerUrl())
        )


class _ChoosePerUrl(beam.DoFn):
    kept, repeats, others = counter("unique_pairs"), counter("duplicate_pairs"), counter("duplicate_urls")

    def process(self, item):
        norm_url, choices = item
        best, repeats, other_captions = choose_pair(choices)
        self.kept.inc()
        self.repeats.inc(repeats)
        self.others.inc(other_captions)
        yield uid_for(norm_url), best
