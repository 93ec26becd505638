"""`wit build`: the Beam job from candidate pairs to balanced, deduplicated shards.

    read -> normalise + match -> URL dedup -> balance -> order + shard
         -> download (per shard, staged) -> image dedup -> write shards -> run stats

Shards are assigned before anything is downloaded, from a seeded order of the
selected pairs, so a rerun knows which shards are finished and fetches only
the missing ones. Each DoFn is a thin wrapper over a plain function of the
stage modules; all I/O goes through Beam FileSystems, so the same job runs on
DirectRunner, DataflowRunner and Spark.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import balance, candidates, dedup, shards, textdedup
from pipelines.download import download_shard
from pipelines.fetch import FetchOptions
from pipelines.match import matcher_for, read_queries
from pipelines.resize import ResizeOptions
from pipelines.shards import Sample
from wit import fileio

log = logging.getLogger(__name__)

STATS = "stats"
BUCKET_HEX_DIGITS = 4  # 65,536 ordering buckets: a few thousand pairs each at 400M
MATCH_BATCH = 8192  # captions per matcher call; bench/match.py measures at this size


@dataclass(frozen=True)
class BuildOptions:
    candidates: tuple[str, ...]
    queries: str
    out: str
    per_query_cap: int = 20_000
    shard_size: int = 10_000
    seed: int = 0
    input_format: str = "auto"
    url_col: str = "url"
    caption_col: str = "caption"
    threads: int = 32
    near_dup_threshold: int = 4  # Hamming bits on the 64-bit pHash; -1 turns it off
    caption_dup_threshold: float = 0.0  # estimated Jaccard of caption 3-grams; 0 turns it off
    resize: ResizeOptions = field(default_factory=ResizeOptions)
    fetch: FetchOptions = field(default_factory=FetchOptions)

    def __post_init__(self) -> None:
        if self.per_query_cap < 1:
            raise ValueError(f"--per-query-cap must be >= 1, got {self.per_query_cap}")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1, got {self.shard_size}")
        if not -1 <= self.near_dup_threshold <= 32:
            raise ValueError(f"--near-dup-threshold must be in -1..32, got {self.near_dup_threshold}")
        if not 0.0 <= self.caption_dup_threshold <= 1.0:
            raise ValueError(f"--caption-dup-threshold must be in 0..1, got {self.caption_dup_threshold}")
        if self.input_format not in ("auto",) + candidates.FORMATS:
            raise ValueError(f"--input-format must be auto or one of {', '.join(candidates.FORMATS)}")

    def fingerprint(self, files: Sequence[tuple[str, int, float]]) -> dict:
        """What decides the shards' content; a rerun into the same DIR must match it."""
        d = asdict(self)
        d.pop("out")
        d.pop("threads")
        d["fetch"] = {k: d["fetch"][k] for k in ("max_bytes", "max_redirects", "disallowed_directives")}
        d["candidates"] = [list(f) for f in files]
        return json.loads(json.dumps(d))


# ---------------------------------------------------------------- read + match

class ReadCandidates(beam.DoFn):
    def __init__(self, fmt: str, url_col: str, caption_col: str):
        self.fmt, self.url_col, self.caption_col = fmt, url_col, caption_col

    def process(self, path: str):
        n = 0
        for item in candidates.read_path(path, self.fmt, self.url_col, self.caption_col):
            n += 1
            if isinstance(item, candidates.Reject):
                yield beam.pvalue.TaggedOutput("rejects", item)
            else:
                yield item
        yield beam.pvalue.TaggedOutput(STATS, ("candidates", n))


