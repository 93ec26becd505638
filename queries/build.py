"""`wit queries build`: inputs -> counts (Beam) -> the query list, its TSV and a composition report."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from queries import wordnet as wn
from queries.assemble import Result, Thresholds, assemble
from queries.count import match_all, run_count
from queries.errors import QueryInputError
from queries.ngrams import words
from wit import fileio
from wit.options import Options, option

DEBIAN_WORDNET = "/usr/share/wordnet"
WORDFREQ_CORPUS_TOKENS = 3_000_000_000  # roughly English Wikipedia's size in words


@dataclass(frozen=True)
class QueryInputs(Options):
    wikipedia: tuple[str, ...] = option((), help="pages-articles dump(s), .xml or .xml.bz2 (glob); counted with Beam")
    unigrams: tuple[str, ...] = option((), help="precomputed 'word<TAB>count' file(s)")
    bigrams: tuple[str, ...] = option((), help="precomputed 'w1 w2<TAB>count' file(s)")
    pageviews: tuple[str, ...] = option((), help="pageview dump file(s) ('en Title views bytes' lines), summed "
                                                 "(glob)")
    wordnet: Optional[str] = option(None, help=f"WordNet 3.0 database directory or WN-LMF XML (default "
                                               f"{DEBIAN_WORDNET} if present)")
    work: Optional[str] = option(None, help="directory for the counting job's output (default OUT/counts)")


@dataclass(frozen=True)
class QueryBuildOptions(Options):
    out: str = option(help="directory for queries.txt, queries.tsv and composition.json")
    inputs: QueryInputs = option(default_factory=QueryInputs, help="inputs")
    thresholds: Thresholds = option(default_factory=Thresholds, help="thresholds")


def read_counts(patterns: Sequence[str], what: str, normalise: bool = True) -> dict[str, int]:
    """`key <TAB> count` files (ours, or precomputed ones such as wikiwords' unigram list).

    Word and bigram keys are reduced to the matcher's words; titles keep their case (`normalise=False`).
    """
    counts: dict[str, int] = {}
    for path in match_all(patterns, what):
        data = fileio.read_bytes(path).decode("utf-8", errors="replace")
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            key, sep, value = line.rpartition("\t")
            if not sep or not value.strip().isdigit():
                raise QueryInputError(f"{path}: line {number}: expected 'text<TAB>count', got {line[:80]!r}")
            key = " ".join(words(key)) if normalise else key.strip()
            if key:
                counts[key] = counts.get(key, 0) + int(value)
    return counts


def wordfreq_unigrams() -> dict[str, int]:
    """The offline default: wordfreq's English list, frequencies scaled to a Wikipedia-sized corpus."""
    import wordfreq

    counts: dict[str, int] = {}
    for word, freq in wordfreq.get_frequency_dict("en", wordlist="large").items():
        key = " ".join(words(word))
        if key and " " not in key:
            counts[key] = counts.get(key, 0) + round(freq * WORDFREQ_CORPUS_TOKENS)
    return counts


def build(opts: QueryBuildOptions, beam_args: Sequence[str] = ()) -> Result:
    t = opts.thresholds
    inputs = opts.inputs if opts.inputs.work else replace(opts.inputs, work=fileio.join(opts.out, "counts"))
    notes = []
    totals: dict = {}
    unigrams: dict[str, int] = {}
    bigrams: dict[str, int] = {}
    titles: dict[str, int] = {}
    if inputs.wikipedia or inputs.pageviews:
        run_count(inputs.work, inputs.wikipedia, inputs.pageviews, t.min_bigram_count, t.min_views, beam_args)
    if inputs.wikipedia:
        unigrams = read_counts([fileio.join(inputs.work, "unigrams-*.tsv")], "unigram")
        bigrams = read_counts([fileio.join(inputs.work, "bigrams-*.tsv")], "bigram") \
            if FileSystems.match([fileio.join(inputs.work, "bigrams-*.tsv")])[0].metadata_list else {}
        totals = json.loads(fileio.read_bytes(fileio.join(inputs.work, "totals.json")))
    if inputs.unigrams:
        unigrams = read_counts(inputs.unigrams, "unigram")
    if inputs.bigrams:
        bigrams = read_counts(inputs.bigrams, "bigram")
    if not unigrams:
        unigrams = wordfreq_unigrams()
        notes.append("no Wikipedia input given: unigram counts come from the wordfreq package's English list, "
                     f"frequencies scaled to {WORDFREQ_CORPUS_TOKENS:,} words; bigrams need --wikipedia or --bigrams")
    if inputs.pageviews:
        titles = read_counts([fileio.join(inputs.work, "titles-*.tsv")], "title count", normalise=False)
    else:
        notes.append("no --pageviews given: no Wikipedia titles")
    wordnet_path = inputs.wordnet or (DEBIAN_WORDNET if os.path.isdir(DEBIAN_WORDNET) else None)
    lemmas = wn.read(wordnet_path) if wordnet_path else []
    if not wordnet_path:
        notes.append(f"no --wordnet given and none at {DEBIAN_WORDNET} (Debian's wordnet-base): no WordNet lemmas")
    result = assemble(unigrams, bigrams, titles, lemmas, t, totals.get("words"), totals.get("pairs"))
    result.report["inputs"] = {"wikipedia": list(inputs.wikipedia), "unigrams": list(inputs.unigrams),
                               "bigrams": list(inputs.bigrams), "pageviews": list(inputs.pageviews),
                               "wordnet": wordnet_path}
    result.report["notes"] = notes
    return result


def write(result: Result, out: str) -> dict[str, str]:
    paths = {name: fileio.join(out, name) for name in ("queries.txt", "queries.tsv", "composition.json")}
    fileio.write_bytes(paths["queries.txt"], "".join(f"{e.query}\n" for e in result.entries).encode())
    fileio.write_bytes(paths["queries.tsv"], "".join(
        f"{e.query}\t{e.source}\t{e.count}\t{'' if e.pmi is None else e.pmi}\n" for e in result.entries).encode())
    fileio.write_bytes(paths["composition.json"], json.dumps(result.report, indent=1).encode() + b"\n")
    return paths


def summary(result: Result) -> str:
    r = result.report
    lines = [f"{r['entries']:,} queries (target {r['target']:,})"]
    for source, s in r["sources"].items():
        lines.append(f"  {source:<8} kept {s['kept']:>9,} of {s['candidates']:>9,} candidates "
                     f"({s['already_present']:,} already present, {s['cut']:,} cut)")
    if r["short_by"]:
        lines.append(f"WARNING: {r['short_by']:,} short of the target: the inputs hold too few entries")
    lines += [f"NOTE: {n}" for n in r["notes"]]
    return "\n".join(lines)
