"""The query builder's counting job on a realistic MediaWiki dump, projected to the full English Wikipedia.

The dump is generated offline with the markup real articles carry: an infobox
(20-40 parameters, links and templates inside), lead and section prose with
wikilinks every dozen words, citations as `<ref>{{cite web|...}}</ref>` every
few sentences, wikitables, image thumbnails with captions, bullet lists,
navboxes, `{{reflist}}` and categories. Article sizes are log-normal (median
about 5 KB, mean about 10 KB of wikitext, a long tail to 200 KB), and 40% of
the pages are redirects, as in `pages-articles`. Words follow Zipf over a real
word list (the shared Wikipedia unigram counts when present, else wordfreq's).
It is written as multistream parts (100 pages a bz2 stream), as the dump site
publishes them, to at least `--mb` MB of bz2.

Measured, both on this machine:
1. `count_dump` (bz2, XML, mwparserfromhell, word and bigram counts: the work
   of the job's FlatMap) over every part, one process per core: pages/s/core.
2. The whole Beam job (`queries.count.run_count`, in-process DirectRunner) on
   one part, against `count_dump` alone on the same part: the factor Beam's
   combine, shuffle and writes add.
The projection multiplies them out for 7 million articles, and cross-checks
by size (about 24 GB of bz2), with the arithmetic printed.

    python bench/querycount.py [--mb 100] [--workers 2] [--work /tmp/wit-querycount]
"""

from __future__ import annotations

import argparse
import bz2
import itertools
import math
import os
import random
import resource
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from queries.count import count_dump, run_count  # noqa: E402

SHARED = Path(HERE).parents[1] / "shared" / "data" / "enwiki-2012-unigram-counts.tsv"
FULL_ARTICLES, FULL_BZ2_GB = 7_000_000, 24
REDIRECT_SHARE = 0.4
PAGES_PER_STREAM = 100
HEAD = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" xml:lang="en">\n'
        '  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <dbname>enwiki</dbname>\n  </siteinfo>\n')


def vocabulary(limit: int = 100_000) -> tuple[list[str], list[float]]:
    if SHARED.exists():
        rows = [line.split("\t") for line in SHARED.read_text().splitlines()[:limit]]
        words = [w for w, _ in rows]
    else:
        import wordfreq
        words = [w for w in wordfreq.top_n_list("en", limit, wordlist="large") if w.isalpha()]
    weights = [1.0 / (rank + 1) for rank in range(len(words))]  # Zipf, s = 1
    return words, weights


