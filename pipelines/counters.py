"""The ordered registry of what the job counts: one line per count, in the order pairs flow.

Each stage counts what it drops itself, as TFDS's C4 filters do; nothing is
derived by subtraction. Every grouping or combining step also reports how many
elements each of its keys received, so hot keys show up on any data. The run
stats, `wit build`'s summary, `wit report` and the HTML report all render from
this one list. A `POOL` is how many pairs are left at that point; the `DROP`s
listed after it are what the stages in between removed, so each pool equals the
one before it minus the drops between them (`unbalanced` checks it). Statuses
of downloaded samples are counts too, under the status's own name.

Counts are data, not Beam metrics. A counting DoFn (`CountingDoFn`) adds to
its bundle's `Tally` and emits it as elements when the bundle ends; the job
sums them and writes one file to DIR (`WriteCounts`). A runner commits a
bundle's outputs exactly once however often it retried the bundle, while its
metrics may count a retried task twice (Spark's portable runner reports only
attempted values) or be missing (Spark's job server reports none). The same
figures also go to Beam metrics, for a runner's own UI while the job runs.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from wit.core import fileio
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
_COUNTABLE, _STEPS = frozenset(NAMES), frozenset(GROUPING_NAMES)


def counter(name: str) -> str:
    """A registered count's name, checked where a stage declares it (a typo fails when the module is
    imported)."""
    if name not in NAMES:
        raise KeyError(f"{name!r} is not in pipelines.counters.REGISTRY")
    return name


EVAL_SET_PREFIX = "eval_set."


def eval_set_count(source: str) -> str:
    """The count of images dropped for being near an image of the evaluation set `source` (--exclude-near)."""
    return EVAL_SET_PREFIX + source


@lru_cache(maxsize=None)
def _metric_counter(name: str):
    return Metrics.counter(NAMESPACE, name)


@lru_cache(maxsize=None)
def _metric_sizes(step: str):
    return Metrics.distribution(NAMESPACE, f"keys.{step}")


COUNTS = "_counts.json"  # a job's counts, in DIR (the download's) and DIR/plan (the plan's)
TALLY = "tally"  # the output tag of what a counting DoFn's bundle counted
MAIN = "main"


class Tally:
    """What one bundle counted: counts, and the sizes of the keys it grouped, per grouping step."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.sizes: dict[str, list[int]] = {}  # step -> [keys, elements, largest]

    def count(self, name: str, n: int = 1) -> None:
        if name not in _COUNTABLE and not name.startswith(EVAL_SET_PREFIX):
            raise KeyError(f"{name!r} is not in pipelines.counters.REGISTRY")
        if n:
            self.counts[name] = self.counts.get(name, 0) + n
            _metric_counter(name).inc(n)

    def key_size(self, step: str, n: int) -> None:
        if step not in _STEPS:
            raise KeyError(f"{step!r} is not in pipelines.counters.GROUPINGS")
        s = self.sizes.get(step)
        if s is None:
            self.sizes[step] = [1, n, n]
        else:
            s[0], s[1], s[2] = s[0] + 1, s[1] + n, max(s[2], n)
        _metric_sizes(step).update(n)

    def outputs(self) -> list:
        """The tally as `TALLY` outputs of a finishing bundle; emptied."""
        out = [("count", name, n) for name, n in self.counts.items()]
        out += [("keys", step, tuple(s)) for step, s in self.sizes.items()]
        self.counts, self.sizes = {}, {}
        return [beam.pvalue.TaggedOutput(TALLY, GlobalWindows.windowed_value(t)) for t in out]


class CountingDoFn(beam.DoFn):
    """A DoFn that counts into `self.tally`, emitted when each bundle ends. Apply it with `count_in`; a
    subclass with a start_bundle or finish_bundle of its own calls these."""

    def start_bundle(self):
        self.tally = Tally()

    def finish_bundle(self):
        return self.tally.outputs()


_TALLIES: "weakref.WeakKeyDictionary[beam.Pipeline, list]" = weakref.WeakKeyDictionary()


def count_in(pcoll, label: str, fn: CountingDoFn, *side_inputs, tags: Sequence[str] = (), output_types=None):
    """`pcoll | label >> ParDo(fn, *side_inputs)`, its tallies kept for the pipeline's `WriteCounts`: the main
    output, or with `tags` every output (indexed by tag, and `MAIN`)."""
    pardo = beam.ParDo(fn, *side_inputs)
    if output_types is not None:
        pardo = pardo.with_output_types(output_types)
    outputs = pcoll | label >> pardo.with_outputs(TALLY, *tags, main=MAIN)
    _TALLIES.setdefault(pcoll.pipeline, []).append(outputs[TALLY])
    return outputs if tags else outputs[MAIN]


class AddTallies(beam.CombineFn):
    def create_accumulator(self):
        return {}, {}

    def add_input(self, acc, tally):
        counts, sizes = acc
        kind, name, value = tally
        if kind == "count":
            counts[name] = counts.get(name, 0) + value
        else:
            before = sizes.get(name, (0, 0, 0))
            sizes[name] = (before[0] + value[0], before[1] + value[1], max(before[2], value[2]))
        return acc

    def merge_accumulators(self, accumulators):
        counts, sizes = self.create_accumulator()
        for c, s in accumulators:
            for name, n in c.items():
                self.add_input((counts, sizes), ("count", name, n))
            for step, value in s.items():
                self.add_input((counts, sizes), ("keys", step, value))
        return counts, sizes

    def extract_output(self, acc):
        return acc


class WriteCounts(beam.PTransform):
    """Every tally of the pipeline summed into one JSON file at `path` (applied after every counting stage:
    `p | WriteCounts(path)`)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, pbegin):
        tallies = _TALLIES.pop(pbegin.pipeline, [])
        return (tuple(tallies)
                | "Tallies" >> beam.Flatten(pipeline=pbegin.pipeline)
                | "AddTallies" >> beam.CombineGlobally(AddTallies())
                | "Write" >> beam.Map(_write_counts, self.path))


def _write_counts(acc, path: str) -> None:
    counts, sizes = acc
    record = {"counts": dict(sorted(counts.items())),
              "key_sizes": {step: list(sizes[step]) for step in sorted(sizes)}}
    fileio.write_bytes(path, json.dumps(record, indent=1).encode() + b"\n")


@dataclass(frozen=True)
class Counts:
    """A finished job's counts file, read: the registered counts in registry order (0 where nothing was
    counted), per grouping step its keys, largest key and mean, and per evaluation set its drops."""
    stages: dict[str, int]
    key_sizes: dict[str, dict]
    eval_sets: dict[str, int]

    @classmethod
    def read(cls, path: str) -> "Counts":
        record = json.loads(fileio.read_bytes(path))
        counts, sizes = record["counts"], record["key_sizes"]
        stages = {name: counts.get(name, 0) for name in NAMES}
        eval_sets = {name.removeprefix(EVAL_SET_PREFIX): n for name, n in sorted(counts.items())
                     if name.startswith(EVAL_SET_PREFIX)}
        keys = {g: {"keys": sizes[g][0], "largest": sizes[g][2], "mean": round(sizes[g][1] / sizes[g][0], 2)}
                for g in GROUPING_NAMES if g in sizes and sizes[g][0]}
        return cls(stages, keys, eval_sets)


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
