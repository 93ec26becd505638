"""The Beam job that counts a Wikipedia dump's words and bigrams and sums page views.

Each dump file (the split pages-articlesN.xml-p…bz2 files parallelise well)
is one unit of work; counts are summed with combiners, so the same job runs
on DirectRunner here and on Dataflow/Spark for a full English Wikipedia.
Outputs (TSV, sharded by Beam, written through its atomic file sinks):
    WORK/unigrams-*.tsv   word <TAB> count          (count >= min_word_count)
    WORK/bigrams-*.tsv    "w1 w2" <TAB> count      (count >= min_bigram_count)
    WORK/titles-*.tsv     title <TAB> views        (views >= min_views)
    WORK/totals.json      words, pairs, pages
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from queries import ngrams, pageviews
from queries.errors import QueryInputError
from queries.wikipedia import read_dump
from wit.core import fileio
from wit.core.runner import pipeline_options


log = logging.getLogger(__name__)
LOG_EVERY_PAGES = 50_000


class Progress:
    """Bytes of the inputs read so far. On the in-process runner the job shares the driver's process and
    moves its bar; workers elsewhere (other processes, Dataflow, Spark) count pages in a Beam counter and
    log a line per file every LOG_EVERY_PAGES pages."""

    def __init__(self) -> None:
        self.bar = None
        self.lock = threading.Lock()

    def advance(self, n: int) -> None:
        if self.bar is not None and n > 0:
            with self.lock:
                self.bar.update(n)


progress = Progress()


def count_dump(path: str):
    """Per-page pre-aggregated (n, gram) counts, plus a totals record per page."""
    pages_counter = beam.metrics.Metrics.counter("wit", "wikipedia_pages")
    seen = {"bytes": 0, "pages": 0}
    started = time.monotonic()

    def moved(position: int) -> None:
        progress.advance(position - seen["bytes"])
        seen["bytes"] = position
        seen["pages"] += 1
        pages_counter.inc()
        if seen["pages"] % LOG_EVERY_PAGES == 0:
            log.info("%s: %d pages read, %.0f pages/s", path, seen["pages"],
                     seen["pages"] / max(1e-9, time.monotonic() - started))

    for page in read_dump(path, moved):
        grams = Counter(ngrams.ngrams(page.text))
        words = sum(c for g, c in grams.items() if len(g) == 1)
        yield beam.pvalue.TaggedOutput("totals", (words, sum(grams.values()) - words, 1))
        for gram, c in grams.items():
            yield (len(gram), " ".join(gram)), c


def read_pageviews(path: str, size: int = 0):
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
        try:
            yield from pageviews.parse_lines(line.rstrip("\n") for line in fileio.iter_lines(f))
        except (EOFError, OSError) as e:
            raise QueryInputError(f"{path}: truncated or corrupt pageview file: {e}") from e
    progress.advance(size)


def _tsv(kv) -> str:
    return f"{kv[0]}\t{kv[1]}"


def _write_totals(totals, path: str):
    words, pairs, pages = totals
    fileio.write_bytes(path, json.dumps({"words": words, "pairs": pairs, "pages": pages}).encode() + b"\n")
    yield path


def match_all(patterns: Sequence[str], what: str) -> list[str]:
    return [m.path for m in fileio.match_files(patterns, f"{what} file", QueryInputError)]


def _bar(total: int, show: Optional[bool]):
    """A bytes bar with rate and ETA on a terminal (`show` None: if stderr is one)."""
    if not (sys.stderr.isatty() if show is None else show):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="counting", unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)


def run_count(work: str, dumps: Sequence[str] = (), views: Sequence[str] = (), min_word_count: int = 100,
              min_bigram_count: int = 100, min_views: int = 1, beam_args: Sequence[str] = (),
              show_progress: Optional[bool] = None) -> None:
    """Counts under the thresholds are dropped here, on the workers: a full Wikipedia has tens of millions
    of distinct tokens and hundreds of millions of distinct bigrams, nearly all of them rare."""
    dump_files = match_all(dumps, "Wikipedia dump") if dumps else []
    view_files = match_all(views, "pageview") if views else []
    sizes = {m.path: m.size_in_bytes for m in fileio.match_files(list(dumps) + list(views), "input")} \
        if dump_files or view_files else {}
    progress.bar = _bar(sum(sizes.values()), show_progress)
    try:
        _count(work, dump_files, view_files, sizes, min_word_count, min_bigram_count, min_views, beam_args)
    finally:
        if progress.bar is not None:
            progress.bar.close()
        progress.bar = None


def _count(work: str, dump_files: Sequence[str], view_files: Sequence[str], sizes: dict, min_word_count: int,
           min_bigram_count: int, min_views: int, beam_args: Sequence[str]) -> None:
    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        if dump_files:
            counted = (p | "Dumps" >> beam.Create(dump_files) | "SpreadDumps" >> beam.Reshuffle()
                       | "Count" >> beam.FlatMap(count_dump).with_outputs("totals", main="grams"))
            summed = counted.grams | "SumGrams" >> beam.CombinePerKey(sum)
            (summed | "Unigrams" >> beam.Filter(lambda kv, m: kv[0][0] == 1 and kv[1] >= m, min_word_count)
             | "UnigramTsv" >> beam.Map(lambda kv: _tsv((kv[0][1], kv[1])))
             | "WriteUnigrams" >> beam.io.WriteToText(fileio.join(work, "unigrams"), file_name_suffix=".tsv"))
            (summed | "Bigrams" >> beam.Filter(lambda kv, m: kv[0][0] == 2 and kv[1] >= m, min_bigram_count)
             | "BigramTsv" >> beam.Map(lambda kv: _tsv((kv[0][1], kv[1])))
             | "WriteBigrams" >> beam.io.WriteToText(fileio.join(work, "bigrams"), file_name_suffix=".tsv"))
            (counted.totals
             | "SumTotals" >> beam.CombineGlobally(lambda ts: tuple(map(sum, zip(*ts))) if ts else (0, 0, 0))
             | "WriteTotals" >> beam.FlatMap(_write_totals, fileio.join(work, "totals.json")))
        if view_files:
            (p | "ViewFiles" >> beam.Create(view_files) | "SpreadViews" >> beam.Reshuffle()
             | "ReadViews" >> beam.FlatMap(lambda path, sizes: read_pageviews(path, sizes.get(path, 0)), sizes)
             | "SumViews" >> beam.CombinePerKey(sum)
             | "Popular" >> beam.Filter(lambda kv, m: kv[1] >= m, min_views)
             | "TitleTsv" >> beam.Map(_tsv)
             | "WriteTitles" >> beam.io.WriteToText(fileio.join(work, "titles"), file_name_suffix=".tsv"))
