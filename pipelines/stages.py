"""The ordered registry of what the job counts: one line per count, in the order pairs flow.

Each stage reports its own counts as Beam counters (`counter(name)`), as
TFDS's C4 filters do; nothing is derived by subtraction. The run stats, `wit
build`'s summary, `wit report` and the HTML report all render from this one
list. A `POOL` is how many pairs are left at that point; the `DROP`s listed
after it are what the stages in between removed, so each pool equals the one
before it minus the drops between them (`unbalanced` checks it). Statuses of
downloaded samples are counts too, under the status's own name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Mapping

from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from wit.shardformat import Status

NAMESPACE = "wit"


class Role(Enum):
    POOL = "pool"  # pairs left at this point
    DROP = "drop"  # pairs a stage removed since the previous pool
    INFO = "info"  # a count outside the flow


@dataclass(frozen=True)
class Count:
    stage: str  # the module that reports it
    name: str  # Beam counter name and stats.json key
    label: str
    role: Role
    optional: bool = False  # shown only when not zero: a stage that is off by default


POOL, DROP, INFO = Role.POOL, Role.DROP, Role.INFO

REGISTRY: tuple[Count, ...] = (
    Count("candidates", "candidates", "candidate rows read", POOL),
    Count("candidates", "rejected_rows", "rejected (bad rows)", DROP),
    Count("captionfilter", "short_captions", "captions under --min-caption-words", DROP, optional=True),
    Count("match", "unmatched", "matching no query", DROP),
    Count("match", "matched", "pairs matching a query", POOL),
    Count("urldedup", "duplicate_pairs", "repeated (url, caption)", DROP),
    Count("urldedup", "duplicate_urls", "other captions of a kept url", DROP),
    Count("urldedup", "unique_pairs", "unique matched pairs", POOL),
    Count("textdedup", "caption_near_duplicates", "near-duplicate captions", DROP, optional=True),
    Count("balance", "over_cap", "over the cap of every query matched", DROP),
    Count("balance", "selected", "selected by balancing", POOL),
    Count("shards", Status.FAILED_TO_DOWNLOAD.value, "failed to download", DROP),
    Count("shards", Status.FAILED_TO_RESIZE.value, "failed to decode/resize", DROP),
    Count("shards", Status.OPTED_OUT.value, "opted out (robots.txt, X-Robots-Tag)", DROP),
    Count("shards", Status.DUPLICATE.value, "duplicate images", DROP),
    Count("shards", Status.NEAR_DUPLICATE.value, "near-duplicate images", DROP),
    Count("shards", Status.SUCCESS.value, "samples in the shards", POOL),
    Count("download", "downloaded_this_run", "downloaded in this run", INFO),
)
NAMES = tuple(c.name for c in REGISTRY)
assert len(set(NAMES)) == len(NAMES), "a count is registered twice"
assert set(s.value for s in Status if s is not Status.PENDING) <= set(NAMES), "a status has no count"


def counter(name: str):
    """The Beam counter of a registered count (a typo fails when the stage module is imported)."""
    if name not in NAMES:
        raise KeyError(f"{name!r} is not in pipelines.stages.REGISTRY")
    return Metrics.counter(NAMESPACE, name)


def from_metrics(result) -> dict[str, int]:
    """Every registered count of a finished run, in registry order, summed over the steps reporting it.

    Committed values where the runner has them (they count a retried bundle once), else attempted ones.
    """
    totals = dict.fromkeys(NAMES, 0)
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        if c.key.metric.name in totals:
            value = c.committed if c.committed is not None else c.attempted
            totals[c.key.metric.name] += value or 0
    return totals


def unbalanced(stages: Mapping[str, int]) -> list[str]:
    """Where a pool is not the pool before it minus the drops between them (empty when the counts agree)."""
    problems, pool, name, drops = [], None, "", 0
    for c in REGISTRY:
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
