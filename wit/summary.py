"""Human-readable summaries of a build's stats.json, in the order of the stage registry."""

from __future__ import annotations

from pipelines.counters import DROP, GROUPINGS, INFO, shown
from pipelines.runstats import RunStats


def _pairs(items: list) -> str:
    return ", ".join(f"{q} ({n})" for q, n in items)


def stage_lines(stages: dict) -> list[str]:
    """One line per count: pools flush left, what a stage dropped indented, other counts in brackets."""
    rows = []
    for c in shown(stages):
        label = f"  {c.label}" if c.role is DROP else f"({c.label})" if c.role is INFO else c.label
        rows.append((label, stages.get(c.name, 0)))
    width = max(len(label) for label, _ in rows)
    return [f"  {label:<{width}}  {value:>11,}" for label, value in rows]


def key_lines(largest: dict) -> list[str]:
    """One line per grouping step that ran: its largest key, the mean, and how many keys."""
    rows = [(g.label, largest[g.name]) for g in GROUPINGS if g.name in largest]
    width = max((len(label) for label, _ in rows), default=0)
    return [f"  {label:<{width}}  {k['largest']:>9,}  (mean {k['mean']:,.1f} over {k['keys']:,} keys)"
            for label, k in rows]


def eval_set_lines(excluded: dict) -> list[str]:
    """Per evaluation set (--exclude-near), the downloaded images dropped for being near one of its images."""
    if not excluded:
        return []
    width = max(len(name) for name in excluded)
    return ["near an evaluation image, per set:"] + [f"  {name:<{width}}  {n:>11,}" for name, n in excluded.items()]


def summary(stats: RunStats, out: str) -> str:
    lines = ["pairs per stage:"] + stage_lines(stats.stages) + eval_set_lines(stats.excluded_per_eval_set)
    before, after = stats.per_query_before_balancing, stats.per_query_after_balancing
    lines.append(f"queries: {before.get('queries', 0):,} of {stats.queries_in_list:,} matched something; "
                 f"cap {stats.per_query_cap:,}, reached by {after.get('at_cap', 0):,}")
    if before.get("queries"):
        lines.append(f"  before balancing: max {before['max']:,}, median {before['median']:,}; "
                     f"head: {_pairs(before['head'][:5])}")
        lines.append(f"  after balancing:  max {after['max']:,}, median {after['median']:,}; "
                     f"head: {_pairs(after['head'][:5])}")
        lines.append(f"  tail: {_pairs(after['tail'][-5:])}")
    if stats.largest_keys:
        lines.append("largest key per grouping step (elements):")
        lines += key_lines(stats.largest_keys)
    if stats.damaged_inputs:
        lines.append(f"damaged input files: {stats.stages.get('damaged_files', 0):,}, each read up to the damage "
                     f"and listed in stats.json: " + "; ".join(stats.damaged_inputs[:3]))
    if stats.rejected_examples:
        lines.append("rejected rows (first ones): " + "; ".join(stats.rejected_examples[:3]))
    lines.append(f"{stats.shards} shard(s) in {out}/shards (webdataset .tar + .parquet + _stats.json); "
                 f"run stats in {out}/stats.json, per-query counts in {out}/query_counts.tsv")
    return "\n".join(lines)
