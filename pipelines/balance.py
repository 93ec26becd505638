"""Per-query balancing: each query keeps at most `cap` of the pairs matching it.

Every pair gets one seeded 64-bit priority from its uid; each query keeps the
`cap` pairs with the smallest priorities (bottom-k). That is "shuffle once with
the seed, then each query takes its first `cap` pairs": exact (no sampling
error), reproducible on any runner and worker count, and a query with fewer
matches than the cap keeps all of them. The dataset is the union of the
selections, and each pair records which queries selected it.

`Balance` is the job's stage; it counts `selected` and `over_cap` (pairs every
matching query left out). No query's bottom-k sees much more than its cap of
pairs, however many match it (see `bound`). It works on batches of pairs held
as numpy arrays: a pair matches a dozen queries on average, and per (pair,
query) Python would cost more than everything else in the plan.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from typing import Any, Iterable, Mapping, NamedTuple, Optional

import apache_beam as beam
import numpy as np

from pipelines.grouping import Batches, CountPerKey, pack, unpack, windowed
from pipelines.records import PAIR, id_counts, ids_of
from pipelines.sizing import BATCH, FLUSH_ENTRIES
from pipelines.counters import MAIN, CountingDoFn, count_in, counter
from wit.core.runner import relax_gc


def priority(seed: int, uid: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{uid}".encode(), digest_size=8).digest(), "big")


def select(matches: Mapping[str, Iterable[int]], cap: int, seed: int) -> dict[str, tuple[int, ...]]:
    """Reference in-memory balancing: uid -> matched query ids in, uid -> selecting query ids out.

    The Beam job (`Balance`) computes the same thing; this is its specification
    and what the tests compare it against.
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


# How many of a query's pairs go on to its bottom-k: enough that fewer than `cap` pass only with
# vanishing probability (>= 20 standard deviations above the cap at any cap), and at most about 2x the cap.
def expected_passing(cap: int) -> float:
    return 1.5 * cap + 10 * math.sqrt(cap) + 20


def bound(matched: int, cap: int) -> Optional[int]:
    """The priority under which a query's pairs reach its bottom-k; None when all of them do.

    Priorities are uniform 64-bit hashes, so about `expected_passing(cap)` of `matched` pairs fall under it.
    Whenever at least `cap` do, the bottom-k of those is the bottom-k of all (the cap-th smallest priority
    is below the bound); `Balance` checks that, and names a query where it failed (see `Balance`).
    """
    e = expected_passing(cap)
    return None if matched <= e else int(e / matched * 2**64)


class Batch(NamedTuple):
    """Pairs as arrays: the (uid, Pair) themselves, each pair's priority and uid as 64-bit numbers (the
    bottom-k order is (priority, uid); a uid is 16 hex digits), and the matched query ids of all pairs in
    a row, `lengths[i]` of them for pair i."""

    items: bytes  # the (uid, pair) list, `pack`ed: only the last step unpacks it
    prio: np.ndarray
    uid: np.ndarray
    qids: np.ndarray
    lengths: np.ndarray

    def repeated(self) -> tuple[np.ndarray, np.ndarray]:
        """Priority and uid of the pair of each entry of `qids`."""
        return np.repeat(self.prio, self.lengths), np.repeat(self.uid, self.lengths)


def to_batch(items: list, seed: int) -> tuple:
    n = len(items)
    ids = [pair[PAIR.MATCHED] for _uid, pair in items]
    return tuple(Batch(
        pack(items),
        np.fromiter((priority(seed, uid) for uid, _pair in items), np.uint64, n),
        np.fromiter((int(uid, 16) for uid, _pair in items), np.uint64, n),
        ids_of(b"".join(ids)).astype(np.int64),
        id_counts(ids).astype(np.int64)))  # a plain tuple: Beam pickles a NamedTuple's class with every element


