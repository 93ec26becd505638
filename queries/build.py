"""`wit queries build`: inputs -> counts (Beam) -> the query list, its TSV and a composition report."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from queries import wordnet as wn
from queries.assemble import Result, Thresholds, assemble
from queries.count import match_all, run_count
from queries.download import downloaded_inputs
from queries.errors import QueryInputError
from queries.ngrams import words
from wit.core import fileio
from wit.core.options import Options, option

WORDFREQ_CORPUS_TOKENS = 3_000_000_000  # roughly English Wikipedia's size in words
_DIGIT_RUN = re.compile(r"\d\d")  # wordfreq writes every run of two or more digits as zeros: "00th", "a00"


@dataclass(frozen=True)
class QueryInputs(Options):
    from_dir: Optional[str] = option(None, flag="from", help="a folder `wit queries download` filled: its dump, "
                                                             "pageview files and WordNet, as its manifest lists them")
    wikipedia: tuple[str, ...] = option((), help="pages-articles dump(s), .xml or .xml.bz2 (glob); counted with Beam")
    unigrams: tuple[str, ...] = option((), help="precomputed 'word<TAB>count' file(s)")
    bigrams: tuple[str, ...] = option((), help="precomputed 'w1 w2<TAB>count' file(s)")
    pageviews: tuple[str, ...] = option((), help="pageview dump file(s) ('en Title views bytes' lines), summed "
                                                 "(glob)")
    wordnet: Optional[str] = option(None, help="WordNet 3.0 database directory or WN-LMF XML (default: WordNet "
                                               "3.0's head lemmas as shipped with wit)")
    work: Optional[str] = option(None, help="directory for the counting job's output (default OUT/counts)")


@dataclass(frozen=True)
class QueryBuildOptions(Options):
    out: str = option(help="directory for queries.txt, queries.tsv and composition.json")
    inputs: QueryInputs = option(default_factory=QueryInputs, help="inputs")
    thresholds: Thresholds = option(default_factory=Thresholds, help="thresholds")
    progress: bool = option(True, help="show the counting's progress (bytes read, rate, ETA) on a terminal")


@dataclass
class Counts:
    """Counts read from files, and how many keys were not what the file claims to hold."""

    counts: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def read_counts(patterns: Sequence[str], what: str, words_per_key: Optional[int] = None) -> Counts:
    """`key <TAB> count` files (ours, or precomputed ones such as wikiwords' unigram list).

    With `words_per_key`, keys are reduced to the matcher's words, as captions are, and a key that does
    not reduce to exactly that many words ("u.s", "lt br gt" in a unigram file) is dropped and counted:
    `wit build` could never match it as one. Titles keep their case (`words_per_key=None`).
    """
    out = Counts()
    for path in match_all(patterns, what):
        data = fileio.read_bytes(path).decode("utf-8", errors="replace")
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            key, sep, value = line.rpartition("\t")
            if not sep or not value.strip().isdigit():
                raise QueryInputError(f"{path}: line {number}: expected 'text<TAB>count', got {line[:80]!r}")
            if words_per_key is None:
                key = key.strip()
            else:
                found = words(key)
                if len(found) != words_per_key:
                    out.drop(f"not {words_per_key} word{'s' if words_per_key > 1 else ''}")
                    continue
                key = " ".join(found)
            if key:
                out.counts[key] = out.counts.get(key, 0) + int(value)
    return out


def _script_ok(word: str) -> bool:
    """Latin letters (English, "café") or Greek ("α", "μm"); Cyrillic, Arabic, CJK and emoticon pieces such
    as "ツ" or "ಠ" are not English words."""
    return all(not c.isalpha() or unicodedata.name(c, "").startswith(("LATIN", "GREEK")) for c in word)


def wordfreq_unigrams() -> Counts:
    """The offline default: wordfreq's English list, frequencies scaled to a Wikipedia-sized corpus.

    Kept: tokens that are one word as the matcher reads them, unchanged by its normalisation. Dropped and
    counted: wordfreq's digit placeholders ("00th", "a00", "0.0m"), tokens the matcher would split or
    rewrite ("it's", "™", "info@"), and letters of other scripts (emoticon fragments among them).
    """
    import wordfreq

    out = Counts()
    for token, freq in wordfreq.get_frequency_dict("en", wordlist="large").items():
        found = words(token)
        if _DIGIT_RUN.search(token):
            out.drop("digit placeholder")
        elif len(found) != 1 or found[0] != token:
            out.drop("not one word as matched")
        elif not _script_ok(token):
            out.drop("not Latin or Greek letters")
        else:
            out.counts[token] = out.counts.get(token, 0) + round(freq * WORDFREQ_CORPUS_TOKENS)
    return out


def resolve(inputs: QueryInputs) -> QueryInputs:
    """`--from DIR` read as the dump, pageview files and WordNet its manifest lists."""
    if not inputs.from_dir:
        return inputs
    given = [name for name in ("wikipedia", "unigrams", "bigrams", "pageviews", "wordnet") if getattr(inputs, name)]
    if given:
        inputs.refuse("from_dir", f"names every input already; drop --{given[0]}")
    fetched = downloaded_inputs(inputs.from_dir)
    return replace(inputs, wikipedia=fetched.wikipedia, pageviews=fetched.pageviews, wordnet=fetched.wordnet)


def build(opts: QueryBuildOptions, beam_args: Sequence[str] = ()) -> Result:
    t = opts.thresholds
    inputs = resolve(opts.inputs)
    if not inputs.work:
        inputs = replace(inputs, work=fileio.join(opts.out, "counts"))
    notes = []
    totals: dict = {}
    read: dict[str, Counts] = {}
    if inputs.wikipedia or inputs.pageviews:
        # A bigram counted c times has both its words counted at least c times, so unigrams under the smaller
        # threshold can go in the job: the assembler never holds every word ever seen.
        run_count(inputs.work, inputs.wikipedia, inputs.pageviews, min(t.min_word_count, t.min_bigram_count),
                  t.min_bigram_count, t.min_views, beam_args, None if opts.progress else False)
    if inputs.wikipedia:
        read["unigram"] = read_counts([fileio.join(inputs.work, "unigrams-*.tsv")], "unigram", 1)
        if FileSystems.match([fileio.join(inputs.work, "bigrams-*.tsv")])[0].metadata_list:
            read["bigram"] = read_counts([fileio.join(inputs.work, "bigrams-*.tsv")], "bigram", 2)
        totals = json.loads(fileio.read_bytes(fileio.join(inputs.work, "totals.json")))
    if inputs.unigrams:
        read["unigram"] = read_counts(inputs.unigrams, "unigram", 1)
    if inputs.bigrams:
        read["bigram"] = read_counts(inputs.bigrams, "bigram", 2)
    if "unigram" not in read or not read["unigram"].counts:
        read["unigram"] = wordfreq_unigrams()
        notes.append("no Wikipedia input given: unigram counts come from the wordfreq package's English list, "
                     f"frequencies scaled to {WORDFREQ_CORPUS_TOKENS:,} words; bigrams need --wikipedia or --bigrams")
    if inputs.pageviews:
        read["title"] = read_counts([fileio.join(inputs.work, "titles-*.tsv")], "title count")
    else:
        notes.append("no --pageviews given: no Wikipedia titles")
    lemmas = wn.read(inputs.wordnet) if inputs.wordnet else wn.shipped()
    empty = Counts()
    result = assemble(read["unigram"].counts, read.get("bigram", empty).counts, read.get("title", empty).counts,
                      lemmas, t, totals.get("words"), totals.get("pairs"))
    result.report["inputs"] = {"wikipedia": list(inputs.wikipedia), "unigrams": list(inputs.unigrams),
                               "bigrams": list(inputs.bigrams), "pageviews": list(inputs.pageviews),
                               "wordnet": inputs.wordnet or f"WordNet 3.0 head lemmas shipped with wit ({wn.SHIPPED})",
                               "from": inputs.from_dir}
    result.report["dropped_from_counts"] = {kind: c.dropped for kind, c in read.items() if c.dropped}
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
    for kind, reasons in r.get("dropped_from_counts", {}).items():
        lines.append(f"  dropped from the {kind} counts: " + ", ".join(f"{n:,} {why}" for why, n in reasons.items()))
    if r["short_by"]:
        lines.append(f"WARNING: {r['short_by']:,} short of the target: the inputs hold too few entries")
    lines += [f"NOTE: {n}" for n in r["notes"]]
    return "\n".join(lines)
