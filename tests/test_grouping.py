"""Grouping with bounded work per key: each helper gives what Beam's own transform would, hot keys included."""

import random
from collections import Counter

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.grouping import (Batches, CombineInPartitions, CountPerKey, KeeperPerKey, ListsPerKey, Smallest,
                                pack, unpack)


def test_pack_round_trips_nested_values():
    values = [("a", (1, 2, 3), None, {"x"}), ("b", (), 2**70, frozenset())]
    assert unpack(pack(values)) == values


def test_batches_keep_every_element_once():
    with TestPipeline() as p:
        sizes = p | beam.Create(range(1000)) | beam.ParDo(Batches(64)) | beam.Map(len)
        assert_that(sizes | beam.CombineGlobally(sum), equal_to([1000]), label="All")
        assert_that(sizes | beam.CombineGlobally(max), equal_to([64]), label="Cut")


def test_count_per_key_counts_lists_and_arrays_alike():
    rng = random.Random(0)
    rows = [[rng.randrange(20) for _ in range(rng.randrange(5))] for _ in range(300)]
    want = sorted(Counter(k for r in rows for k in r).items())
    with TestPipeline() as p:
        rows_in = p | beam.Create(rows)
        assert_that(rows_in | "Lists" >> CountPerKey(lambda r: r), equal_to(want), label="Lists")
        assert_that(rows_in | "Arrays" >> CountPerKey(lambda r: np.array(r, np.int64)), equal_to(want),
                    label="Arrays")


def test_lists_per_key_ship_every_value_under_its_key():
    with TestPipeline() as p:
        lists = (p | beam.Create([list(range(i, i + 10)) for i in range(0, 100, 10)])
                 | beam.ParDo(ListsPerKey(lambda v: v % 3)) | beam.GroupByKey()
                 | beam.MapTuple(lambda k, parts: (k, sorted(v for n, packed in parts for v in unpack(packed)))))
        assert_that(lists, equal_to([(k, [v for v in range(100) if v % 3 == k]) for k in range(3)]))


def test_combine_in_partitions_equals_combine_per_key():
    values = [f"k{random.Random(i).randrange(50)}:{i}" for i in range(2000)]
    with TestPipeline() as p:
        got = (p | beam.Create(values)
               | CombineInPartitions(beam.combiners.CountCombineFn(), lambda v: v.split(":")[0],
                                     lambda k: int(k[1:]) % 4, "url_partition"))
        assert_that(got, equal_to(sorted(Counter(v.split(":")[0] for v in values).items())))


@pytest.mark.parametrize("max_group", [2, 10_000])
def test_keeper_per_key_pairs_every_value_with_its_keys_smallest(max_group):
    """With max_group 2, keys of three or more values are hot: their keeper comes from a combine."""
    rng = random.Random(1)
    kv = [(f"k{rng.randrange(30)}", rng.randrange(10**6)) for _ in range(500)]
    keepers = {}
    for k, v in kv:
        keepers[k] = min(keepers.get(k, v), v)
    with TestPipeline() as p:
        got = p | beam.Create(kv) | KeeperPerKey("sha256", lambda v: v, max_group)
        assert_that(got, equal_to([(k, v, keepers[k]) for k, v in kv]))


def test_smallest_counts_what_it_saw():
    fn = Smallest(lambda v: -v)
    acc = fn.merge_accumulators([fn.add_input(fn.create_accumulator(), 3), fn.add_input(fn.create_accumulator(), 7)])
    assert acc == (7, 2)
