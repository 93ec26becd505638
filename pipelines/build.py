"""`wit build`: the Beam job from candidate pairs to balanced, deduplicated shards.

    plan:  read -> caption filter -> match -> URL dedup -> caption dedup -> balance -> order + shard
    fetch: download (per shard, staged) -> image dedup -> write shards -> run stats

Each stage is a PTransform in the module of its logic; this module holds the
options, the wiring and the driver. The build runs as two Beam jobs. The plan
job assigns every selected pair its shard and key and writes them to DIR/plan
(`--plan-only` stops there); the fetch job downloads the planned shards. A
rerun into the same DIR takes the finished plan as it is and downloads only the
shards that are not finished. All I/O goes through Beam FileSystems, so the
same job runs on the local FnApiRunner, Dataflow and Spark.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import counters
from pipelines.balance import Balance
from pipelines.candidates import FORMATS, ReadCandidates
from pipelines.captionfilter import FilterCaptions
from pipelines.decoders import shared_pool
from pipelines.download import DownloadShards
from pipelines.fetch import FetchOptions
from pipelines.evalsets import read_eval_sets
from pipelines.imagededup import ImageDedup, sorted_refs
from pipelines.records import EvalImage
from pipelines.match import MatchQueries
from pipelines.querylist import control_characters, read_queries
from pipelines.order import AssignShards, ReadPlan
from pipelines.resize import ResizeOptions
from pipelines.progress import DownloadProgress
from pipelines.runstats import Plan, PlanDetails, RunDetails, RunStats, finish_plan, write_stats
from pipelines.shards import WriteShards, write_sizes
from pipelines.sizing import MAX_GROUP, caption_partitions, plan_buckets, url_partitions
from pipelines.textdedup import CaptionDedup
from pipelines.urldedup import DedupUrls
from wit.core import fileio, shardformat
from wit.core.errors import WitError, cause_of, user_error_under
from wit.core.options import Options, option
from wit.core.runner import pipeline_options, workers_in_this_process

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions(Options):
    candidates: tuple[str, ...] = option(help="file glob of candidate pairs (Parquet, JSONL, CSV/TSV; local, "
                                              "gs://, s3://)", metavar="GLOB")
    queries: str = option(help="query list: one per line, or the TSV from `wit queries build`", metavar="FILE")
    out: str = option(help="output directory (local or any Beam filesystem)", metavar="DIR")
    input_format: str = option("auto", help="format of the candidate files (auto: by extension)",
                               choices=("auto",) + FORMATS)
    url_col: str = option("url", help="column of the image URL")
    caption_col: str = option("caption", help="column of the caption")
    save_additional_columns: tuple[str, ...] = option((), help="an input column kept in the shards' Parquet and "
                                                               "each sample's JSON (img2dataset's "
                                                               "--save_additional_columns)", metavar="COL")
    strict: bool = option(False, help="stop at the first damaged input file (truncated, corrupt, unusable "
                                      "columns) instead of keeping its rows before the damage and going on")
    min_caption_words: int = option(0, help="drop candidates whose caption has fewer words (0: keep all)")
    per_query_cap: int = option(20_000, help="pairs kept per query")
    seed: int = option(0, help="seed of the balancing order")
    caption_dup_threshold: float = option(
        0.0, help="drop pairs whose caption's word-3-gram Jaccard similarity (MinHash LSH) to a kept caption "
                  "reaches this, e.g. 0.9; 0 keeps them; drops listed in DIR/caption_near_duplicates.tsv")
    near_dup_threshold: int = option(4, help="max Hamming distance of 64-bit pHashes counted as near duplicates; "
                                             "-1 turns image near-dup detection off")
    exclude_near: tuple[str, ...] = option((), help="an evaluation set (a folder of images, a folder of webdataset "
                                                    "tars, or a tar glob): downloaded images within "
                                                    "--near-dup-threshold of one of its images are dropped",
                                           metavar="PATH")
    shard_size: int = option(10_000, help="samples per shard")
    threads: int = option(0, help="requests in flight per worker process; 0: as many as keep every core "
                                  "decoding, adapted to the latency the download sees")
    plan_only: bool = option(False, help="stop after the plan: DIR/plan (the selected pairs by shard, a URL "
                                         "list img2dataset takes), the per-query counts and stats.json; a later "
                                         "build into DIR downloads this plan")
    progress: bool = option(True, help="show the download's progress: shards done, images/s, share fetched, "
                                       "ETA (a bar on a terminal, a line a minute otherwise)")
    max_group_size: int = option(MAX_GROUP, help="values of one key a worker groups; keys with more are "
                                                 "resolved without grouping (same result)")
    resize: ResizeOptions = option(default_factory=ResizeOptions, help="images")
    fetch: FetchOptions = option(default_factory=FetchOptions, help="fetching")

    def check(self) -> None:
        if self.per_query_cap < 1:
            self.refuse("per_query_cap", "must be at least 1")
        if self.shard_size < 1:
            self.refuse("shard_size", "must be at least 1")
        if self.threads < 0:
            self.refuse("threads", "must not be negative")
        if self.max_group_size < 1:
            self.refuse("max_group_size", "must be at least 1")
        if self.min_caption_words < 0:
            self.refuse("min_caption_words", "must not be negative")
        if not -1 <= self.near_dup_threshold <= 32:
            self.refuse("near_dup_threshold", "must be in -1..32")
        if not 0.0 <= self.caption_dup_threshold <= 1.0:
            self.refuse("caption_dup_threshold", "must be in 0..1")
        if self.exclude_near and self.near_dup_threshold < 0:
            self.refuse("exclude_near", "needs --near-dup-threshold 0 or more")
        own = [c for c in self.save_additional_columns if c in shardformat.OWN_COLUMNS]
        if own:
            self.refuse("save_additional_columns", f"{own[0]!r} is a column wit writes itself")
        if len(set(self.save_additional_columns)) != len(self.save_additional_columns):
            self.refuse("save_additional_columns", "names a column twice")

    def fingerprint(self, files: Sequence[tuple[str, int, float]], refs: Sequence[EvalImage] = ()) -> dict:
        """Everything that decides the shards' content; a rerun into the same DIR must match it. The query
        list and the evaluation sets count by their content; how fast or in what steps the job runs does not
        count."""
        d = asdict(self)
        images = sorted((r.source, r.key, r.phash) for r in refs)
        d["exclude_near"] = hashlib.sha256(repr(images).encode()).hexdigest() if refs else None
        for name in ("out", "threads", "plan_only", "max_group_size", "strict", "progress"):
            d.pop(name)
        d["fetch"] = {k: d["fetch"][k] for k in _FETCH_DECIDES}
        d["candidates"] = [list(f) for f in files]
        d["queries"] = hashlib.sha256(fileio.read_bytes(self.queries)).hexdigest()
        return json.loads(json.dumps(d))


# What makes a fetch end differently, as opposed to how long it may take.
_FETCH_DECIDES = ("max_bytes", "max_redirects", "disallowed_directives", "user_agent_token", "robots_txt",
                  "allow_private_networks", "allowed_addresses")


def absolute(opts: BuildOptions) -> BuildOptions:
    """Local paths made absolute on the driver: workers may run in another directory."""
    def local(path: str) -> str:
        return os.path.abspath(path) if fileio.is_local(path) else path

    return replace(opts, candidates=tuple(local(c) for c in opts.candidates), queries=local(opts.queries),
                   out=local(opts.out))


def plan_pipeline(p: beam.Pipeline, files: Sequence[tuple[str, int]], opts: BuildOptions,
                  whole: frozenset[int] = frozenset()) -> None:
    """The stages before the download, in the order pairs flow through them; each counts what it drops."""
    input_bytes = sum(size for _path, size in files)  # sets how finely URLs and the selection are spread
    candidates, rejects = p | "Read" >> ReadCandidates(files, opts.input_format, opts.url_col, opts.caption_col,
                                                           strict=opts.strict,
                                                           additional=opts.save_additional_columns)
    candidates = candidates | "FilterCaptions" >> FilterCaptions(opts.min_caption_words)
    pairs = candidates | "Match" >> MatchQueries(opts.queries, sorted(path for path, _size in files))
    unique = pairs | "DedupUrls" >> DedupUrls(url_partitions(input_bytes))
    kept = unique | "CaptionDedup" >> CaptionDedup(opts.caption_dup_threshold, opts.seed, opts.out,
                                                   opts.max_group_size, caption_partitions(input_bytes))
    selected, matched, unproven = kept | "Balance" >> Balance(opts.per_query_cap, opts.seed, whole)
    planned = selected | "AssignShards" >> AssignShards(opts.shard_size, opts.out, plan_buckets(input_bytes),
                                                        sorted(path for path, _size in files),
                                                        opts.save_additional_columns)
    _ = (matched, selected, rejects, planned, unproven) | "RunDetails" >> RunDetails(
        opts.queries, opts.out, opts.per_query_cap, opts.shard_size)


def download_pipeline(p: beam.Pipeline, shards: int, opts: BuildOptions, finished: frozenset[int],
                   refs: Sequence[EvalImage] = ()) -> None:
    """The planned shards downloaded, deduplicated across the whole dataset (and against the evaluation
    images `refs`) and written."""
    pending = p | "Shards" >> beam.Create(range(shards)) | "SpreadShards" >> beam.Reshuffle() \
        | "ReadPlan" >> ReadPlan(opts.out, opts.shard_size)
    images, shard_numbers = pending | "Download" >> DownloadShards(opts.out, finished, opts.fetch, opts.resize,
                                                                   opts.threads)
    refs = sorted_refs(refs)
    found = images | "ImageDedup" >> ImageDedup(opts.near_dup_threshold, shards * opts.shard_size, refs,
                                                opts.max_group_size)
    written = (shard_numbers, found) | "WriteShards" >> WriteShards(opts.out, finished, refs)
    _ = p | "SizesTrigger" >> beam.Create([None]) | "WriteSizes" >> beam.Map(write_sizes, opts.out,
                                                                              beam.pvalue.AsList(written))


# ---------------------------------------------------------------- driver

class BuildError(WitError):
    """The job cannot start: no inputs, or a DIR built differently."""


def _match_candidates(patterns: Sequence[str]) -> list[tuple[str, int, float]]:
    return [(m.path, m.size_in_bytes, m.last_updated_in_seconds)
            for m in fileio.match_files(patterns, "--candidates", BuildError)]


def _finished_shards(out: str) -> frozenset[int]:
    return frozenset(shard for shard, _path in shardformat.numbered_files(out, "shards", "_stats.json")
                     if shardformat.is_finished(out, shard))


def _clean_temporaries(out: str) -> None:
    for folder in ("plan", "shards", "_staging"):
        _delete(fileio.join(out, folder), ".*.tmp-*")


def _check_out(opts: BuildOptions, files: list[tuple[str, int, float]], refs: Sequence[EvalImage]) -> None:
    """A DIR holds one build: refuse one made with other settings or inputs; mark a new one."""
    fingerprint = opts.fingerprint(files, refs)
    marker = fileio.join(opts.out, "_build.json")
    if fileio.exists(marker):
        try:
            previous = json.loads(fileio.read_bytes(marker))
            if not isinstance(previous, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:  # written atomically by us: damaged by something else
            raise BuildError(f"{marker}: not a build marker ({e}); it says which settings built {opts.out}, so "
                             f"without it the folder cannot be trusted: use another --out, or delete the folder")
        changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
        if changed:
            raise BuildError(f"{opts.out} was built with different {', '.join(changed)}; "
                             "use another --out (or delete it) to build with these settings")
    elif FileSystems.match([fileio.join(fileio.escape(opts.out), "shards", "*")])[0].metadata_list:
        raise BuildError(f"{opts.out}/shards holds files from an unknown build; use an empty --out")
    else:
        fileio.write_bytes(marker, json.dumps(fingerprint, indent=1).encode() + b"\n")


def _run_job(job, beam_args: Sequence[str], counts: str, *args) -> counters.Counts:
    """Run one job (`plan_pipeline` or `download_pipeline`); what it counted, which it writes to `counts`."""
    fileio.delete_if_exists(counts)
    p = beam.Pipeline(options=pipeline_options(beam_args))
    job(p, *args)
    _ = p | "Counts" >> counters.WriteCounts(counts)
    try:
        result = p.run()
        result.wait_until_finish()
    except Exception as e:
        if cause_of(e, KeyboardInterrupt):  # Ctrl-C inside a DoFn, re-raised by Beam as a RuntimeError
            raise KeyboardInterrupt from None
        raise _user_error(e) or e
    return counters.Counts.read(counts)


def _user_error(e: BaseException) -> Optional[WitError]:
    """What a user can fix, found under the runner's wrapping, as a WitError: a file the system refused then
    names its path in one line."""
    found = user_error_under(e)
    if isinstance(found, OSError):
        return BuildError(f"{found.filename}: {found.strerror or found}")
    return found  # type: ignore[return-value]


def _delete(folder: str, pattern: str) -> None:
    """Files in `folder` whose names match `pattern`."""
    found = FileSystems.match([fileio.join(fileio.escape(folder), pattern)])[0].metadata_list
    if found:
        fileio.delete([m.path for m in found])


def _make_plan(opts: BuildOptions, files: list[tuple[str, int]], beam_args: Sequence[str]) -> Plan:
    whole: frozenset[int] = frozenset()
    while True:
        _delete(fileio.join(opts.out, "plan"), "*")  # an unfinished plan's files, or the unproven one's
        counts = _run_job(plan_pipeline, beam_args, fileio.join(opts.out, "plan", counters.COUNTS), files, opts, whole)
        problems = counters.unbalanced(counts.stages, until="selected")
        if problems:  # pairs lost or doubled on the way (a failed worker whose bundle the runner dropped)
            raise BuildError(f"the plan's counts do not add up ({'; '.join(problems)}): the runner lost or "
                             "repeated pairs, so this plan is not kept; run the build again")
        details = PlanDetails.read(opts.out)
        wrong = details.misbalanced_queries
        if wrong:  # the counts add up, but a selection is not its query's bottom-k: elements went missing
            raise BuildError(f"the plan's selection is not exact (queries {', '.join(map(str, wrong[:5]))} do not "
                             "select min(cap, matched) pairs): the runner lost elements, so this plan is not kept; "
                             "run the build again")
        unproven = details.unproven_queries
        if not unproven:
            return finish_plan(opts.out, details, counts.stages, counts.key_sizes)
        # see Balance: astronomically rare; those queries then take all their pairs
        log.warning("balancing again with %d queries taking all their pairs: %s", len(unproven), unproven[:10])
        whole |= frozenset(unproven)


def run_build(opts: BuildOptions, beam_args: Sequence[str] = ()) -> RunStats:
    """Plan (unless DIR holds a finished plan) and download; returns the run stats (also in DIR/stats.json).
    One build at a time writes into DIR: a second is refused at once (`fileio.folder_lock`)."""
    opts = absolute(opts)
    files = _match_candidates(opts.candidates)
    if not FileSystems.exists(opts.queries):
        raise BuildError(f"--queries {opts.queries}: no such file")
    queries = read_queries(opts.queries)
    if not any(queries):
        raise BuildError(f"--queries {opts.queries}: the file holds no query")
    odd = control_characters(queries, opts.queries)
    if odd:
        log.warning("%s", odd)
    refs = read_eval_sets(opts.exclude_near, opts.resize)
    with fileio.folder_lock(opts.out, "wit build"):
        return _plan_and_download(opts, files, refs, beam_args)


def _plan_and_download(opts: BuildOptions, files: list[tuple[str, int, float]], refs: Sequence[EvalImage],
                       beam_args: Sequence[str]) -> RunStats:
    _check_out(opts, files, refs)
    _clean_temporaries(opts.out)
    plan = Plan.read(opts.out)
    if plan is None:
        if not opts.plan_only and workers_in_this_process(beam_args):
            shared_pool()  # the download's decoding processes start and import while the plan job runs
        plan = _make_plan(opts, [(f[0], f[1]) for f in files], beam_args)
    else:
        log.info("%s holds a finished plan of %d shard(s): downloading it", opts.out, plan.shards)
    if opts.plan_only:
        return write_stats(opts.out, plan, {}, {}, {}, opts.per_query_cap, opts.seed)
    finished = _finished_shards(opts.out)
    if finished:
        log.info("%d finished shard(s) in %s are kept", len(finished), opts.out)
    with DownloadProgress(opts.out, plan.shards, finished) if opts.progress else contextlib.nullcontext():
        counts = _run_job(download_pipeline, beam_args, fileio.join(opts.out, counters.COUNTS), plan.shards, opts,
                          finished, refs)
    stats = write_stats(opts.out, plan, counts.stages, counts.key_sizes, counts.eval_sets, opts.per_query_cap,
                        opts.seed)
    problems = counters.unbalanced(stats.stages)
    if problems:  # a stage that drops pairs without counting them: a bug, but the shards are fine
        log.warning("stage counts do not add up: %s", "; ".join(problems))
    return stats