class MatchQueries(beam.DoFn):
    """Batches of candidates in, (normalised url, PairChoice) out for each caption matching a query.
    The matcher works a batch at a time: per caption it would spend more on the call than the match."""

    def __init__(self, queries: str):
        self.queries = queries

    def setup(self):
        self.matcher = matcher_for(self.queries)

    def process(self, batch: list[candidates.Candidate]):
        unmatched = 0
        for c, matched in zip(batch, self.matcher.match_many([c.caption for c in batch])):
            if matched:
                yield dedup.normalize_url(c.url), dedup.PairChoice(c.caption, c.url, matched)
            else:
                unmatched += 1
        if unmatched:
            yield beam.pvalue.TaggedOutput(STATS, ("unmatched", unmatched))


def choose_per_url(item):
    norm_url, choices = item
    best, repeats, other_captions = dedup.choose_pair(choices)
    if repeats:
        yield beam.pvalue.TaggedOutput(STATS, ("duplicate_pairs", repeats))
    if other_captions:
        yield beam.pvalue.TaggedOutput(STATS, ("duplicate_urls", other_captions))
    yield dedup.uid_for(norm_url), best


# ---------------------------------------------------------------- caption near-duplicates

CAPTION_REPORT = "caption_near_duplicates.tsv"


class CaptionDedup(beam.PTransform):
    """(uid, PairChoice) -> the same, minus pairs whose caption nearly repeats a kept one's; the drops
    go to DIR/caption_near_duplicates.tsv."""

    def __init__(self, threshold: float, seed: int, out: str):
        super().__init__()
        self.threshold, self.seed, self.out = threshold, seed, out

    def expand(self, pairs):
        t, seed = self.threshold, self.seed
        dropped = (
            pairs
            | "Sketch" >> beam.Map(lambda kv: textdedup.sketch(kv[0], kv[1].caption, seed))
            | "CaptionBands" >> beam.FlatMap(lambda s: [(k, s) for k in textdedup.band_keys(s, t)])
            | "GroupCaptionBand" >> beam.GroupByKey()
            | "DropsInBucket" >> beam.FlatMap(lambda kv: textdedup.drops_in_bucket(kv[1], t))
            | "DropByUid" >> beam.Map(lambda d: (d.uid, d))
            | "OneDropPerUid" >> beam.CombinePerKey(lambda ds: min(ds, key=lambda d: (-d.similarity, d.kept_uid)))
        )
        kept = (
            {"pair": pairs, "dropped": dropped}
            | "JoinCaptionDrops" >> beam.CoGroupByKey()
            | "KeepUndropped" >> beam.FlatMap(
                lambda kv: [] if kv[1]["dropped"] else [(kv[0], p) for p in kv[1]["pair"]])
        )
        _ = (dropped
             | "DroppedList" >> beam.combiners.ToList()
             | "CaptionReport" >> beam.Map(_write_caption_report, self.out))
        return kept, dropped


def _write_caption_report(dropped: list, out: str) -> None:
    lines = ["uid\tcaption\tkept_uid\tkept_caption\tsimilarity"]
    for _uid, d in sorted(dropped):
        lines.append("\t".join([d.uid, _one_line(d.caption), d.kept_uid, _one_line(d.kept_caption),
                                f"{d.similarity:.3f}"]))
    fileio.write_bytes(fileio.join(out, CAPTION_REPORT), ("\n".join(lines) + "\n").encode())


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- balance

class Balance(beam.PTransform):
    """uid -> PairChoice in; uid -> (PairChoice, selecting query ids) out, for selected pairs only."""

    def __init__(self, cap: int, seed: int):
        super().__init__()
        self.cap, self.seed = cap, seed

    def expand(self, pairs):
        seed = self.seed
        selections = (
            pairs
            | "PriorityPerQuery" >> beam.FlatMap(
                lambda kv: [(q, (balance.priority(seed, kv[0]), kv[0])) for q in kv[1].matched])
            | "BottomK" >> beam.combiners.Top.SmallestPerKey(self.cap)
            | "SelectedBy" >> beam.FlatMap(lambda kv: [(uid, kv[0]) for _prio, uid in kv[1]])
        )
        return (
            {"pair": pairs, "query": selections}
            | "JoinSelections" >> beam.CoGroupByKey()
            | "KeepSelected" >> beam.FlatMap(_attach_selection)
        )


