"""The run's statistics: per-query counts, their distribution, and stats.json.

The plan's last step writes DIR/query_counts.tsv and leaves the per-query
distributions, the first rejected rows and the number of shards in
DIR/plan/_details.json (`PlanDetails`); the driver adds the stage counts and
key sizes, which each job writes as data (`_counts.json`, see
`pipelines.counters`), once each job has finished: DIR/plan/_plan.json
(`Plan`) after the plan, DIR/stats.json (`RunStats`) after the download. Each
file has its dataclass here, which writes and reads it. Everything here is
bounded by the number of queries, not of pairs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from itertools import chain
from typing import Mapping, Optional, Sequence

import apache_beam as beam
import numpy as np

from pipelines.grouping import CountPerKey
from pipelines.querylist import read_queries
from pipelines.order import write_index
from pipelines.counters import GROUPING_NAMES, NAMES
from wit.core import fileio
from wit.core.shardformat import Status

QUERY_COUNTS = "query_counts.tsv"
STATS = "stats.json"
REJECT_EXAMPLES = 20
DAMAGED_LISTED = 1_000  # damaged input files named in stats.json (all are counted)

log = logging.getLogger(__name__)


PLAN = "_plan.json"


def _details_path(out: str) -> str:
    return fileio.join(out, "plan", "_details.json")


def plan_marker(out: str) -> str:
    return fileio.join(out, "plan", PLAN)


def distribution(counts: Mapping[int, int], queries: Sequence[str], cap: Optional[int]) -> dict:
    values = sorted(counts.values())
    if not values:
        return {"queries": 0, "pairs": 0}
    q = lambda f: values[min(len(values) - 1, int(f * len(values)))]  # noqa: E731
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    name = lambda qid: queries[qid] if qid < len(queries) else str(qid)  # noqa: E731
    histogram: dict[str, int] = {}
    for v in values:
        lo = 1 << (v.bit_length() - 1)
        label = f"{lo}-{2 * lo - 1}" if lo > 1 else "1"
        histogram[label] = histogram.get(label, 0) + 1
    d = {"queries": len(values), "pairs": sum(values), "max": values[-1], "mean": round(sum(values) / len(values), 3),
         "median": q(0.5), "p90": q(0.9), "p99": q(0.99), "histogram": histogram,
         "head": [[name(k), v] for k, v in ranked[:10]], "tail": [[name(k), v] for k, v in ranked[-10:]]}
    if cap is not None:
        d["at_cap"] = sum(1 for v in values if v >= cap)
    return d


class RunDetails(beam.PTransform):
    """Writes query_counts.tsv, the plan's index and the run's details from the per-query match counts, the
    selection, the rejected rows, the planned buckets (whose end it waits for) and the unproven queries."""

    def __init__(self, queries: str, out: str, cap: int, shard_size: int):
        super().__init__()
        self.queries, self.out, self.cap, self.shard_size = queries, out, cap, shard_size

    def expand(self, inputs):
        matched, selected, rejects, planned, unproven = inputs
        return (
            matched.pipeline
            | "RunDetailsTrigger" >> beam.Create([None])
            | "WriteRunDetails" >> beam.Map(
                _write_details, self.queries, self.out, self.cap, self.shard_size,
                beam.pvalue.AsList(matched),
                beam.pvalue.AsList(selected | "SelectedPerQuery" >> CountPerKey(_selecting_ids)),
                beam.pvalue.AsSingleton(rejects | "RejectExamples" >> beam.combiners.Top.Of(
                    REJECT_EXAMPLES, key=lambda r: (r.source, r.row), reverse=True), default_value=[]),
                beam.pvalue.AsSingleton(
                    rejects | "Damaged" >> beam.Filter(lambda r: r.damaged)
                    | "DamagedFiles" >> beam.combiners.Top.Of(DAMAGED_LISTED, key=lambda r: (r.source, r.row),
                                                               reverse=True), default_value=[]),
                beam.pvalue.AsList(planned),
                beam.pvalue.AsList(unproven))
        )


def _selecting_ids(batch: list) -> np.ndarray:
    return np.fromiter(chain.from_iterable(ids for _uid, _pair, ids in batch), np.int64)


def misbalanced(matched: Mapping[int, int], selected: Mapping[int, int], cap: int,
                unproven: Sequence[int] = ()) -> list[int]:
    """Queries whose selection is not their bottom-k: each query selects exactly min(cap, matched) pairs
    (an unproven query's selection is made again, so it is not judged). A runner that loses elements of
    the selection, or of the cut-offs it is made with, breaks this even where the stage counts add up."""
    skip = set(unproven)
    return sorted(q for q in set(matched) | set(selected)
                  if q not in skip and selected.get(q, 0) != min(cap, matched.get(q, 0)))


def _write_details(_, queries_path: str, out: str, cap: int, shard_size: int, matched, selected, rejects,
                   damaged, buckets, unproven) -> None:
    queries = read_queries(queries_path)
    matched, selected = dict(matched), dict(selected)
    lines = ["query_id\tquery\tmatched\tselected"]
    for qid in sorted(set(matched) | set(selected)):
        lines.append(f"{qid}\t{queries[qid]}\t{matched.get(qid, 0)}\t{selected.get(qid, 0)}")
    fileio.write_bytes(fileio.join(out, QUERY_COUNTS), ("\n".join(lines) + "\n").encode())
    details = PlanDetails(
        shards=-(-write_index(out, buckets) // shard_size),
        queries_in_list=sum(1 for q in queries if q),
        per_query_before_balancing=distribution(matched, queries, None),
        per_query_after_balancing=distribution(selected, queries, cap),
        rejected_examples=[str(r) for r in rejects if not r.damaged],
        damaged_inputs=[str(r) for r in damaged],
        unproven_queries=sorted(unproven),
        misbalanced_queries=misbalanced(matched, selected, cap, unproven)[:20],
    )
    fileio.write_bytes(_details_path(out), json.dumps(asdict(details)).encode())


@dataclass
class PlanDetails:
    """What the plan job's last step leaves the driver (DIR/plan/_details.json, gone once the plan is
    finished)."""

    shards: int
    queries_in_list: int
    per_query_before_balancing: dict  # `distribution` of the matched pairs per query
    per_query_after_balancing: dict  # and of the selected ones
    rejected_examples: list[str]
    damaged_inputs: list[str]
    unproven_queries: list[int]  # whose bottom-k the plan could not prove (see `pipelines.balance.Balance`)
    misbalanced_queries: list[int]  # up to 20 whose selection is not min(cap, matched) pairs

    @classmethod
    def read(cls, out: str) -> "PlanDetails":
        return cls(**json.loads(fileio.read_bytes(_details_path(out))))


@dataclass
class Plan:
    """DIR/plan/_plan.json: the plan is complete. Its details, and what the plan's stages counted."""

    shards: int
    queries_in_list: int
    per_query_before_balancing: dict
    per_query_after_balancing: dict
    rejected_examples: list[str]
    damaged_inputs: list[str]
    stages: dict[str, int]
    largest_keys: dict[str, dict]

    def write(self, out: str) -> None:
        fileio.write_bytes(plan_marker(out), _json(self))

    @classmethod
    def read(cls, out: str) -> Optional["Plan"]:
        """The finished plan, or None; a damaged one (written atomically, so damaged from outside) counts as
        no plan: the plan is made again, which gives the same one."""
        path = plan_marker(out)
        if not fileio.exists(path):
            return None
        try:
            found = json.loads(fileio.read_bytes(path))
            if isinstance(found, dict) and set(found) == {f.name for f in fields(cls)}:
                return cls(**found)
        except ValueError:
            pass
        log.warning("%s is damaged: making the plan again", path)
        return None


