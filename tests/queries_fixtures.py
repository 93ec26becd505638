"""Small inputs in the real formats: a MediaWiki export, pageview dumps, a WordNet 3.0 database."""

from __future__ import annotations

import bz2
from pathlib import Path
from xml.sax.saxutils import escape

EXPORT_HEAD = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" '
               'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="0.10" xml:lang="en">\n'
               '  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <dbname>enwiki</dbname>\n'
               '    <namespaces>\n      <namespace key="0" case="first-letter" />\n'
               '      <namespace key="14" case="first-letter">Category</namespace>\n    </namespaces>\n'
               '  </siteinfo>\n')


def page(title: str, text: str, ns: int = 0, pid: int = 1, redirect: str | None = None) -> str:
    red = f'    <redirect title="{escape(redirect)}" />\n' if redirect else ""
    return (f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>{pid}</id>\n{red}"
            f"    <revision>\n      <id>{pid * 10}</id>\n      <timestamp>2024-01-01T00:00:00Z</timestamp>\n"
            f"      <contributor><username>Bot</username><id>1</id></contributor>\n"
            f'      <model>wikitext</model>\n      <format>text/x-wiki</format>\n'
            f'      <text bytes="{len(text)}" xml:space="preserve">{escape(text)}</text>\n'
            f"    </revision>\n  </page>\n")


def write_dump(path: Path, pages: list[str], compress: bool = True) -> Path:
    xml = EXPORT_HEAD + "".join(pages) + "</mediawiki>\n"
    if compress:
        path.write_bytes(bz2.compress(xml.encode()))
    else:
        path.write_text(xml)
    return path


ARTICLE = (
    "'''New York''' is a city. {{Infobox city|name=New York}} The [[ice cream|ice cream]] "
    "in [[New York]] is famous.<ref>A source</ref>\n"
    "Ice cream and hot dogs. New York has ice cream. The city has a park.\n"
    "== History ==\nThe city of New York grew. Ice cream came later. Zebra crossing.\n"
)


def standard_dump(path: Path, copies: int = 30) -> Path:
    pages = [page(f"Article {i}", ARTICLE, pid=i + 1) for i in range(copies)]
    pages.append(page("Category:Cities", "[[Category:Cities]] city city city city", ns=14, pid=900))
    pages.append(page("NYC", "#REDIRECT [[New York]]", pid=901, redirect="New York"))
    return write_dump(path, pages)


def write_pageviews(directory: Path) -> list[Path]:
    files = []
    hours = [
        ["en New_York 600 0", "en Ice_cream 300 0", "en Category:Cities 5000 0", "en Talk:New_York 900 0",
         "de New_York 9999 0", "en Star_Wars:_Episode_IV 700 0", "en.m Ice_cream 250 0", "en Obscure_page 3 0",
         "en Hot%20dog 1200 0", "garbage line", "en Bad_count x 0"],
        ["en New_York 500 0", "en Ice_cream 100 0", "en Zebra 50 0"],
    ]
    for i, lines in enumerate(hours):
        p = directory / f"pageviews-20240101-0{i}0000"
        p.write_text("\n".join(lines) + "\n")
        files.append(p)
    return files


WORDNET_HEADER = "  1 This software and database is being provided to you, the LICENSEE, by\n  2 Princeton University\n"


def write_wordnet(directory: Path, skip: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        "data.noun": ["00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived",
                      "07609840 13 n 02 ice_cream 0 icecream 0 001 @ 07609660 n 0000 | frozen dessert",
                      "02391049 05 n 01 zebra 0 001 @ 02390101 n 0000 | striped equine",
                      "08679972 15 n 02 city 0 metropolis 0 000 | a large town",
                      "09119277 15 n 01 New_York 0 000 | the largest city"],
        "data.verb": ["01835496 38 v 02 swim 0 float 0 000 01 + 08 00 | travel through water"],
        "data.adj": ["00001740 00 a 01 able(a) 0 000 | having the necessary means"],
        "data.adv": ["00001740 02 r 01 quickly 0 000 | with speed"],
    }
    for name, lines in data.items():
        if name != skip:
            (directory / name).write_text(WORDNET_HEADER + "\n".join(lines) + "\n")
    return directory
