"""Streaming article text out of a MediaWiki XML export (pages-articles .xml or .xml.bz2).

The dump is never loaded whole: pages are parsed one at a time with
iterparse and cleared, and wikitext is reduced to plain text by
mwparserfromhell. Only main-namespace articles (ns 0) that are not
redirects are yielded.
"""

from __future__ import annotations

import bz2
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Optional

import mwparserfromhell

from queries.errors import QueryInputError


@dataclass(frozen=True)
class Page:
    title: str
    text: str


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


_NOT_PROSE = frozenset({"ref", "references", "gallery", "math", "chem", "score", "timeline", "syntaxhighlight",
                        "source", "code", "pre", "imagemap", "mapframe", "graph"})


def plain_text(wikitext: str) -> str:
    """Wikitext without markup, templates, citations, tables or link targets."""
    code = mwparserfromhell.parse(wikitext)
    for tag in code.filter_tags(recursive=True):
        if str(tag.tag).strip().lower() in _NOT_PROSE:
            try:
                code.remove(tag)
            except ValueError:
                pass  # already removed with an enclosing tag
    return code.strip_code(normalize=True, collapse=True)


def iter_pages(stream: BinaryIO, path: str, on_page: Optional[Callable[[], None]] = None) -> Iterator[Page]:
    """Pages of one dump stream; errors name `path` and the last good page. `on_page` is called after
    every page, articles or not (progress)."""
    last = None
    try:
        for _event, elem in ET.iterparse(stream, events=("end",)):
            if _local(elem.tag) != "page":
                continue
            fields = {_local(child.tag): child for child in elem}
            title = fields.get("title")
            if title is None or not title.text:
                raise QueryInputError(f"{path}: a <page> without <title> (after page {last!r})")
            ns = fields.get("ns")
            redirect = "redirect" in fields
            revision = fields.get("revision")
            text_elem = None
            if revision is not None:
                text_elem = next((c for c in revision if _local(c.tag) == "text"), None)
            if (ns is None or ns.text == "0") and not redirect and text_elem is not None and text_elem.text:
                yield Page(title.text, plain_text(text_elem.text))
            last = title.text
            elem.clear()
            if on_page is not None:
                on_page()
    except ET.ParseError as e:
        line, column = e.position
        raise QueryInputError(f"{path}: malformed XML at line {line}, column {column} (after page {last!r})") from e
    except (EOFError, OSError) as e:
        raise QueryInputError(f"{path}: truncated or corrupt compressed stream (after page {last!r}): {e}") from e


def read_dump(path: str, on_bytes: Optional[Callable[[int], None]] = None) -> Iterator[Page]:
    """Open a dump through Beam FileSystems; .bz2 (multistream too) is decompressed here. `on_bytes` hears,
    after each page, how far into the file (as stored) reading has come."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    with raw:
        stream = bz2.BZ2File(raw) if path.endswith(".bz2") else raw
        yield from iter_pages(stream, path, (lambda: on_bytes(raw.tell())) if on_bytes else None)