def _attach_selection(item):
    uid, joined = item
    queries = tuple(sorted(joined["query"]))
    if queries:
        (pair,) = joined["pair"]
        yield uid, (pair, queries)


# ---------------------------------------------------------------- order + shard

def bucket_of(uid: str) -> int:
    return int(uid[:BUCKET_HEX_DIGITS], 16)


def bucket_offsets(counts: dict[int, int]) -> dict[int, int]:
    offsets, total = {}, 0
    for bucket in sorted(counts):
        offsets[bucket] = total
        total += counts[bucket]
    return offsets


def assign_keys(item, offsets: dict[int, int], shard_size: int):
    """Global index = bucket offset + rank of the uid in its bucket: an exact, seed-free order."""
    bucket, members = item
    base = offsets[bucket]
    for rank, (uid, (pair, selected)) in enumerate(sorted(members, key=lambda m: (m[0], m[1][0].url))):
        index = base + rank
        shard = index // shard_size
        yield shard, Sample(key=shards.key_for(shard, index % shard_size, shard_size), uid=uid, url=pair.url,
                            caption=pair.caption, status="pending", matched_query_ids=pair.matched,
                            selected_query_ids=selected)


# ---------------------------------------------------------------- download

_FETCHED_OK = ("success", "duplicate", "near_duplicate")


def image_info(shard: int, s: Sample) -> dedup.ImageInfo:
    return dedup.ImageInfo(uid=s.uid, key=s.key, shard=shard, sha256=s.sha256, phash=int(s.phash, 16),
                           pixels=(s.original_width or 0) * (s.original_height or 0))


class StageShard(beam.DoFn):
    """Download a shard into DIR/_staging unless it is finished or already staged; emit image infos."""

    def __init__(self, out: str, finished: frozenset[int], fetch_opts: FetchOptions,
                 resize_opts: ResizeOptions, threads: int):
        self.out, self.finished = out, finished
        self.fetch_opts, self.resize_opts, self.threads = fetch_opts, resize_opts, threads

    def process(self, item):
        shard, pending = item
        pending = sorted(pending, key=lambda s: s.key)
        p = shards.paths(self.out, shard)
        if shard in self.finished:
            samples = shards.from_table(shards.read_parquet(
                p["parquet"], columns=["key", "uid", "url", "caption", "status", "sha256", "phash",
                                       "original_width", "original_height"]))
        else:
            samples = self._staged(p["staging"], pending)
            if samples is None:
                samples = download_shard(pending, self.fetch_opts, self.resize_opts, self.threads)
                shards.write_parquet(p["staging"], samples, shards.STAGING_SCHEMA)
                yield beam.pvalue.TaggedOutput(STATS, ("downloaded", len(samples)))
        yield beam.pvalue.TaggedOutput("shards", shard)
        for s in samples:
            if s.status in _FETCHED_OK:
                yield image_info(shard, s)

    @staticmethod
    def _staged(path: str, pending: list[Sample]) -> Optional[list[Sample]]:
        """A staging file left by an interrupted run, if it holds exactly these samples."""
        if not fileio.exists(path):
            return None
        try:
            staged = shards.read_parquet(path, columns=["key", "uid"]).to_pylist()
        except Exception as e:  # a torn file cannot exist (atomic writes), but a foreign one can
            log.warning("%s: unreadable staging file, downloading again: %s", path, e)
            return None
        if [(r["key"], r["uid"]) for r in staged] != [(s.key, s.uid) for s in pending]:
            return None
        return shards.read_samples(path)


# ---------------------------------------------------------------- image dedup

