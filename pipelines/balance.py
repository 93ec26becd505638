"""Per-query balancing: each query keeps at most `cap` of the pairs matching it.

Every pair gets one seeded 64-bit priority from its uid; each query keeps the
`cap` pairs with the smallest priorities (bottom-k). That is "shuffle once with
the seed, then each query takes its first `cap` pairs": exact (no sampling
error), reproducible on any runner and worker count, and a query with fewer
matches than the cap keeps all of them. The dataset is the union of the
selections, and each pair records which queries selected it.

`Balance` is the job's stage; it counts `selected` and `over_cap` (pairs every
matching query left out).
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Iterable, Mapping

import apache_beam as beam

from pipelines.stages import counter


def priority(seed: int, uid: str) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{uid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def select(matches: Mapping[str, Iterable[int]], cap: int, seed: int) -> dict[str, tuple[int, ...]]:
    """Reference in-memory balancing: uid -> matched query ids in, uid -> selecting query ids out.

    The Beam job computes the same thing with `Top.SmallestPerKey`; this is its
    specification and what the tests compare it against.
    """
    if cap < 1:
        raise ValueError(f"per-query cap must be >= 1, got {cap}")
    per_query: dict[int, list[tuple[int, str]]] = {}
    for uid, qids in matches.items():
        key = (priority(seed, uid), uid)
        for qid in qids:
            per_query.setdefault(qid, []).append(key)
    selected: dict[str, list[int]] = {}
    for qid, keys in per_query.items():
        for _prio, uid in heapq.nsmallest(cap, keys):
            selected.setdefault(uid, []).append(qid)
    return {uid: tuple(sorted(qids)) for uid, qids in selected.items()}


class Balance(beam.PTransform):
    """(uid, Pair) in; (uid, (Pair, selecting query ids)) out, for selected pairs only."""

    def __init__(self, cap: int, seed: int):
        super().__init__()
        self.cap, self.seed = cap, seed

    def expand(self, pairs):
        seed = self.seed
        selections = (
            pairs
            | "PriorityPerQuery" >> beam.FlatMap(
                lambda kv: [(q, (priority(seed, kv[0]), kv[0])) for q in kv[1].matched])
            | "BottomK" >> beam.combiners.Top.SmallestPerKey(self.cap)
            | "SelectedBy" >> beam.FlatMap(lambda kv: [(uid, kv[0]) for _prio, uid in kv[1]])
        )
        return (
            {"pair": pairs, "query": selections}
            | "JoinSelections" >> beam.CoGroupByKey()
            | "KeepSelected" >> beam.ParDo(_KeepSelected())
        )


class _KeepSelected(beam.DoFn):
    selected, over_cap = counter("selected"), counter("over_cap")

    def process(self, item):
        uid, joined = item
        queries = tuple(sorted(joined["query"]))
        (pair,) = joined["pair"]
        if queries:
            self.selected.inc()
            yield uid, (pair, queries)
        else:
            self.over_cap.inc()
