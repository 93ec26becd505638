"""Captions per second per core, matching against a 500,000-entry query list.

Queries: the most frequent English words from wordfreq (offline, bundled with
the package) topped up with seeded bigrams of them to 500,000 entries, the size
and shape of CLIP's list (it includes every common word, so a caption has many
hits). Captions: seeded word sequences drawn by word frequency, 4-16 words,
with capitals and punctuation, like alt text. One process, one thread.

Measured: `QueryMatcher.match_many` (wit's word-level Aho-Corasick automaton)
over batches of `pipelines.sizing.READ_BATCH` captions, as the Beam DoFn calls
it; its answer is the ids as arrays. Baseline, in the same run: pyahocorasick
(a character automaton over the space-padded match form, one call per
caption), and the obvious alternative, a dict lookup of every word n-gram.
All three must give the same sets of ids (checked). More rows show where the
time goes and what turning every caption's ids into a Python tuple adds.

    python bench/match.py [--captions 200000]
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pipelines.sizing import READ_BATCH as MATCH_BATCH  # noqa: E402
from pipelines.match import QueryMatcher  # noqa: E402
from wit.core.text import match_form  # noqa: E402


def make_queries(n: int, seed: int = 0) -> list[str]:
    from wordfreq import top_n_list

    words = top_n_list("en", n, wordlist="large")
    queries = list(dict.fromkeys(words))
    rng = random.Random(seed)
    head = words[:20000]
    seen = set(queries)
    while len(queries) < n:
        q = f"{rng.choice(head)} {rng.choice(head)}"
        if q not in seen:
            seen.add(q)
            queries.append(q)
    return queries[:n]


def make_captions(n: int, seed: int = 1) -> list[str]:
    from wordfreq import top_n_list, word_frequency

    vocab = top_n_list("en", 30000)
    cum_weights = list(itertools.accumulate(word_frequency(w, "en") for w in vocab))  # what choices() would sum
    rng = random.Random(seed)
    captions = []
    for _ in range(n):
        words = rng.choices(vocab, cum_weights=cum_weights, k=rng.randint(4, 16))
        words[0] = words[0].capitalize()
        caption = " ".join(words)
        if rng.random() < 0.3:
            caption += rng.choice([".", "!", " | Stock Photo", " - Image 3 of 12", " (2019)"])
        captions.append(caption)
    return captions


class PyAhoCorasick:
    """The baseline: pyahocorasick over " {match form} ", one call per caption."""

    def __init__(self, queries: list[str]):
        import ahocorasick

        ids: dict[str, list[int]] = {}
        for qid, query in enumerate(queries):
            form = match_form(query)
            if form:
                ids.setdefault(f" {form} ", []).append(qid)
        self.automaton = ahocorasick.Automaton(ahocorasick.STORE_ANY, ahocorasick.KEY_STRING)
        for key, qids in ids.items():
            self.automaton.add_word(key, tuple(qids))
        self.automaton.make_automaton()

    def match(self, caption: str) -> tuple[int, ...]:
        found: set[int] = set()
        for _end, qids in self.automaton.iter(f" {match_form(caption)} "):
            found.update(qids)
        return tuple(sorted(found))


def per_cpu_second(run, n: int, repeats: int = 3) -> float:
    """Captions per CPU-second of this (single-threaded) process: the median of `repeats` runs."""
    rates = []
    for _ in range(repeats):
        start = time.process_time()
        run()
        rates.append(n / (time.process_time() - start))
    return sorted(rates)[len(rates) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=500_000)
    p.add_argument("--captions", type=int, default=200_000)
    a = p.parse_args()

    queries = make_queries(a.queries)
    t0 = time.perf_counter()
    matcher = QueryMatcher(queries)
    print(f"{len(queries):,} queries; wit's automaton built in {time.perf_counter() - t0:.1f}s", end="")
    t0 = time.perf_counter()
    reference = PyAhoCorasick(queries)
    print(f", pyahocorasick's in {time.perf_counter() - t0:.1f}s")
    captions = make_captions(a.captions)
    n = len(captions)
    batches = [captions[i:i + MATCH_BATCH] for i in range(0, n, MATCH_BATCH)]
    matcher.match_many(captions[:10])  # compiles the kernels, or loads them from numba's cache

    ours = per_cpu_second(lambda: [matcher.match_many(b) for b in batches], n)
    as_tuples = per_cpu_second(lambda: [t for b in batches for t in matcher.match_many(b)], n)
    pyahocorasick = per_cpu_second(lambda: [reference.match(c) for c in captions], n, repeats=1)

    lookup: dict[str, list[int]] = {}
    for qid, q in enumerate(queries):
        form = match_form(q)
        if form:
            lookup.setdefault(form, []).append(qid)
    longest = max(len(k.split()) for k in lookup)

    def naive(caption: str) -> tuple[int, ...]:
        words = match_form(caption).split()
        found: set[int] = set()
        for k in range(1, longest + 1):
            for i in range(len(words) - k + 1):
                hit = lookup.get(" ".join(words[i:i + k]))
                if hit:
                    found.update(hit)
        return tuple(sorted(found))

    ngrams = per_cpu_second(lambda: [naive(c) for c in captions], n, repeats=1)
    got = [tuple(sorted(t)) for b in batches for t in matcher.match_many(b)]
    assert got == [reference.match(c) for c in captions], "pyahocorasick disagrees with QueryMatcher"
    assert got == [naive(c) for c in captions], "the n-gram lookup disagrees with QueryMatcher"
    normalise = per_cpu_second(lambda: [match_form(c) for c in captions], n, repeats=1)

    hits = sum(len(m) for m in got) / n
    print(f"{n:,} captions, {hits:.1f} matched queries per caption on average; captions/s per core:")
    print(f"baseline  pyahocorasick, one call per caption    {pyahocorasick:12,.0f}")
    print(f"baseline  n-gram dict lookup (n <= {longest})           {ngrams:12,.0f}")
    print(f"measured  QueryMatcher.match_many, {MATCH_BATCH:,}/batch   {ours:12,.0f}"
          f"  ({ours / pyahocorasick:.2f}x pyahocorasick)")
    print(f"  the same, then a Python tuple per caption      {as_tuples:12,.0f}")
    print(f"  for scale: wit.core.text.match_form alone           {normalise:12,.0f}")
    print(f"goal 1,000,000 captions/s/core: {'met' if ours >= 1e6 else 'not met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
