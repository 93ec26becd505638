"""Assembling the query list from its four sources, to exactly `target` entries.

Sources, as in the CLIP paper: words occurring at least `min_word_count` times
(`word`), bigrams with high PMI (`bigram`), article titles with at least
`min_views` page views (`title`), and WordNet synsets' head lemmas (`wordnet`);
and, as MetaCLIP adds them, the numbers 0 to 99 (`number`: a word needs a
letter, so no count file yields them). Entries are the same query when their
`match_form` is the same (what `wit build` would match); such an entry is
attributed to the first of word, number, bigram, title, wordnet that has it,
so WordNet adds only what is not already present.

What is cut, when there are more than `target`: entries are taken in tiers,
  1. words, most frequent first;
  2. numbers, in order;
  3. WordNet lemmas, in database order;
  4. bigrams (highest PMI first) and titles (most viewed first) interleaved by
     rank fraction, so both lose the same share of their tail;
and the first tier that does not fit is cut from its end. The file is written
in that order, so reruns on the same inputs are byte-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from queries import ngrams
from wit.core.options import Options, option
from wit.core.text import match_form

SOURCES = ("word", "number", "bigram", "title", "wordnet")
DEFAULT_MIN_PMI = math.log2(30)  # MetaCLIP's "PMI >= 30", read as the co-occurrence ratio


@dataclass(frozen=True)
class Thresholds(Options):
    target: int = option(500_000, help="entries in the list")
    min_word_count: int = option(100, help="occurrences a word needs")
    min_bigram_count: int = option(100, help="occurrences a bigram needs")
    min_pmi: float = option(DEFAULT_MIN_PMI, help="log2 PMI a bigram needs (log2(30): co-occurring 30x more "
                                                  "often than by chance)")
    min_views: int = option(1_000, help="page views a title needs, summed over --pageviews files")
    numbers: int = option(100, help="the numbers 0 to N-1 as queries (MetaCLIP adds 0-99; 0 for none)")

    def check(self) -> None:
        if self.target < 1:
            self.refuse("target", "must be at least 1")
        for name in ("min_word_count", "min_bigram_count", "min_views"):
            if getattr(self, name) < 1:
                self.refuse(name, "must be at least 1")
        if self.numbers < 0:
            self.refuse("numbers", "must not be negative")


@dataclass
class Entry:
    query: str
    source: str
    count: int
    pmi: Optional[float] = None


@dataclass
class Result:
    entries: list[Entry]
    report: dict = field(default_factory=dict)


def _words(unigrams: dict[str, int], t: Thresholds) -> list[Entry]:
    kept = [Entry(w, "word", c) for w, c in unigrams.items() if c >= t.min_word_count]
    return sorted(kept, key=lambda e: (-e.count, e.query))


def _bigrams(bigrams: dict[str, int], unigrams: dict[str, int], total_words: int, total_pairs: int,
             t: Thresholds) -> list[Entry]:
    out = []
    for pair, c in bigrams.items():
        if c < t.min_bigram_count:
            continue
        first, _, second = pair.partition(" ")
        if first not in unigrams or second not in unigrams:
            continue
        score = ngrams.pmi(c, unigrams[first], unigrams[second], total_words, total_pairs)
        if score >= t.min_pmi:
            out.append(Entry(pair, "bigram", c, round(score, 4)))
    return sorted(out, key=lambda e: (-e.pmi, -e.count, e.query))


def _titles(views: dict[str, int], t: Thresholds) -> list[Entry]:
    kept = [Entry(title, "title", v) for title, v in views.items() if v >= t.min_views]
    return sorted(kept, key=lambda e: (-e.count, e.query))


def _interleave(a: list[Entry], b: list[Entry]) -> list[Entry]:
    keyed = [((i + 1) / len(a), 0, i, e) for i, e in enumerate(a)]
    keyed += [((i + 1) / len(b), 1, i, e) for i, e in enumerate(b)]
    return [e for *_k, e in sorted(keyed, key=lambda k: k[:3])]


def assemble(unigrams: dict[str, int], bigrams: dict[str, int], titles: dict[str, int], wordnet: Sequence[str],
             t: Thresholds, total_words: Optional[int] = None, total_pairs: Optional[int] = None) -> Result:
    total_words = total_words or sum(unigrams.values())
    total_pairs = total_pairs or max(1, total_words)
    candidates = {
        "word": _words(unigrams, t),
        "number": [Entry(str(n), "number", 0) for n in range(t.numbers)],
        "bigram": _bigrams(bigrams, unigrams, total_words, total_pairs, t) if bigrams else [],
        "title": _titles(titles, t),
        "wordnet": [Entry(lemma, "wordnet", 0) for lemma in wordnet],
    }
    owner: dict[str, str] = {}  # match form -> attributed source
    for source in SOURCES:
        for e in candidates[source]:
            key = match_form(e.query)
            if key:
                owner.setdefault(key, source)
    tiers = [candidates["word"], candidates["number"], candidates["wordnet"],
             _interleave(candidates["bigram"], candidates["title"])]
    chosen: list[Entry] = []
    seen: set[str] = set()
    duplicates = {s: 0 for s in SOURCES}
    for tier in tiers:
        for e in tier:
            key = match_form(e.query)
            if not key or owner[key] != e.source or key in seen:
                duplicates[e.source] += 1
                continue
            if len(chosen) == t.target:
                break
            seen.add(key)
            chosen.append(e)
    kept = {s: sum(1 for e in chosen if e.source == s) for s in SOURCES}
    report = {
        "target": t.target,
        "entries": len(chosen),
        "short_by": max(0, t.target - len(chosen)),
        "thresholds": {"min_word_count": t.min_word_count, "min_bigram_count": t.min_bigram_count,
                       "min_pmi_log2": round(t.min_pmi, 4), "min_views": t.min_views, "numbers": t.numbers},
        "sources": {s: {"candidates": len(candidates[s]), "already_present": duplicates[s], "kept": kept[s],
                        "cut": len(candidates[s]) - duplicates[s] - kept[s]} for s in SOURCES},
        "totals": {"words": total_words, "pairs": total_pairs},
    }
    return Result(chosen, report)
