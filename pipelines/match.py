"""Matching captions against the query list with an Aho-Corasick automaton.

Queries and captions are both reduced to `match_form` (casefolded words joined
by single spaces) and padded with a space on each side, so a substring hit of
" red circle " is exactly a whole-word/phrase match: "circles" never matches
"circle". Overlapping hits are all reported ("red circle" and "circle").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import ahocorasick

from wit.text import match_form


def read_queries(path: str) -> list[str]:
    """One query per line; in a TSV (the query builder's output) the first field.

    A query's id is its 0-based line number, so ids stay stable and map back
    to the file with `sed -n "$((id+1))p"`. Blank lines keep their number.
    """
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: query file is not UTF-8 (byte {e.start})") from e
    return [line.split("\t", 1)[0].strip() for line in text.splitlines()]


@dataclass
class QueryMatcher:
    queries: Sequence[str]

    def __post_init__(self) -> None:
        automaton = ahocorasick.Automaton(ahocorasick.STORE_ANY, ahocorasick.KEY_STRING)
        ids: dict[str, list[int]] = {}
        for qid, query in enumerate(self.queries):
            form = match_form(query)
            if form:
                ids.setdefault(f" {form} ", []).append(qid)
        for key, qids in ids.items():
            automaton.add_word(key, tuple(qids))
        if ids:
            automaton.make_automaton()
        self._automaton = automaton
        self._empty = not ids

    def match(self, caption: str) -> tuple[int, ...]:
        """Sorted ids of every query occurring in the caption as whole words."""
        if self._empty:
            return ()
        found: set[int] = set()
        for _end, qids in self._automaton.iter(f" {match_form(caption)} "):
            found.update(qids)
        return tuple(sorted(found))


_CACHE: dict[str, QueryMatcher] = {}


def matcher_for(path: str) -> QueryMatcher:
    """One automaton per process and query file: Beam may create many DoFn instances."""
    if path not in _CACHE:
        _CACHE[path] = QueryMatcher(read_queries(path))
    return _CACHE[path]
