"""Words and bigrams as the query list counts them.

Text is reduced with the matcher's own `match_form`, so every counted word or
bigram is something `wit build` can match. A word must contain a letter;
bigrams never cross a line (paragraph) break.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Iterator

from wit.core.text import match_form


def words(line: str) -> list[str]:
    return [w for w in match_form(line).split() if any(c.isalpha() for c in w)]


def ngrams(text: str) -> Iterator[tuple[str, ...]]:
    """Each word as a 1-tuple and each adjacent pair as a 2-tuple."""
    for line in text.splitlines():
        ws = words(line)
        for w in ws:
            yield (w,)
        for pair in zip(ws, ws[1:]):
            yield pair


def count(texts: Iterable[str]) -> tuple[Counter, Counter]:
    unigrams: Counter = Counter()
    bigrams: Counter = Counter()
    for text in texts:
        for gram in ngrams(text):
            (unigrams if len(gram) == 1 else bigrams)[" ".join(gram)] += 1
    return unigrams, bigrams


def pmi(pair_count: int, first: int, second: int, total_words: int, total_pairs: int) -> float:
    """log2( p(a b) / (p(a) p(b)) ): how much more often a and b are adjacent than by chance."""
    return math.log2((pair_count / total_pairs) / ((first / total_words) * (second / total_words)))
