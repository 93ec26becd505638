"""The ordered registry of what the job counts: one line per count, in the order pairs flow.

Each stage reports its own counts as Beam counters (`counter(name)`), as
TFDS's C4 filters do; nothing is derived by subtraction. Every grouping or
combining step also reports how many elements each of its keys received
(`key_sizes(name)`, a Beam distribution), so hot keys show up on any data. The run stats, `wit
build`'s summary, `wit report` and the HTML report all render from this one
list. A `POOL` is how many pairs are left at that point; the `DROP`s listed
after it are what the stages in between removed, so each pool equals the one
before it minus the drops between them (`unbalanced` checks it). Statuses of
downloaded samples are counts too, under the status's own name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Iterable, Mapping

from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from wit.core.shardformat import Status

NAMESPACE = "wit"


class Role(Enum):
    POOL = "pool"  # pairs left at this point
    DROP = "drop"  # pairs a stage removed since the previous pool
    INFO = "info"  # a count outside the flow


@dataclass(frozen=True)
class Count:
    name: str  # Beam counter name and stats.json key
    label: str
    role: Role
    optional: bool = False  # shown only when not zero: a stage that is off by default


POOL, DROP, INFO = Role.POOL, Role.DROP, Role.INFO

REGISTRY: tuple[Count, ...] = (
    Count("candidates", "candidate rows read", POOL),
    Count("rejected_rows", "rejected (bad rows)", DROP),
    Count("damaged_files", "input files damaged part-way (rows before the damage read)", INFO,
          optional=True),
    Count("short_captions", "captions under --min-caption-words", DROP, optional=True),
    Count("unmatched", "matching no query", DROP),
    Count("matched", "pairs matching a query", POOL),
    Count("duplicate_pairs", "repeated (url, caption)", DROP),
    Count("duplicate_urls", "other captions of a kept url", DROP),
    Count("unique_pairs", "unique matched pairs", POOL),
    Count("caption_near_duplicates", "near-duplicate captions", DROP, optional=True),
    Count("over_cap", "over the cap of every query matched", DROP),
    Count("selected", "selected by balancing", POOL),
    Count(Status.FAILED_TO_DOWNLOAD.value, "failed to download", DROP),
    Count(Status.FAILED_TO_RESIZE.value, "failed to decode/resize", DROP),
    Count(Status.OPTED_OUT.value, "opted out (robots.txt, X-Robots-Tag)", DROP),
    Count(Status.DUPLICATE.value, "duplicate images", DROP),
    Count(Status.NEAR_DUPLICATE.value, "near-duplicate images", DROP),
    Count(Status.EVAL_DUPLICATE.value, "near an evaluation image (--exclude-near)", DROP, optional=True),
    Count(Status.SUCCESS.value, "samples in the shards", POOL),
    Count("downloaded_this_run", "downloaded in this run", INFO),
    Count("near_dup_degenerate", "near duplicates in pHash groups over the limit (bounded rule)", INFO,
          optional=True),
    Count("hot_keys", "keys over --max-group-size, resolved without grouping", INFO, optional=True),
)
NAMES = tuple(c.name for c in REGISTRY)
assert len(set(NAMES)) == len(NAMES), "a count is registered twice"
assert set(s.value for s in Status if s is not Status.PENDING) <= set(NAMES), "a status has no count"


@dataclass(frozen=True)
class Grouping:
    name: str  # Beam distribution name and stats.json key
    label: str


GROUPINGS: tuple[Grouping, ...] = (
    Grouping("url", "pairs of one url, combined"),
    Grouping("url_partition", "partial results in one url partition, grouped"),
    Grouping("caption_band", "captions in one MinHash band, grouped"),
    Grouping("caption_drops", "drops of one caption (one per band), combined"),
    Grouping("query_topk", "pairs reaching one query's bottom-k, combined"),
    Grouping("order_bucket", "selected pairs in one ordering bucket, grouped"),
    Grouping("shard", "samples of one shard, grouped"),
    Grouping("sha256", "images with one sha256, grouped"),
    Grouping("phash_partition", "images in one pHash table partition, sorted by key"),
    Grouping("phash_group", "images sharing one pHash table key, compared pairwise (largest per partition)"),
    Grouping("shard_verdicts", "dedup verdicts of one shard, grouped"),
)
GROUPING_NAMES = tuple(g.name for g in GROUPINGS)


def counter(name: str):
    """The Beam counter of a registered count (a typo fails when the stage module is imported)."""
    if name not in NAMES:
        raise KeyError(f"{name!r} is not in pipelines.counters.REGISTRY")
    return Metrics.counter(NAMESPACE, name)


@lru_cache(maxsize=None)
def key_sizes(name: str):
    """The distribution of elements per key of a registered grouping step."""
    if name not in GROUPING_NAMES:
        raise KeyError(f"{name!r} is not in pipelines.counters.GROUPINGS")
    return Metrics.distribution(NAMESPACE, f"keys.{name}")


EVAL_SET_PREFIX = "eval_set."


def eval_set_counter(source: str):
    """Images dropped for being near an image of the evaluation set `source` (--exclude-near)."""
    return Metrics.counter(NAMESPACE, EVAL_SET_PREFIX + source)


def _value(result):
    """Committed values where the runner has them (they count a retried bundle once), else attempted ones."""
    return result.committed if result.committed is not None else result.attempted


def from_metrics(result) -> dict[str, int]:
    """Every registered count of a finished run, in registry order, summed over the steps reporting it."""
    totals = dict.fromkeys(NAMES, 0)
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        if c.key.metric.name in totals:
            totals[c.key.metric.name] += _value(c) or 0
    return totals


def eval_sets_from_metrics(result) -> dict[str, int]:
    """Per evaluation set, the images dropped for being near one of its images."""
    totals: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        if c.key.metric.name.startswith(EVAL_SET_PREFIX):
            name = c.key.metric.name.removeprefix(EVAL_SET_PREFIX)
            totals[name] = totals.get(name, 0) + (_value(c) or 0)
    return dict(sorted(totals.items()))


def key_sizes_from_metrics(result) -> dict[str, dict]:
    """Per grouping step that ran: how many keys, the largest key's elements, the mean."""
    merged: dict[str, list[int]] = {}  # name -> [count, sum, max]
    for d in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["distributions"]:
        name = d.key.metric.name.removeprefix("keys.")
        value = _value(d)
        if name in GROUPING_NAMES and value is not None and value.count:
            m = merged.setdefault(name, [0, 0, 0])
            m[0], m[1], m[2] = m[0] + value.count, m[1] + value.sum, max(m[2], value.max)
    return {g: {"keys": merged[g][0], "largest": merged[g][2], "mean": round(merged[g][1] / merged[g][0], 2)}
            for g in GROUPING_NAMES if g in merged}


def unbalanced(stages: Mapping[str, int], until: str = "") -> list[str]:
    """Where a pool is not the pool before it minus the drops between them (empty when the counts agree);
    with `until`, only the counts up to that one (the plan's)."""
    problems, pool, name, drops = [], None, "", 0
    counts = REGISTRY[:NAMES.index(until) + 1] if until else REGISTRY
    for c in counts:
        if c.role is DROP:
            drops += stages.get(c.name, 0)
        elif c.role is POOL:
            value = stages.get(c.name, 0)
            if pool is not None and pool - drops != value:
                problems.append(f"{name} {pool:,} - drops {drops:,} != {c.name} {value:,}")
            pool, name, drops = value, c.name, 0
    return problems


def shown(stages: Mapping[str, int]) -> Iterable[Count]:
    """The counts a summary lists: all but optional ones that stayed at zero."""
    return [c for c in REGISTRY if not c.optional or stages.get(c.name)]