class _Dense:
    """A side input dict (query -> value) as arrays indexed by query id, built once per dict."""

    def __init__(self):
        self.source, self.has, self.values = None, np.zeros(0, bool), ()

    def of(self, mapping: Mapping[int, tuple], width: int):
        if mapping is not self.source:
            size = max(mapping, default=-1) + 1
            self.has = np.zeros(size, bool)
            self.values = tuple(np.zeros(size, np.uint64) for _ in range(width))
            if mapping:
                keys = np.fromiter(mapping, np.int64, len(mapping))
                self.has[keys] = True
                for i, column in enumerate(self.values):
                    column[keys] = np.fromiter((v[i] for v in mapping.values()), np.uint64, len(mapping))
            self.source = mapping
        return self.has, self.values

    def lookup(self, qids: np.ndarray, mapping: Mapping[int, tuple], width: int):
        """For each query id: has it a value, and the value's columns (0 where it has none)."""
        has, values = self.of(mapping, width)
        inside = qids < len(has)
        q = np.where(inside, qids, 0)
        present = inside & has[q] if len(has) else np.zeros(len(qids), bool)
        return present, [np.where(present, column[q], 0) if len(has) else np.zeros(len(qids), np.uint64)
                         for column in values]


class Balance(beam.PTransform):
    """(uid, Pair) in; out: lists of (uid, Pair, selecting query ids) for the selected pairs, (query, matching pairs)
    for the run's statistics, and the ids of queries whose bottom-k is not proven (see below). Pairs are the
    plain tuples Beam carries.

    Per query, only the pairs under its priority bound meet in its bottom-k (about 1.5x the cap, whatever
    the query's size), and the selection is applied by comparing each pair with its queries' cut-off
    priorities (a side input), not by joining the selections back. Should fewer than `cap` of a larger
    query's pairs fall under its bound (about 20 standard deviations away), the query is named in the third
    output and its selection is not exact; the caller runs again with it in `whole`, whose queries take all
    their pairs. Doing that in the same job would cost every pair one more pass, for an event that does not
    happen.
    """

    def __init__(self, cap: int, seed: int, whole: frozenset[int] = frozenset()):
        super().__init__()
        self.cap, self.seed, self.whole = cap, seed, whole

    def expand(self, pairs):
        cap, seed, whole = self.cap, self.seed, self.whole
        batches = (pairs
                   | "BatchPairs" >> beam.ParDo(Batches(BATCH))
                   | "Priority" >> beam.Map(to_batch, seed))
        matched = batches | "MatchedPerQuery" >> CountPerKey(lambda b: Batch(*b).qids)
        # typed Any: Beam infers its integer coder for plain ints, which holds signed 64-bit values only
        bounds = matched | "Bounds" >> beam.FlatMap(
            lambda qn: [] if qn[0] in whole or bound(qn[1], cap) is None else [(qn[0], (bound(qn[1], cap),))]
        ).with_output_types(tuple[int, Any])
        bottom = (batches
                  | "UnderBound" >> beam.ParDo(_UnderBound(cap), beam.pvalue.AsDict(bounds))
                  | "BottomK" >> beam.CombinePerKey(BottomK(cap)))
        checked = count_in(bottom, "Check", _Check(cap), beam.pvalue.AsDict(matched), tags=[_AGAIN],
                           output_types=tuple[int, Any])
        selected = count_in(batches, "Select", _Select(), beam.pvalue.AsDict(checked[MAIN]))
        return selected, matched, checked[_AGAIN] | "Unproven" >> beam.Keys()


def _smallest(prio: np.ndarray, uid: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((uid, prio))[:cap]
    return prio[order], uid[order]


class BottomK(beam.CombineFn):
    """The `cap` smallest (priority, uid) of a query, as two arrays, and how many reached it (reported as
    its size). Its inputs are partial results of the same form, which `_UnderBound` gathers per bundle."""

    def __init__(self, cap: int):
        self.cap = cap

    def create_accumulator(self):
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64), 0

    def add_input(self, acc, partial):
        return self.merge_accumulators([acc, partial])

    def merge_accumulators(self, accumulators):
        accumulators = [a for a in accumulators if a[2]]
        if len(accumulators) <= 1:  # most queries: one partial, already the bottom-k of what it saw
            return accumulators[0] if accumulators else self.create_accumulator()
        prio, uid = _smallest(np.concatenate([a[0] for a in accumulators]),
                              np.concatenate([a[1] for a in accumulators]), self.cap)
        return prio, uid, sum(a[2] for a in accumulators)

    def extract_output(self, acc):
        return acc


