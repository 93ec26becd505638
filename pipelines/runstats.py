"""The run's statistics: per-query counts, their distribution, and stats.json.

The pipeline's last step writes DIR/query_counts.tsv and leaves the per-query
distributions, the first rejected rows and the number of shards in
DIR/_staging/run.json; the driver adds the stage counts (Beam counters, see
`pipelines.stages`) once the job has finished and writes DIR/stats.json.
Everything here is bounded by the number of queries, not of pairs.
"""

from __future__ import annotations

import json
from typing import Mapping, Optional, Sequence

import apache_beam as beam

from pipelines.match import read_queries
from wit import fileio
from wit.shardformat import Status

QUERY_COUNTS = "query_counts.tsv"
STATS = "stats.json"
REJECT_EXAMPLES = 20


def _details_path(out: str) -> str:
    return fileio.join(out, "_staging", "run.json")


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


def _per_query(pcoll, label: str, ids):
    return (pcoll | f"{label}Ids" >> beam.FlatMap(lambda x: [(q, 1) for q in ids(x)])
            | f"{label}Sum" >> beam.CombinePerKey(sum))


class RunDetails(beam.PTransform):
    """Writes query_counts.tsv and the run's details from the unique pairs, the selection, the rejected rows
    and the written shards (whose end it waits for)."""

    def __init__(self, queries: str, out: str, cap: int):
        super().__init__()
        self.queries, self.out, self.cap = queries, out, cap

    def expand(self, inputs):
        unique, selected, rejects, written = inputs
        return (
            unique.pipeline
            | "RunDetailsTrigger" >> beam.Create([None])
            | "WriteRunDetails" >> beam.Map(
                _write_details, self.queries, self.out, self.cap,
                beam.pvalue.AsList(_per_query(unique, "Matched", lambda kv: kv[1].matched)),
                beam.pvalue.AsList(_per_query(selected, "Selected", lambda kv: kv[1][1])),
                beam.pvalue.AsSingleton(rejects | "RejectExamples" >> beam.combiners.Top.Of(
                    REJECT_EXAMPLES, key=lambda r: (r.source, r.row), reverse=True), default_value=[]),
                beam.pvalue.AsSingleton(written | "CountShards" >> beam.combiners.Count.Globally()))
        )


def _write_details(_, queries_path: str, out: str, cap: int, matched, selected, rejects, shards: int) -> None:
    queries = read_queries(queries_path)
    matched, selected = dict(matched), dict(selected)
    lines = ["query_id\tquery\tmatched\tselected"]
    for qid in sorted(set(matched) | set(selected)):
        lines.append(f"{qid}\t{queries[qid]}\t{matched.get(qid, 0)}\t{selected.get(qid, 0)}")
    fileio.write_bytes(fileio.join(out, QUERY_COUNTS), ("\n".join(lines) + "\n").encode())
    details = {
        "shards": shards,
        "queries_in_list": sum(1 for q in queries if q),
        "per_query_before_balancing": distribution(matched, queries, None),
        "per_query_after_balancing": distribution(selected, queries, cap),
        "rejected_examples": [str(r) for r in rejects],
    }
    fileio.write_bytes(_details_path(out), json.dumps(details).encode())


def write_stats(out: str, stages: Mapping[str, int], cap: int, seed: int) -> dict:
    """stats.json from the stage counts and the details the pipeline left; returns what it wrote."""
    details = json.loads(fileio.read_bytes(_details_path(out)))
    stats = {
        "stages": dict(stages),
        "shards": details.pop("shards"),
        "samples_in_tars": stages.get(Status.SUCCESS.value, 0),
        "per_query_cap": cap,
        "seed": seed,
        **details,
    }
    fileio.write_bytes(fileio.join(out, STATS), json.dumps(stats, indent=1, ensure_ascii=False).encode() + b"\n")
    fileio.delete_if_exists(_details_path(out))
    return stats