class ImageDedup(beam.PTransform):
    """ImageInfo in; (shard, (uid, status, error_message)) verdicts out for every dropped image."""

    def __init__(self, threshold: int):
        super().__init__()
        self.threshold = threshold

    def expand(self, infos):
        exact = (
            infos
            | "BySha256" >> beam.Map(lambda i: (i.sha256, i))
            | "GroupSha256" >> beam.GroupByKey()
            | "ExactDup" >> beam.FlatMap(_exact_verdicts).with_outputs("verdicts", main="kept")
        )
        if self.threshold < 0:
            return exact.verdicts
        t = self.threshold
        near = (
            exact.kept
            | "Bands" >> beam.FlatMap(lambda i: [(band, i) for band in dedup.bands(i.phash, t)])
            | "GroupBand" >> beam.GroupByKey()
            | "Neighbours" >> beam.FlatMap(lambda kv: [((i.shard, i.uid), b)
                                                       for i, b in dedup.better_neighbours(list(kv[1]), t)])
            | "BestNeighbour" >> beam.CombinePerKey(lambda bs: min(bs, key=lambda b: b.rank))
            | "NearVerdict" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], "near_duplicate",
                                                               f"near duplicate of {kv[1].key}")))
        )
        return (exact.verdicts, near) | "AllVerdicts" >> beam.Flatten()


def _exact_verdicts(item):
    _sha, group = item
    group = list(group)
    best = dedup.best_of(group)
    yield best
    for info in group:
        if info.uid != best.uid:
            yield beam.pvalue.TaggedOutput("verdicts", (info.shard, (info.uid, "duplicate",
                                                                     f"duplicate of {best.key}")))


# ---------------------------------------------------------------- write

class WriteShard(beam.DoFn):
    """Apply the dedup verdicts to a staged shard and write it; finished shards report their stats."""

    def __init__(self, out: str, finished: frozenset[int]):
        self.out, self.finished = out, finished

    def process(self, item):
        shard, joined = item
        p = shards.paths(self.out, shard)
        if shard in self.finished:
            yield json.loads(fileio.read_bytes(p["stats"]))
            return
        verdicts = {uid: (status, message) for uid, status, message in joined["verdicts"]}
        samples = []
        for s in shards.read_samples(p["staging"]):
            if s.uid in verdicts:
                status, message = verdicts[s.uid]
                s = replace(s, status=status, error_message=message, jpg=None)
            samples.append(s)
        stats = shards.write_shard(self.out, shard, samples)
        fileio.delete_if_exists(p["staging"])
        yield stats


# ---------------------------------------------------------------- run stats

def _distribution(counts: dict[int, int], queries: Sequence[str], cap: Optional[int]) -> dict:
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


class WriteRunStats(beam.DoFn):
    def __init__(self, opts: BuildOptions):
        self.opts = opts

    def process(self, _, counts, matched, selected, shard_stats, reject_examples):
        queries = read_queries(self.opts.queries)
        counts = dict(counts)
        totals = {name: sum(shards.status_count(s, name) for s in shard_stats) for name in shards.STATUSES}
        stages = {
            "candidates": counts.get("candidates", 0),
            "rejected_rows": counts.get("rejected_rows", 0),
            "unmatched": counts.get("unmatched", 0),
            "matched": counts.get("candidates", 0) - counts.get("rejected_rows", 0) - counts.get("unmatched", 0),
            "duplicate_pairs": counts.get("duplicate_pairs", 0),
            "duplicate_urls": counts.get("duplicate_urls", 0),
            "unique_pairs": counts.get("unique_pairs", 0),
            "caption_near_duplicates": counts.get("caption_near_duplicates", 0),
            "selected": counts.get("selected", 0),
            "downloaded_this_run": counts.get("downloaded", 0),
            **totals,
        }
        stats = {
            "stages": stages,
            "shards": len(shard_stats),
            "samples_in_tars": totals["success"],
            "per_query_cap": self.opts.per_query_cap,
            "seed": self.opts.seed,
            "queries_in_list": sum(1 for q in queries if q),
            "per_query_before_balancing": _distribution(dict(matched), queries, None),
            "per_query_after_balancing": _distribution(dict(selected), queries, self.opts.per_query_cap),
            "rejected_examples": [str(r) for r in reject_examples],
        }
        fileio.write_bytes(fileio.join(self.opts.out, "stats.json"),
                           json.dumps(stats, indent=1, ensure_ascii=False).encode() + b"\n")
        matched, selected = dict(matched), dict(selected)
        lines = ["query_id\tquery\tmatched\tselected"]
        for qid in sorted(set(matched) | set(selected)):
            lines.append(f"{qid}\t{queries[qid]}\t{matched.get(qid, 0)}\t{selected.get(qid, 0)}")
        fileio.write_bytes(fileio.join(self.opts.out, "query_counts.tsv"), ("\n".join(lines) + "\n").encode())
        yield stats


