"""Per-query balancing: each query keeps at most `cap` of the pairs matching it.

Every pair gets one seeded 64-bit priority from its uid; each query keeps the
`cap` pairs with the smallest priorities (bottom-k). That is "shuffle once with
the seed, then each query takes its first `cap` pairs": exact (no sampling
error), reproducible on any runner and worker count, and a query with fewer
matches than the cap keeps all of them. The dataset is the union of the
selections, and each pair records which queries selected it.
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Iterable, Mapping


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
