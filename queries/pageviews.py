"""Wikipedia page views from the public pageview dumps.

Lines read `domain_code page_title count_views total_response_size`; only the
wanted domains (English Wikipedia: `en`, and its mobile site `en.m`) count.
Titles in a namespace (Category:, File:, Talk:, ...) are not articles and are
skipped; "Star Wars: Episode IV" is kept, as its prefix is no namespace.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional
from urllib.parse import unquote

NAMESPACES = frozenset(n.lower() for n in (
    "Media", "Special", "Talk", "User", "User talk", "Wikipedia", "Wikipedia talk", "WP", "File", "File talk",
    "Image", "MediaWiki", "MediaWiki talk", "Template", "Template talk", "Help", "Help talk", "Category",
    "Category talk", "Portal", "Portal talk", "Draft", "Draft talk", "TimedText", "TimedText talk", "Module",
    "Module talk", "Book", "Book talk", "Education Program", "Gadget", "Gadget definition", "Topic", "Project",
))


def article_title(raw: str) -> Optional[str]:
    """The display title of an article, or None for namespaced and special pages."""
    title = unquote(raw) if "%" in raw else raw
    title = title.replace("_", " ").strip()
    if not title:
        return None
    prefix, sep, _ = title.partition(":")
    if sep and prefix.strip().lower() in NAMESPACES:
        return None
    return title


def parse_lines(lines: Iterable[str], domains: tuple[str, ...] = ("en", "en.m")) -> Iterator[tuple[str, int]]:
    """(title, views) for the wanted domains; malformed lines are skipped by the caller's count."""
    for line in lines:
        parts = line.split(" ")
        if len(parts) < 3 or parts[0] not in domains:
            continue
        try:
            views = int(parts[2])
        except ValueError:
            continue
        title = article_title(parts[1])
        if title is not None:
            yield title, views
