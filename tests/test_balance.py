import random

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.balance import Balance, priority, select
from pipelines.match import Pair


def _matches(n=600, queries=12, seed=3):
    rng = random.Random(seed)
    # Zipf-ish: query q matches a pair with probability ~ 1/(q+1)
    return {f"{i:016x}": tuple(q for q in range(queries) if rng.random() < 1 / (q + 1)) or (0,) for i in range(n)}


def test_cap_is_exact_and_small_queries_keep_everything():
    matches = _matches()
    cap = 40
    chosen = select(matches, cap, seed=0)
    for q in range(12):
        matching = [u for u, qs in matches.items() if q in qs]
        kept = [u for u, qs in chosen.items() if q in qs]
        assert len(kept) == min(cap, len(matching))
        assert set(kept) <= set(matching)
    # each query keeps exactly its bottom-k by seeded priority
    top = sorted((u for u, qs in matches.items() if 0 in qs), key=lambda u: (priority(0, u), u))[:cap]
    assert sorted(u for u, qs in chosen.items() if 0 in qs) == sorted(top)


def test_same_seed_same_selection_other_seed_differs():
    matches = _matches()
    assert select(matches, 30, seed=7) == select(matches, 30, seed=7)
    assert select(matches, 30, seed=7) != select(matches, 30, seed=8)


def test_cap_must_be_positive():
    with pytest.raises(ValueError):
        select({"a": (1,)}, 0, 0)


def test_beam_balance_equals_the_reference():
    matches = _matches(n=300)
    expected = select(matches, 25, seed=5)
    pairs = [(uid, Pair(f"caption {uid}", f"http://x/{uid}", qs)) for uid, qs in matches.items()]
    with TestPipeline() as p:
        out = (p | beam.Create(pairs) | Balance(25, 5)
               | beam.Map(lambda kv: (kv[0], kv[1][1])))
        assert_that(out, equal_to(sorted(expected.items())))