# ---------------------------------------------------------------- the pipeline

def _count(pcoll, label: str, name: str):
    return pcoll | label >> beam.combiners.Count.Globally() | f"{label}Named" >> beam.Map(lambda n: (name, n))


def _per_query(pcoll, label: str, ids):
    return (pcoll | f"{label}Ids" >> beam.FlatMap(lambda x: [(q, 1) for q in ids(x)])
            | f"{label}Sum" >> beam.CombinePerKey(sum))


def build_pipeline(p: beam.Pipeline, files: Sequence[str], opts: BuildOptions, finished: frozenset[int]):
    read = (
        p
        | "CandidateFiles" >> beam.Create(sorted(files))
        | "SpreadFiles" >> beam.Reshuffle()
        | "Read" >> beam.ParDo(ReadCandidates(opts.input_format, opts.url_col, opts.caption_col))
        .with_outputs("rejects", STATS, main="candidates")
    )
    matched = (
        read.candidates
        | "BatchForMatch" >> beam.BatchElements(min_batch_size=MATCH_BATCH // 16, max_batch_size=MATCH_BATCH)
        | "Match" >> beam.ParDo(MatchQueries(opts.queries)).with_outputs(STATS, main="pairs")
    )
    unique = (
        matched.pairs
        | "GroupUrl" >> beam.GroupByKey()
        | "ChoosePerUrl" >> beam.FlatMap(choose_per_url).with_outputs(STATS, main="pairs")
    )
    to_balance = unique.pairs
    caption_dups = None
    if opts.caption_dup_threshold > 0:
        to_balance, caption_dups = unique.pairs | "CaptionDedup" >> CaptionDedup(
            opts.caption_dup_threshold, opts.seed, opts.out)
    selected = to_balance | "Balance" >> Balance(opts.per_query_cap, opts.seed)

    bucket_counts = (
        selected
        | "BucketOne" >> beam.Map(lambda kv: (bucket_of(kv[0]), 1))
        | "BucketCount" >> beam.CombinePerKey(sum)
        | "BucketDict" >> beam.combiners.ToDict()
        | "Offsets" >> beam.Map(bucket_offsets)
    )
    pending = (
        selected
        | "ByBucket" >> beam.Map(lambda kv: (bucket_of(kv[0]), kv))
        | "GroupBucket" >> beam.GroupByKey()
        | "AssignKeys" >> beam.FlatMap(assign_keys, beam.pvalue.AsSingleton(bucket_counts), opts.shard_size)
        | "GroupShard" >> beam.GroupByKey()
    )
    staged = pending | "Download" >> beam.ParDo(
        StageShard(opts.out, finished, opts.fetch, opts.resize, opts.threads)).with_outputs(
        "shards", STATS, main="images")
    verdicts = staged.images | "ImageDedup" >> ImageDedup(opts.near_dup_threshold)
    shard_stats = (
        {"shard": staged.shards | "ShardKey" >> beam.Map(lambda s: (s, None)), "verdicts": verdicts}
        | "JoinVerdicts" >> beam.CoGroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShard(opts.out, finished))
    )

    count_sources = [read[STATS], matched[STATS], unique[STATS], staged[STATS],
                     _count(read.rejects, "CountRejects", "rejected_rows"),
                     _count(unique.pairs, "CountUnique", "unique_pairs"),
                     _count(selected, "CountSelected", "selected")]
    if caption_dups is not None:
        count_sources.append(_count(caption_dups, "CountCaptionDups", "caption_near_duplicates"))
    counts = (
        tuple(count_sources)
        | "AllCounts" >> beam.Flatten()
        | "SumCounts" >> beam.CombinePerKey(sum)
    )
    per_query_matched = _per_query(unique.pairs, "Matched", lambda kv: kv[1].matched)
    per_query_selected = _per_query(selected, "Selected", lambda kv: kv[1][1])
    reject_examples = (read.rejects
                       | "RejectExamples" >> beam.combiners.Top.Of(20, key=lambda r: (r.source, r.row),
                                                                  reverse=True))
    return (
        p
        | "RunStatsTrigger" >> beam.Create([None])
        | "RunStats" >> beam.ParDo(
            WriteRunStats(opts),
            beam.pvalue.AsList(counts),
            beam.pvalue.AsList(per_query_matched),
            beam.pvalue.AsList(per_query_selected),
            beam.pvalue.AsList(shard_stats),
            beam.pvalue.AsSingleton(reject_examples, default_value=[]),
        )
    )


