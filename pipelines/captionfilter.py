"""Dropping candidates whose caption is too short to describe an image (DataComp's basic filter keeps
captions of more than two words). Words are counted in the matcher's form, so "Red-Circle!" is two.

`FilterCaptions` is the job's stage, between reading and matching; it counts `short_captions` and lets
everything through at `--min-caption-words 0`, the default.
"""

from __future__ import annotations

import apache_beam as beam

from pipelines.counters import CountingDoFn, count_in, counter
from wit.core.text import match_form


def long_enough(caption: str, min_words: int) -> bool:
    return len(match_form(caption).split()) >= min_words


class FilterCaptions(beam.PTransform):
    """Lists of candidates in; the same, keeping those whose caption has at least `min_words` words, out."""

    def __init__(self, min_words: int):
        super().__init__()
        self.min_words = min_words

    def expand(self, candidates):
        if self.min_words <= 0:
            return candidates
        return count_in(candidates, "KeepLongCaptions", _KeepLong(self.min_words))


class _KeepLong(CountingDoFn):
    dropped = counter("short_captions")

    def __init__(self, min_words: int):
        self.min_words = min_words

    def process(self, batch):
        kept = [c for c in batch if long_enough(c.caption, self.min_words)]
        self.tally.count(self.dropped, len(batch) - len(kept))
        if kept:
            yield kept
