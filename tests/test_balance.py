import random

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines.balance import Balance, priority, select
from pipelines.records import Pair, pack_ids


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


def _run_balance(matches, cap, seed, whole=frozenset(), unproven=()):
    """Beam's selection, its per-query counts and the largest number of pairs one query's bottom-k saw."""
    import tempfile

    from tests.counting import run_counted

    pairs = [(uid, Pair(f"caption {uid}", f"http://x/{uid}", pack_ids(qs))) for uid, qs in matches.items()]
    p = beam.Pipeline("DirectRunner")
    selected, matched, not_proven = p | beam.Create(pairs) | Balance(cap, seed, whole)
    assert_that(not_proven, equal_to(list(unproven)), label="Unproven")
    expected_matched = {}
    for qs in matches.values():
        for q in qs:
            expected_matched[q] = expected_matched.get(q, 0) + 1
    assert_that(selected | beam.FlatMap(lambda batch: [(uid, ids) for uid, _pair, ids in batch]),
                equal_to(sorted(select(matches, cap, seed).items())), label="Selection")
    assert_that(matched, equal_to(sorted(expected_matched.items())), label="Matched")
    with tempfile.TemporaryDirectory() as folder:
        return run_counted(p, folder).key_sizes["query_topk"]


def test_beam_balance_equals_the_reference_and_bounds_each_query():
    matches = _matches(n=3000)  # query 0 matches every pair
    keys = _run_balance(matches, 25, seed=5)
    assert keys["largest"] <= 1.5 * 25 + 10 * 5 + 20 + 4 * (1.5 * 25 + 10 * 5 + 20) ** 0.5  # not 3,000
    assert keys["keys"] == 12


def test_a_query_whose_bound_let_too_few_through_is_named_then_taken_whole(monkeypatch):
    from pipelines import balance

    monkeypatch.setattr(balance, "expected_passing", lambda cap: cap / 3)  # a bound far too low, on purpose
    matches = _matches(n=1200)
    p = beam.Pipeline("DirectRunner")
    pairs = [(uid, Pair(f"caption {uid}", f"http://x/{uid}", pack_ids(qs))) for uid, qs in matches.items()]
    sizes = {q: sum(1 for qs in matches.values() if q in qs) for q in range(12)}
    _, _, unproven = p | beam.Create(pairs) | Balance(40, 2)
    assert_that(unproven, equal_to([q for q, n in sizes.items() if n > 40 / 3]))  # not proven: too few passed
    p.run().wait_until_finish()
    keys = _run_balance(matches, 40, seed=2, whole=frozenset(sizes))  # then the selection is exact
    assert keys["largest"] == sum(1 for qs in matches.values() if 0 in qs)  # query 0 took all its pairs
