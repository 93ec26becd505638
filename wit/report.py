"""`wit report DIR`: one self-contained HTML page describing a built dataset.

Plots (matplotlib, embedded as PNG) of the per-query distribution before and
after balancing, the status breakdown with the errors grouped by kind, the original
image sizes, and a grid of sample images with their captions for the largest
queries. Everything is read from the build's own outputs: stats.json,
query_counts.tsv, the shards' parquet files and tars.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from dataclasses import dataclass, field

from wit.core import fileio
from wit.core.errors import InputError
from wit.core.options import Options, option
from pipelines.runstats import RunStats
from wit.summary import eval_set_lines, key_lines, stage_lines
from wit.core.shardformat import STATUSES, iter_tar, read_parquet


@dataclass(frozen=True)
class ReportOptions(Options):
    dir: str = option(help="the --out directory of `wit build`", positional=True)
    out: str | None = option(None, help="HTML file to write (default DIR/report.html)")
    queries: int = option(8, help="largest queries shown with sample images")
    per_query: int = option(6, help="sample images per query")

    def check(self) -> None:
        for name in ("queries", "per_query"):
            if getattr(self, name) < 0:
                self.refuse(name, "must not be negative")


@dataclass
class Dataset:
    stats: RunStats
    queries: list[tuple[int, str, int, int]]  # id, query, matched, selected
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # (status, error kind) -> samples
    examples: dict = field(default_factory=dict)  # (status, error kind) -> Counter of messages
    sizes: list[tuple[int, int]] = field(default_factory=list)  # original (width, height) of successes
    tars: list[str] = field(default_factory=list)


def load(directory: str) -> Dataset:
    stats_path = fileio.join(directory, "stats.json")
    if not fileio.exists(stats_path):
        raise InputError(f"{directory}: no stats.json; is it the --out of a finished `wit build`?")
    stats = RunStats.read(directory)
    queries = []
    lines = fileio.read_bytes(fileio.join(directory, "query_counts.tsv")).decode().rstrip("\n").split("\n")[1:]
    for line in lines:
        qid, query, matched, selected = line.split("\t")
        queries.append((int(qid), query, int(matched), int(selected)))
    data = Dataset(stats, queries)
    for meta in fileio.match_files([fileio.join(directory, "shards", "*.parquet")], "shard parquet"):
        table = read_parquet(meta.path, ["status", "error_kind", "error_message", "original_width",
                                         "original_height"])
        for row in table.to_pylist():
            data.statuses[row["status"]] += 1
            if row["error_kind"]:
                group = (row["status"], row["error_kind"])
                data.errors[group] += 1
                data.examples.setdefault(group, Counter())[row["error_message"]] += 1
            if row["status"] == "success" and row["original_width"]:
                data.sizes.append((row["original_width"], row["original_height"]))
        data.tars.append(meta.path[: -len(".parquet")] + ".tar")
    return data


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plot_distribution(data: Dataset) -> str:
    import matplotlib.pyplot as plt

    matched = sorted((m for _, _, m, _ in data.queries if m), reverse=True)
    selected = sorted((s for _, _, _, s in data.queries if s), reverse=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.loglog(range(1, len(matched) + 1), matched, label="matched (before balancing)")
    ax.loglog(range(1, len(selected) + 1), selected, label="selected (after balancing)")
    ax.axhline(data.stats.per_query_cap, color="grey", linestyle="--", label=f"cap {data.stats.per_query_cap:,}")
    ax.set_xlabel("query rank")
    ax.set_ylabel("pairs")
    ax.legend()
    ax.set_title("Pairs per query")
    return _png(fig)


def plot_statuses(data: Dataset) -> str:
    import matplotlib.pyplot as plt

    order = [s.value for s in STATUSES]
    names = [s for s in order if data.statuses.get(s)] + sorted(set(data.statuses) - set(order))
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh(names[::-1], [data.statuses[n] for n in names[::-1]], color="tab:blue")
    for i, n in enumerate(names[::-1]):
        ax.text(data.statuses[n], i, f" {data.statuses[n]:,}", va="center")
    ax.set_xlabel("samples")
    ax.set_title("Status of the selected pairs")
    return _png(fig)


def plot_sizes(data: Dataset) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    if data.sizes:
        axes[0].hist([w for w, _ in data.sizes], bins=40, color="tab:green")
        axes[1].hist([h for _, h in data.sizes], bins=40, color="tab:orange")
    axes[0].set_title("original width (px)")
    axes[1].set_title("original height (px)")
    for ax in axes:
        ax.set_ylabel("images")
    return _png(fig)


def sample_grid(data: Dataset, top_queries: int, per_query: int) -> dict[int, list[tuple[bytes, str]]]:
    """Up to `per_query` (jpg, caption) for each of the largest queries, in shard order."""
    wanted = [qid for qid, _, _, s in sorted(data.queries, key=lambda q: (-q[3], q[0])) if s][:top_queries]
    found: dict[int, list[tuple[bytes, str]]] = {q: [] for q in wanted}
    for path in data.tars:
        for sample in iter_tar(path, lambda e: True):  # streamed: stops reading once every query is filled
            if all(len(v) >= per_query for v in found.values()):
                return found
            if not {"jpg", "json", "txt"} <= set(sample):
                continue
            for qid in json.loads(sample["json"]).get("selected_query_ids", []):
                if qid in found and len(found[qid]) < per_query:
                    found[qid].append((sample["jpg"], sample["txt"].decode("utf-8", errors="replace")))
    return found


def render(data: Dataset, top_queries: int = 8, per_query: int = 6) -> str:
    names = {qid: q for qid, q, _, _ in data.queries}
    counts = {qid: s for qid, _, _, s in data.queries}
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>wit dataset report</title><style>",
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}"
        "td.n{text-align:right}.grid{display:flex;flex-wrap:wrap;gap:8px}"
        "figure{width:160px;margin:0}figure img{width:160px;height:160px;object-fit:cover}"
        "figcaption{font-size:12px}</style></head><body>",
        "<h1>wit dataset report</h1>",
        f"<p>{data.stats.samples_in_tars:,} samples in {data.stats.shards} shard(s); "
        f"cap {data.stats.per_query_cap:,} pairs per query, seed {data.stats.seed}; "
        f"{sum(1 for q in data.queries if q[2]):,} of {data.stats.queries_in_list:,} queries matched.</p>",
        "<h2>Pairs per stage</h2><pre>",
        esc("\n".join(stage_lines(data.stats.stages)
                       + eval_set_lines(data.stats.excluded_per_eval_set))),
        "</pre>",
        "<h2>Largest key per grouping step</h2><p>Elements one key brought to one step: a hot query, URL, "
        "caption or image shows here.</p><pre>",
        esc("\n".join(key_lines(data.stats.largest_keys))),
        "</pre>",
    ]
    parts += ["<h2>Per-query distribution</h2>",
              f"<img alt='pairs per query' src='data:image/png;base64,{plot_distribution(data)}'>",
              "<h2>Statuses</h2>", f"<img alt='statuses' src='data:image/png;base64,{plot_statuses(data)}'>",
              "<table><tr><th>status</th><th>kind</th><th>samples</th><th>commonest messages</th></tr>"]
    parts += [f"<tr><td>{esc(s)}</td><td>{esc(k)}</td><td class=n>{n:,}</td><td>"
              + "<br>".join(f"{esc(m or '')} ({c:,})" for m, c in data.examples[(s, k)].most_common(3))
              + "</td></tr>" for (s, k), n in data.errors.most_common(15)]
    parts += ["</table>", "<h2>Original image sizes</h2>",
              f"<img alt='image sizes' src='data:image/png;base64,{plot_sizes(data)}'>",
              "<h2>Samples of the largest queries</h2>"]
    for qid, samples in sample_grid(data, top_queries, per_query).items():
        parts.append(f"<h3>{esc(names[qid])} <small>({counts[qid]:,} pairs)</small></h3><div class=grid>")
        for jpg, caption in samples:
            parts.append(f"<figure><img src='data:image/jpeg;base64,{base64.b64encode(jpg).decode()}'>"
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(directory: str, out: str | None = None, top_queries: int = 8, per_query: int = 6) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers and CI
    path = out or fileio.join(directory, "report.html")
    fileio.write_bytes(path, render(load(directory), top_queries, per_query).encode("utf-8"))
    return path
