"""Writing the shards: the job's last stage.

A staged shard gets the image-dedup verdicts applied and is written in the
shard format (`wit.core.shardformat`): tar, Parquet, then the stats that mark it
finished. Every shard, finished in an earlier run or now, reports its statuses
as counts, so the run's totals cover the whole dataset.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Iterable, Mapping, Sequence

import apache_beam as beam

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

    def process(self, item):
        shard, joined = item
        p = shardformat.paths(self.out, shard)
        if shard in self.finished:
            stats = json.loads(fileio.read_bytes(p.stats))
        else:
            staged = shardformat.read_samples(p.staging)
            lists = list(joined["verdicts"])
            self.tally.key_size("shard_verdicts", sum(n for n, _packed in lists))
            verdicts = shard_verdicts(lists, self.refs, len(staged[0].key) if staged else 0)
            samples = apply_verdicts(staged, verdicts)
            self.tally.count(self.degenerate, sum(v.degenerate for v in verdicts.values()))
            for v in verdicts.values():
                if v.source:
                    self.tally.count(eval_set_count(v.source))
            stats = shardformat.write_shard(self.out, shard, samples)
            fileio.delete_if_exists(p.staging)
        for status, name in self.statuses.items():
            self.tally.count(name, shardformat.status_count(stats, status))
        yield shard, shardformat.status_count(stats, Status.SUCCESS)


def write_sizes(_, out: str, counts: Sequence[tuple[int, int]]) -> None:
    """DIR/shards/sizes.json, OpenCLIP's `{"00000.tar": samples, ...}`: its trainer then needs no
    --train-num-samples (it sums the sizes of the shards it is given)."""
    sizes = {f"{shardformat.shard_name(shard)}.tar": n for shard, n in sorted(counts)}
    fileio.write_bytes(fileio.join(out, "shards", SIZES), json.dumps(sizes, indent=0).encode() + b"\n")
