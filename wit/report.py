"""Human-readable summaries of a build's stats.json."""

from __future__ import annotations

_STAGE_ORDER = (
    ("candidates", "candidate rows read"),
    ("rejected_rows", "  rejected (bad rows)"),
    ("unmatched", "  matching no query"),
    ("duplicate_pairs", "  repeated (url, caption)"),
    ("duplicate_urls", "  other captions of a kept url"),
    ("unique_pairs", "unique matched pairs"),
    ("caption_near_duplicates", "  near-duplicate captions"),
    ("selected", "selected by balancing"),
    ("failed_to_download", "  failed to download"),
    ("failed_to_resize", "  failed to decode/resize"),
    ("opted_out", "  opted out (robots.txt, X-Robots-Tag)"),
    ("duplicate", "  duplicate images"),
    ("near_duplicate", "  near-duplicate images"),
    ("success", "samples in the shards"),
)


_OPTIONAL = frozenset({"caption_near_duplicates"})  # shown when the stage ran and dropped something


def _pairs(items: list) -> str:
    return ", ".join(f"{q} ({n})" for q, n in items)


def summary(stats: dict, out: str) -> str:
    stages = stats["stages"]
    width = max(len(label) for _, label in _STAGE_ORDER)
    lines = ["pairs per stage:"]
    lines += [f"  {label:<{width}}  {stages.get(key, 0):>9,}" for key, label in _STAGE_ORDER
              if key not in _OPTIONAL or stages.get(key)]
    before, after = stats["per_query_before_balancing"], stats["per_query_after_balancing"]
    lines.append(f"queries: {before.get('queries', 0):,} of {stats['queries_in_list']:,} matched something; "
                 f"cap {stats['per_query_cap']:,}, reached by {after.get('at_cap', 0):,}")
    if before.get("queries"):
        lines.append(f"  before balancing: max {before['max']:,}, median {before['median']:,}; "
                     f"head: {_pairs(before['head'][:5])}")
        lines.append(f"  after balancing:  max {after['max']:,}, median {after['median']:,}; "
                     f"head: {_pairs(after['head'][:5])}")
        lines.append(f"  tail: {_pairs(after['tail'][-5:])}")
    if stats.get("rejected_examples"):
        lines.append("rejected rows (first ones): " + "; ".join(stats["rejected_examples"][:3]))
    lines.append(f"{stats['shards']} shard(s) in {out}/shards (webdataset .tar + .parquet + _stats.json); "
                 f"run stats in {out}/stats.json, per-query counts in {out}/query_counts.tsv")
    return "\n".join(lines)