_AGAIN = "again"  # queries whose bound let fewer than `cap` of their pairs through: not proven


class _UnderBound(beam.DoFn):
    """(query, partial bottom-k) for the pairs under their queries' bounds (a query without one takes every
    pair), gathered per bundle: what crosses the shuffle is about one element per query and bundle, not one
    per (pair, query)."""

    def __init__(self, cap: int):
        self.cap = cap

    def setup(self):
        relax_gc()
        self.bounds = _Dense()

    def start_bundle(self):
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.held = 0

    def process(self, batch, bounds):
        b = Batch(*batch)
        prio, uid = b.repeated()
        has, (limit,) = self.bounds.lookup(b.qids, bounds, 1)
        keep = ~has | (prio < limit)
        self.parts.append((b.qids[keep], prio[keep], uid[keep]))
        self.held += int(keep.sum())
        if self.held > FLUSH_ENTRIES:
            yield from self._partials()

    def _partials(self):
        if not self.parts:
            return []
        q, prio, uid = (np.concatenate(column) for column in zip(*self.parts))
        self.start_bundle()
        order = np.lexsort((uid, prio, q))
        q, prio, uid = q[order], prio[order], uid[order]
        starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
        ends = np.r_[starts[1:], len(q)]
        return [(int(q[s]), (prio[s:min(e, s + self.cap)].copy(), uid[s:min(e, s + self.cap)].copy(), int(e - s)))
                for s, e in zip(starts, ends)]

    def finish_bundle(self):
        for kv in self._partials():
            yield windowed(kv)


class _Check(CountingDoFn):
    """A query's cut-off (its cap-th smallest (priority, uid)) when it has more pairs than the cap; queries
    whose bottom-k may be missing pairs (fewer than the cap passed, but more exist) go to `_AGAIN`."""

    def __init__(self, cap: int):
        self.cap = cap

    def process(self, item, matched):
        q, (prio, uid, reached) = item
        self.tally.key_size("query_topk", reached)
        if len(prio) == self.cap:
            if matched[q] > self.cap:
                yield q, (int(prio[-1]), int(uid[-1]))
        elif reached < matched[q]:
            yield beam.pvalue.TaggedOutput(_AGAIN, (q, matched[q]))


class _Select(CountingDoFn):
    selected, over_cap = counter("selected"), counter("over_cap")

    def setup(self):
        relax_gc()
        self.cutoffs = _Dense()

    def process(self, batch, cutoffs):
        b = Batch(*batch)
        prio, uid = b.repeated()
        has, (cut_prio, cut_uid) = self.cutoffs.lookup(b.qids, cutoffs, 2)
        chosen = ~has | (prio < cut_prio) | ((prio == cut_prio) & (uid <= cut_uid))
        items = unpack(b.items)
        pair_of = np.repeat(np.arange(len(items)), b.lengths)[chosen]
        qids = b.qids[chosen]
        order = np.lexsort((qids, pair_of))  # each pair's selecting ids, ascending
        per_pair = np.bincount(pair_of, minlength=len(items))
        ids, start = qids[order].tolist(), 0
        picked = []
        for i, n in enumerate(per_pair.tolist()):
            if n:
                uid_str, pair = items[i]
                picked.append((uid_str, pair, tuple(ids[start:start + n])))
                start += n
        self.tally.count(self.selected, len(picked))
        self.tally.count(self.over_cap, len(items) - len(picked))
        if picked:
            yield picked
