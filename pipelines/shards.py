"""Writing the shards: the job's last stage.

A staged shard gets the image-dedup verdicts applied and is written in the
shard format (`wit.core.shardformat`): tar, Parquet, then the stats that mark it
finished. Every shard, finished in an earlier run or now, reports its statuses
as counts, so the run's totals cover the whole dataset.

A write holds the GIL for most of its time, so a worker process writes its
shards in the pool of processes the download decoded in (`pipelines.decoders`),
one shard per core at a time, not one after another on the thread of the stage.
"""

from __future__ import annotations

import json
from collections import deque
from concurrent.futures import Future, wait
from dataclasses import dataclass, replace
from typing import Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from pipelines.decoders import shared_pool
from pipelines.imagededup import shard_verdicts
from pipelines.records import EvalImage, Verdict
from pipelines.counters import CountingDoFn, count_in, counter, eval_set_count
from wit.core import fileio, shardformat
from wit.core.shardformat import STATUSES, Sample, Status


def apply_verdicts(samples: Iterable[Sample], verdicts: Mapping[str, Verdict]) -> list[Sample]:
    """Dropped images keep their row, with the verdict's status and reason, and lose their bytes."""
    out = []
    for s in samples:
        v = verdicts.get(s.uid)
        if v is not None:
            s = replace(s, status=v.status, error_kind=v.kind, error_message=v.message, duplicate_of=v.duplicate_of,
                        jpg=None)
        out.append(s)
    return out


@dataclass(frozen=True)
class Written:
    """A shard written now: its stats, and what its verdicts count."""

    stats: dict
    degenerate: int
    eval_sources: tuple[str, ...]  # the evaluation set of each image dropped as near one


def write_staged(out: str, shard: int, verdict_lists: list, refs: Sequence[EvalImage]) -> Written:
    """The staged shard with its verdicts applied, written; its staging file then deleted."""
    p = shardformat.paths(out, shard)
    staged = shardformat.read_samples(p.staging)
    verdicts = shard_verdicts(verdict_lists, refs, len(staged[0].key) if staged else 0)
    stats = shardformat.write_shard(out, shard, apply_verdicts(staged, verdicts))
    fileio.delete_if_exists(p.staging)
    return Written(stats, sum(v.degenerate for v in verdicts.values()),
                   tuple(v.source for v in verdicts.values() if v.source))


SIZES = "sizes.json"


class WriteShards(beam.PTransform):
    """(every shard number, what the image dedup stage found per shard) in; (shard, samples in it) out for
    every shard, written now or before. `refs` are the evaluation images the stage was given, to name them."""

    def __init__(self, out: str, finished: frozenset[int], refs: Sequence[EvalImage] = ()):
        super().__init__()
        self.out, self.finished, self.refs = out, finished, tuple(refs)

    def expand(self, inputs):
        shards, verdicts = inputs
        joined = ({"shard": shards | "ShardKey" >> beam.Map(lambda s: (s, None)), "verdicts": verdicts}
                  | "JoinVerdicts" >> beam.CoGroupByKey())
        return count_in(joined, "WriteShard", WriteShard(self.out, self.finished, self.refs))


class WriteShard(CountingDoFn):
    """(shard, {"shard": ..., "verdicts": [...]}) in; the shard written unless it was finished before."""

    statuses = {s: counter(s.value) for s in STATUSES}
    degenerate = counter("near_dup_degenerate")

    def __init__(self, out: str, finished: frozenset[int], refs: Sequence[EvalImage] = ()):
        self.out, self.finished, self.refs = out, finished, refs

    def start_bundle(self):
        super().start_bundle()
        self.writing: deque[tuple[int, Future]] = deque()

    def process(self, item):
        shard, joined = item
        if shard in self.finished:
            yield from self._counted(shard, json.loads(fileio.read_bytes(shardformat.paths(self.out, shard).stats)))
            return
        lists = list(joined["verdicts"])
        self.tally.key_size("shard_verdicts", sum(n for n, _packed in lists))
        pool = shared_pool()
        while len(self.writing) >= pool.size:  # each shard in the works is in a pool process's memory
            yield from self._written(*self.writing.popleft())
        self.writing.append((shard, pool.call(write_staged, self.out, shard, lists, self.refs)))

    def finish_bundle(self):
        while self.writing:
            for out in self._written(*self.writing.popleft()):
                yield GlobalWindows.windowed_value(out)
        yield from super().finish_bundle()

    def _written(self, shard: int, writing: Future) -> Iterator:
        try:
            written: Written = writing.result()
        except BaseException:
            # the stage fails with this write, so the writes still in the pool end first: each then has
            # removed its temporary file, and none is still writing once the command has returned
            wait([pending for _shard, pending in self.writing])
            self.writing.clear()
            raise
        self.tally.count(self.degenerate, written.degenerate)
        for source in written.eval_sources:
            self.tally.count(eval_set_count(source))
        yield from self._counted(shard, written.stats)

    def _counted(self, shard: int, stats: dict) -> Iterator:
        for status, name in self.statuses.items():
            self.tally.count(name, shardformat.status_count(stats, status))
        yield shard, shardformat.status_count(stats, Status.SUCCESS)


def write_sizes(_, out: str, counts: Sequence[tuple[int, int]]) -> None:
    """DIR/shards/sizes.json, OpenCLIP's `{"00000.tar": samples, ...}`: its trainer then needs no
    --train-num-samples (it sums the sizes of the shards it is given)."""
    sizes = {f"{shardformat.shard_name(shard)}.tar": n for shard, n in sorted(counts)}
    fileio.write_bytes(fileio.join(out, "shards", SIZES), json.dumps(sizes, indent=0).encode() + b"\n")
