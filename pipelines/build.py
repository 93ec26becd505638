"""`wit build`: the Beam job from candidate pairs to balanced, deduplicated shards.

    read -> caption filter -> match -> URL dedup -> caption dedup -> balance -> order + shard
         -> download (per shard, staged) -> image dedup -> write shards -> run stats

Each stage is a PTransform in the module of its logic; this module holds the
options, the wiring and the driver. Shards are assigned before anything is
downloaded, from the uid order of the selected pairs, so a rerun knows which
shards are finished and fetches only the missing ones. All I/O goes through
Beam FileSystems, so the same job runs on DirectRunner, DataflowRunner and Spark.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import stages
from pipelines.balance import Balance
from pipelines.candidates import FORMATS, ReadCandidates
from pipelines.captionfilter import FilterCaptions
from pipelines.download import DownloadShards
from pipelines.fetch import FetchOptions
from pipelines.imagededup import ImageDedup
from pipelines.match import MatchQueries, read_queries
from pipelines.order import AssignShards
from pipelines.resize import ResizeOptions
from pipelines.runstats import RunDetails, write_stats
from pipelines.shards import WriteShards
from pipelines.textdedup import CaptionDedup
from pipelines.urldedup import DedupUrls
from wit import fileio, shardformat
from wit.errors import WitError
from wit.options import Options, option

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
    min_caption_words: int = option(0, help="drop candidates whose caption has fewer words (0: keep all)")
    per_query_cap: int = option(20_000, help="pairs kept per query")
    seed: int = option(0, help="seed of the balancing order")
    caption_dup_threshold: float = option(
        0.0, help="drop pairs whose caption's word-3-gram Jaccard similarity (MinHash LSH) to a kept caption "
                  "reaches this, e.g. 0.9; 0 keeps them; drops listed in DIR/caption_near_duplicates.tsv")
    near_dup_threshold: int = option(4, help="max Hamming distance of 64-bit pHashes counted as near duplicates; "
                                             "-1 turns image near-dup detection off")
    shard_size: int = option(10_000, help="samples per shard")
    threads: int = option(32, help="download threads per shard being fetched")
    resize: ResizeOptions = option(default_factory=ResizeOptions, help="images")
    fetch: FetchOptions = option(default_factory=FetchOptions, help="fetching")

    def check(self) -> None:
        if self.per_query_cap < 1:
            self.refuse("per_query_cap", "must be at least 1")
        if self.shard_size < 1:
            self.refuse("shard_size", "must be at least 1")
        if self.threads < 1:
            self.refuse("threads", "must be at least 1")
        if self.min_caption_words < 0:
            self.refuse("min_caption_words", "must not be negative")
        if not -1 <= self.near_dup_threshold <= 32:
            self.refuse("near_dup_threshold", "must be in -1..32")
        if not 0.0 <= self.caption_dup_threshold <= 1.0:
            self.refuse("caption_dup_threshold", "must be in 0..1")

    def fingerprint(self, files: Sequence[tuple[str, int, float]]) -> dict:
        """What decides the shards' content; a rerun into the same DIR must match it."""
        d = asdict(self)
        d.pop("out")
        d.pop("threads")
        d["fetch"] = {k: d["fetch"][k] for k in ("max_bytes", "max_redirects", "disallowed_directives")}
        d["candidates"] = [list(f) for f in files]
        return json.loads(json.dumps(d))


def build_pipeline(p: beam.Pipeline, files: Sequence[str], opts: BuildOptions, finished: frozenset[int]) -> None:
    """The stages in the order pairs flow through them; each counts what it drops (see pipelines.stages)."""
    candidates, rejects = p | "Read" >> ReadCandidates(files, opts.input_format, opts.url_col, opts.caption_col)
    candidates = candidates | "FilterCaptions" >> FilterCaptions(opts.min_caption_words)
    pairs = candidates | "Match" >> MatchQueries(opts.queries)
    unique = pairs | "DedupUrls" >> DedupUrls()
    kept = unique | "CaptionDedup" >> CaptionDedup(opts.caption_dup_threshold, opts.seed, opts.out)
    selected = kept | "Balance" >> Balance(opts.per_query_cap, opts.seed)
    pending = selected | "AssignShards" >> AssignShards(opts.shard_size)
    images, shard_numbers = pending | "Download" >> DownloadShards(opts.out, finished, opts.fetch, opts.resize,
                                                                   opts.threads)
    verdicts = images | "ImageDedup" >> ImageDedup(opts.near_dup_threshold)
    written = (shard_numbers, verdicts) | "WriteShards" >> WriteShards(opts.out, finished)
    _ = (unique, selected, rejects, written) | "RunDetails" >> RunDetails(opts.queries, opts.out, opts.per_query_cap)


# ---------------------------------------------------------------- driver

class BuildError(WitError):
    """The job cannot start: no inputs, or a DIR built differently."""


def _match_candidates(patterns: Sequence[str]) -> list[tuple[str, int, float]]:
    return [(m.path, m.size_in_bytes, m.last_updated_in_seconds)
            for m in fileio.match_files(patterns, "--candidates", BuildError)]


def _finished_shards(out: str) -> frozenset[int]:
    pattern = fileio.join(out, "shards", "*_stats.json")
    found = set()
    for m in FileSystems.match([pattern])[0].metadata_list:
        name = m.path.rsplit("/", 1)[-1].split("_", 1)[0]
        if name.isdigit() and shardformat.is_finished(out, int(name)):
            found.add(int(name))
    return frozenset(found)


def _clean_temporaries(out: str) -> None:
    for folder in ("shards", "_staging"):
        tmp = FileSystems.match([fileio.join(out, folder, ".*.tmp-*")])[0].metadata_list
        if tmp:
            FileSystems.delete([m.path for m in tmp])


def _check_out(opts: BuildOptions, files: list[tuple[str, int, float]]) -> None:
    """A DIR holds one build: refuse one made with other settings or inputs; mark a new one."""
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


def run_build(opts: BuildOptions, beam_args: Sequence[str] = ()) -> dict:
    """Run the job to completion; returns the run stats (also in DIR/stats.json)."""
    files = _match_candidates(opts.candidates)
    if not FileSystems.exists(opts.queries):
        raise BuildError(f"--queries {opts.queries}: no such file")
    if not any(read_queries(opts.queries)):
        raise BuildError(f"--queries {opts.queries}: the file holds no query")
    _check_out(opts, files)
    _clean_temporaries(opts.out)
    finished = _finished_shards(opts.out)
    if finished:
        log.info("%d finished shard(s) in %s are kept", len(finished), opts.out)
    p = beam.Pipeline(options=PipelineOptions(list(beam_args)))
    build_pipeline(p, [f[0] for f in files], opts, finished)
    result = p.run()
    result.wait_until_finish()
    counts = stages.from_metrics(result)
    problems = stages.unbalanced(counts)
    if problems:  # a stage that drops pairs without counting them: a bug, but the shards are fine
        log.warning("stage counts do not add up: %s", "; ".join(problems))
    return write_stats(opts.out, counts, opts.per_query_cap, opts.seed)
