"""The stage registry: every count once, every status a count, pools that add up."""

import pytest

from pipelines import counters
from pipelines.counters import DROP, INFO, POOL, REGISTRY, counter, unbalanced
from wit.core.shardformat import STATUSES


def test_every_status_is_a_count_and_success_is_the_last_pool():
    names = [c.name for c in REGISTRY]
    assert {s.value for s in STATUSES} <= set(names)
    pools = [c.name for c in REGISTRY if c.role is POOL]
    assert pools[0] == "candidates" and pools[-1] == "success"


def test_unbalanced_names_a_pool_that_does_not_follow_from_its_drops():
    counts = {c.name: 0 for c in REGISTRY}
    counts.update(candidates=10, rejected_rows=1, unmatched=2, matched=7, duplicate_pairs=1, unique_pairs=6,
                  over_cap=2, selected=4, failed_to_download=1, success=3)
    assert unbalanced(counts) == []
    counts["matched"] = 8  # a stage dropped pairs without counting them (or counted some twice)
    problems = unbalanced(counts)
    assert len(problems) == 2 and problems[0].startswith("candidates 10 - drops 3 != matched 8")
    counts["matched"], counts["success"] = 7, 0  # the plan's counts alone: the download has not run
    assert unbalanced(counts, until="selected") == [] and len(unbalanced(counts)) == 1


def test_a_count_missing_from_the_registry_fails_where_it_is_declared():
    with pytest.raises(KeyError, match="not in pipelines.counters.REGISTRY"):
        counter("no_such_count")
    assert counter("unmatched") is not None


def test_optional_counts_are_shown_only_when_they_counted_something():
    optional = [c for c in REGISTRY if c.optional]
    assert optional and all(c.role in (DROP, INFO) for c in optional)
    zero = {c.name: 0 for c in REGISTRY}
    assert not set(c.name for c in optional) & {c.name for c in counters.shown(zero)}
    assert {c.name for c in optional} <= {c.name for c in counters.shown({c.name: 1 for c in REGISTRY})}


def test_a_bundles_tally_is_emitted_once_and_summed_into_the_counts_file(tmp_path):
    import apache_beam as beam

    from tests.counting import run_counted

    class Count(counters.CountingDoFn):
        def process(self, n):
            self.tally.count("selected", n)
            self.tally.key_size("shard", n)
            self.tally.count(counters.eval_set_count("cifar"))
            yield n

    p = beam.Pipeline("DirectRunner")
    _ = counters.count_in(p | beam.Create([3, 5, 0]), "Count", Count())
    counted = run_counted(p, tmp_path)
    assert counted.stages["selected"] == 8 and counted.stages["candidates"] == 0
    assert list(counted.stages) == list(counters.NAMES)
    assert counted.key_sizes == {"shard": {"keys": 3, "largest": 5, "mean": 2.67}}
    assert counted.eval_sets == {"cifar": 3}


def test_a_tally_refuses_names_that_are_not_registered():
    tally = counters.Tally()
    with pytest.raises(KeyError, match="REGISTRY"):
        tally.count("no_such_count")
    with pytest.raises(KeyError, match="GROUPINGS"):
        tally.key_size("no_such_step", 1)
    tally.count("matched", 2)
    tally.count("matched", 0)
    tally.key_size("url", 4)
    tally.key_size("url", 1)
    assert (tally.counts, tally.sizes) == ({"matched": 2}, {"url": [2, 5, 4]})
    assert len(tally.outputs()) == 2 and (tally.counts, tally.sizes) == ({}, {})