class Writer:
    """Wikitext of one article at a time, from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.words, weights = vocabulary()
        self.cum = list(itertools.accumulate(weights))

    def phrase(self, n: int) -> str:
        return " ".join(self.rng.choices(self.words, cum_weights=self.cum, k=n))

    def title(self) -> str:
        return self.phrase(self.rng.randint(1, 3)).title()

    def link(self) -> str:
        target = self.title()
        return f"[[{target}|{self.phrase(self.rng.randint(1, 2))}]]" if self.rng.random() < 0.4 else f"[[{target}]]"

    def cite(self) -> str:
        r = self.rng
        name, site = r.randint(1, 99999), r.choice(["com", "org"])  # in this order: the dump stays the same
        return (f"<ref name=\"r{name}\">{{{{cite web |url=https://www.example.{site}/"
                f"{self.phrase(3).replace(' ', '-')} |title={self.phrase(r.randint(3, 9))} |last={self.title()} "
                f"|first={self.title()} |date={r.randint(1995, 2024)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} "
                f"|website={self.title()} |access-date=2024-0{r.randint(1, 9)}-1{r.randint(0, 9)}}}}}</ref>")

    def sentence(self) -> str:
        r = self.rng
        parts = []
        for _ in range(r.randint(2, 4)):
            parts.append(self.phrase(r.randint(3, 9)))
            if r.random() < 0.6:
                parts.append(self.link())
        text = " ".join(parts)
        text = text[0].upper() + text[1:] + "."
        if r.random() < 0.3:
            text += self.cite()
        return text

    def paragraph(self) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(2, 7)))

    def infobox(self, name: str) -> str:
        r = self.rng
        rows = [f"| {self.phrase(1)}_{i} = {self.phrase(r.randint(1, 4))} {self.link() if r.random() < 0.5 else ''}"
                for i in range(r.randint(20, 40))]
        return "{{Infobox " + self.phrase(1) + f"\n| name = {name}\n| image = {self.title()}.jpg\n" + \
            "\n".join(rows) + "\n}}\n"

    def table(self) -> str:
        r = self.rng
        cols = r.randint(3, 6)
        head = "! " + " !! ".join(self.phrase(1).title() for _ in range(cols))
        rows = ["|-\n| " + " || ".join(self.link() if r.random() < 0.3 else str(r.randint(1, 9999))
                                       for _ in range(cols)) for _ in range(r.randint(5, 25))]
        return '{| class="wikitable sortable"\n|+ ' + self.phrase(4) + "\n" + head + "\n" + "\n".join(rows) + "\n|}\n"

    def article(self, name: str, target_bytes: int) -> str:
        r = self.rng
        out = [self.infobox(name) if r.random() < 0.6 else "{{Short description|" + self.phrase(4) + "}}\n",
               f"'''{name}''' is {self.paragraph()}\n\n"]
        size = sum(map(len, out))
        while size < target_bytes:
            block = r.random()
            if block < 0.15:
                piece = f"\n== {self.phrase(r.randint(1, 3)).title()} ==\n"
            elif block < 0.22:
                piece = f"[[File:{self.title()}.jpg|thumb|{self.phrase(r.randint(4, 12))}]]\n"
            elif block < 0.28:
                piece = self.table()
            elif block < 0.36:
                piece = "\n".join(f"* {self.link()} {self.phrase(r.randint(2, 8))}" for _ in range(r.randint(3, 9)))
                piece += "\n"
            else:
                piece = self.paragraph() + "\n\n"
            out.append(piece)
            size += len(piece)
        out.append("\n== References ==\n{{reflist}}\n\n{{Navbox " + self.phrase(1) + "}}\n")
        out += [f"[[Category:{self.title()}]]\n" for _ in range(r.randint(2, 8))]
        return "".join(out)


def page_xml(title: str, pid: int, text: str, redirect: str | None = None) -> str:
    red = f'    <redirect title="{escape(redirect)}" />\n' if redirect else ""
    return (f"  <page>\n    <title>{escape(title)}</title>\n    <ns>0</ns>\n    <id>{pid}</id>\n{red}"
            f"    <revision>\n      <id>{pid * 7}</id>\n      <timestamp>2024-01-01T00:00:00Z</timestamp>\n"
            f"      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
            f'      <text bytes="{len(text)}" xml:space="preserve">{escape(text)}</text>\n    </revision>\n'
            f"  </page>\n")


def write_part(args: tuple[str, int, int]) -> tuple[str, int, int, int]:
    """One multistream part of about `bz2_bytes`: (path, articles, redirects, wikitext bytes)."""
    path, seed, bz2_bytes = args
    w = Writer(seed)
    rng = w.rng
    articles = redirects = text_bytes = 0
    pid = seed * 10_000_000
    written = 0
    with open(path + ".tmp", "wb") as f:
        stream = [HEAD]
        while written < bz2_bytes:
            pid += 1
            name = f"{w.title()} {pid}"
            if rng.random() < REDIRECT_SHARE:
                stream.append(page_xml(name, pid, f"#REDIRECT [[{w.title()}]]", redirect=w.title()))
                redirects += 1
            else:
                size = min(200_000, int(rng.lognormvariate(math.log(5_000), 1.15)))
                text = w.article(name, size)
                text_bytes += len(text)
                stream.append(page_xml(name, pid, text))
                articles += 1
            if (articles + redirects) % PAGES_PER_STREAM == 0:
                block = bz2.compress("".join(stream).encode())
                f.write(block)
                written += len(block)
                stream = []
        stream.append("</mediawiki>\n")
        f.write(bz2.compress("".join(stream).encode()))
    os.replace(path + ".tmp", path)
    return path, articles, redirects, text_bytes


def generate(work: Path, mb: float, workers: int) -> list[tuple[str, int, int, int]]:
    work.mkdir(parents=True, exist_ok=True)
    parts = max(workers, 4)
    jobs = [(str(work / f"enwiki-20261101-pages-articles-multistream{i + 1}.xml-p{i}p{i}.bz2"), i + 1,
             int(mb * 1e6 / parts)) for i in range(parts)]
    if all(os.path.exists(j[0]) for j in jobs) and os.path.exists(work / "parts.txt"):
        return [tuple(line.split("\t")[:1]) + tuple(map(int, line.split("\t")[1:]))
                for line in (work / "parts.txt").read_text().splitlines()]
    with ProcessPoolExecutor(workers) as pool:
        made = list(pool.map(write_part, jobs))
    (work / "parts.txt").write_text("".join("\t".join(map(str, m)) + "\n" for m in made))
    return made


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def count_part(path: str) -> tuple[int, float]:
    """count_dump over one part in this process: (pages counted, CPU seconds)."""
    start = time.process_time()
    pages = sum(1 for item in count_dump(path) if getattr(item, "tag", None) == "totals")
    return pages, time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=100.0, help="MB of bz2 to generate (default 100)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--work", default="/tmp/wit-querycount")
    ap.add_argument("--keep", action="store_true", help="keep the generated dump for the next run")
    args = ap.parse_args()
    work = Path(args.work)

    t0 = time.time()
    made = generate(work, args.mb, args.workers)
    bz2_bytes = sum(os.path.getsize(m[0]) for m in made)
    articles, redirects, text_bytes = (sum(m[i] for m in made) for i in (1, 2, 3))
    print(f"dump: {len(made)} parts, {bz2_bytes / 1e6:.1f} MB bz2, {articles:,} articles + {redirects:,} redirects, "
          f"{text_bytes / 1e6:.1f} MB of article wikitext (mean {text_bytes / articles / 1e3:.1f} KB), "
          f"bz2 {bz2_bytes / max(1, articles + redirects) / 1e3:.2f} KB/page; made in {time.time() - t0:.0f} s")

    # 1. count_dump over every part, one process per core
    t0, c0 = time.time(), cpu_children()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(count_part, [m[0] for m in made]))
    wall, cpu_pool = time.time() - t0, cpu_children() - c0
    counted = sum(p for p, _ in results)
    cpu_count = sum(c for _, c in results)
    assert counted == articles, (counted, articles)
    print(f"count_dump: {articles:,} articles in {cpu_count:.1f} CPU-s ({cpu_pool:.1f} CPU-s with process start), "
          f"{wall:.1f} s wall on {args.workers} processes: {articles / cpu_count:,.0f} articles/s/core "
          f"({(articles + redirects) / cpu_count:,.0f} pages/s/core, {text_bytes / cpu_count / 1e6:.2f} MB "
          f"wikitext/s/core)")

    # 2. the Beam job on one part, against count_dump alone on it
    part, part_articles = made[0][0], made[0][1]
    _, alone = count_part(part)
    out = work / "job"
    shutil.rmtree(out, ignore_errors=True)
    c0 = cpu_self() + cpu_children()
    t0 = time.time()
    run_count(str(out), [part], (), 100, 100, 1, ["--runner=DirectRunner"])
    job = cpu_self() + cpu_children() - c0
    factor = job / alone
    written = sum(1 for p in out.glob("unigrams-*.tsv") for _ in p.open())
    bigrams = sum(1 for p in out.glob("bigrams-*.tsv") for _ in p.open())
    print(f"Beam job on part 1 ({part_articles:,} articles): {job:.1f} CPU-s vs {alone:.1f} CPU-s for count_dump "
          f"alone: factor {factor:.2f}; {written:,} unigrams and {bigrams:,} bigrams written at count >= 100 "
          f"({time.time() - t0:.0f} s wall)")

    # projection: the redirects' cost (XML only) rides in the per-article figure
    per_article_ms = cpu_count / articles * 1e3
    hours = FULL_ARTICLES * per_article_ms / 1e3 * factor / 3600
    by_bytes = FULL_BZ2_GB * 1e9 / bz2_bytes * cpu_count * factor / 3600
    print("projection to the full English Wikipedia:")
    print(f"  {FULL_ARTICLES:,} articles x {per_article_ms:.2f} ms (count_dump, redirects' share included) "
          f"x {factor:.2f} (Beam) / 3600 = {hours:,.1f} vCPU-hours")
    print(f"  cross-check by size: {FULL_BZ2_GB} GB of bz2 / {bz2_bytes / 1e9:.3f} GB x {cpu_count:.0f} CPU-s "
          f"x {factor:.2f} / 3600 = {by_bytes:,.1f} vCPU-hours")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