# ---------------------------------------------------------------- driver

class BuildError(ValueError):
    """The job cannot start: bad arguments, no inputs, or a DIR built differently."""


def _match_candidates(patterns: Sequence[str]) -> list[tuple[str, int, float]]:
    return [(m.path, m.size_in_bytes, m.last_updated_in_seconds)
            for m in fileio.match_files(patterns, "--candidates", BuildError)]


def _finished_shards(out: str) -> frozenset[int]:
    pattern = fileio.join(out, "shards", "*_stats.json")
    found = set()
    for m in FileSystems.match([pattern])[0].metadata_list:
        name = m.path.rsplit("/", 1)[-1].split("_", 1)[0]
        if name.isdigit() and shards.is_finished(out, int(name)):
            found.add(int(name))
    return frozenset(found)


def _clean_temporaries(out: str) -> None:
    for folder in ("shards", "_staging"):
        tmp = FileSystems.match([fileio.join(out, folder, ".*.tmp-*")])[0].metadata_list
        if tmp:
            FileSystems.delete([m.path for m in tmp])


def run_build(opts: BuildOptions, beam_args: Sequence[str] = ()) -> dict:
    """Run the job to completion; returns the run stats (also in DIR/stats.json)."""
    files = _match_candidates(opts.candidates)
    if not FileSystems.exists(opts.queries):
        raise BuildError(f"--queries {opts.queries}: no such file")
    if not any(read_queries(opts.queries)):
        raise BuildError(f"--queries {opts.queries}: the file holds no query")
    fingerprint = opts.fingerprint(files)
    marker = fileio.join(opts.out, "_build.json")
    if fileio.exists(marker):
        previous = json.loads(fileio.read_bytes(marker))
        changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
        if changed:
            raise BuildError(f"{opts.out} was built with different {', '.join(changed)}; "
                             "use another --out (or delete it) to build with these settings")
    elif FileSystems.match([fileio.join(opts.out, "shards", "*")])[0].metadata_list:
        raise BuildError(f"{opts.out}/shards holds files from an unknown build; use an empty --out")
    else:
        fileio.write_bytes(marker, json.dumps(fingerprint, indent=1).encode() + b"\n")
    _clean_temporaries(opts.out)
    finished = _finished_shards(opts.out)
    if finished:
        log.info("%d finished shard(s) in %s are kept", len(finished), opts.out)
    with beam.Pipeline(options=PipelineOptions(list(beam_args))) as p:
        build_pipeline(p, [f[0] for f in files], opts, finished)
    return json.loads(fileio.read_bytes(fileio.join(opts.out, "stats.json")))