def finish_plan(out: str, details: PlanDetails, stages: Mapping[str, int],
                largest_keys: Mapping[str, dict]) -> Plan:
    """DIR/plan/_plan.json written from the plan job's details and counts; the details file goes."""
    kept = {f.name: getattr(details, f.name) for f in fields(Plan) if hasattr(details, f.name)}
    plan = Plan(**kept, stages=dict(stages), largest_keys=dict(largest_keys))
    plan.write(out)
    fileio.delete_if_exists(_details_path(out))
    return plan


@dataclass
class RunStats:
    """DIR/stats.json: the plan's counts and details with the download's added. Defaults stand for what an
    older stats.json does not hold."""

    stages: dict[str, int] = field(default_factory=dict)  # every registered count (pipelines.counters)
    shards: int = 0
    samples_in_tars: int = 0
    per_query_cap: int = 0
    seed: int = 0
    largest_keys: dict[str, dict] = field(default_factory=dict)  # per grouping step: largest, mean, keys
    excluded_per_eval_set: dict[str, int] = field(default_factory=dict)
    queries_in_list: int = 0
    per_query_before_balancing: dict = field(default_factory=dict)
    per_query_after_balancing: dict = field(default_factory=dict)
    rejected_examples: list[str] = field(default_factory=list)
    damaged_inputs: list[str] = field(default_factory=list)

    def write(self, out: str) -> None:
        fileio.write_bytes(fileio.join(out, STATS), _json(self))

    @classmethod
    def read(cls, out: str) -> "RunStats":
        found = json.loads(fileio.read_bytes(fileio.join(out, STATS)))
        return cls(**{f.name: found[f.name] for f in fields(cls) if f.name in found})


def write_stats(out: str, plan: Plan, stages: Mapping[str, int], largest_keys: Mapping[str, dict],
                eval_sets: Mapping[str, int], cap: int, seed: int) -> RunStats:
    """stats.json: the plan's counts and details with the download's counts (`stages`, `largest_keys`, the
    images dropped per evaluation set) added."""
    counts = {name: plan.stages.get(name, 0) + stages.get(name, 0) for name in NAMES}
    keys = {**plan.largest_keys, **largest_keys}
    stats = RunStats(
        stages=counts, shards=plan.shards, samples_in_tars=counts.get(Status.SUCCESS.value, 0), per_query_cap=cap,
        seed=seed, largest_keys={g: keys[g] for g in GROUPING_NAMES if g in keys},
        excluded_per_eval_set=dict(eval_sets), queries_in_list=plan.queries_in_list,
        per_query_before_balancing=plan.per_query_before_balancing,
        per_query_after_balancing=plan.per_query_after_balancing, rejected_examples=plan.rejected_examples,
        damaged_inputs=plan.damaged_inputs)
    stats.write(out)
    return stats


def _json(record) -> bytes:
    return json.dumps(asdict(record), indent=1, ensure_ascii=False).encode() + b"\n"
