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
from collections import Counter
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from queries import ngrams, pageviews
from queries.errors import QueryInputError
from queries.wikipedia import read_dump
from wit import fileio
from wit.runner import pipeline_options


def count_dump(path: str):
    """Per-page pre-aggregated (n, gram) counts, plus a totals record per page."""
    for page in read_dump(path):
        grams = Counter(ngrams.ngrams(page.text))
        words = sum(c for g, c in grams.items() if len(g) == 1)
        yield beam.pvalue.TaggedOutput("totals", (words, sum(grams.values()) - words, 1))
        for gram, c in grams.items():
            yield (len(gram), " ".join(gram)), c


def read_pageviews(path: str):
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
        try:
            yield from pageviews.parse_lines(line.rstrip("\n") for line in fileio.iter_lines(f))
        except (EOFError, OSError) as e:
            raise QueryInputError(f"{path}: truncated or corrupt pageview file: {e}") from e


def _tsv(kv) -> str:
    return f"{kv[0]}\t{kv[1]}"


def _write_totals(totals, path: str):
    words, pairs, pages = totals
    fileio.write_bytes(path, json.dumps({"words": words, "pairs": pairs, "pages": pages}).encode() + b"\n")
    yield path


def match_all(patterns: Sequence[str], what: str) -> list[str]:
    return [m.path for m in fileio.match_files(patterns, f"{what} file", QueryInputError)]


def run_count(work: str, dumps: Sequence[str] = (), views: Sequence[str] = (), min_word_count: int = 100,
              min_bigram_count: int = 100, min_views: int = 1, beam_args: Sequence[str] = ()) -> None:
    """Counts under the thresholds are dropped here, on the workers: a full Wikipedia has tens of millions
    of distinct tokens and hundreds of millions of distinct bigrams, nearly all of them rare."""
    dump_files = match_all(dumps, "Wikipedia dump") if dumps else []
    view_files = match_all(views, "pageview") if views else []
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
             | "ReadViews" >> beam.FlatMap(read_pageviews)
             | "SumViews" >> beam.CombinePerKey(sum)
             | "Popular" >> beam.Filter(lambda kv, m: kv[1] >= m, min_views)
             | "TitleTsv" >> beam.Map(_tsv)
             | "WriteTitles" >> beam.io.WriteToText(fileio.join(work, "titles"), file_name_suffix=".tsv"))
