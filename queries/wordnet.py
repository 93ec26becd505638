"""WordNet synsets' head lemmas, from the WordNet 3.0 database, a WN-LMF XML file, or the shipped list.

The database directory is what Debian's `wordnet-base` installs at
/usr/share/wordnet (data.noun, data.verb, data.adj, data.adv). A synset's head
lemma is its first word; underscores become spaces and adjective markers
such as "(a)" are dropped. Each lemma is kept once, where it first occurs.

The query builder needs nothing else of WordNet, so the head lemmas of WordNet
3.0 ship with wit (`queries/data`, 400 KB, under WordNet's licence, which
permits redistribution with its notice): the offline default needs no system
package and no download.
"""

from __future__ import annotations

import gzip
import os
import re
import xml.etree.ElementTree as ET
from importlib import resources
from typing import Iterable

from queries.errors import QueryInputError

DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
SHIPPED = "wordnet-3.0-heads.txt.gz"
_MARKER = re.compile(r"\((a|p|ip)\)$")


def _lemma(word: str) -> str:
    return _MARKER.sub("", word).replace("_", " ").strip()


def read_database(directory: str) -> list[str]:
    """Head lemmas in file then offset order (each file is sorted by offset)."""
    lemmas = []
    for name in DATA_FILES:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            raise QueryInputError(f"{path}: missing WordNet data file (expected {', '.join(DATA_FILES)})")
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if line.startswith("  ") or not line.strip():
                    continue  # licence header
                fields = line.split(" ", 5)
                if len(fields) < 6 or not fields[0].isdigit():
                    raise QueryInputError(f"{path}: line {number}: not a WordNet data line")
                try:
                    int(fields[3], 16)
                except ValueError as e:
                    raise QueryInputError(f"{path}: line {number}: bad word count {fields[3]!r}") from e
                lemmas.append(_lemma(fields[4]))
    return _once(lemmas)


def _once(lemmas: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(lemma for lemma in lemmas if lemma))


def read_lmf(path: str) -> list[str]:
    """Head lemmas from a WN-LMF file: each synset's first member (or first sense seen)."""
    entries: dict[str, str] = {}
    heads: dict[str, str] = {}
    order: list[str] = []
    members: dict[str, list[str]] = {}
    try:
        for _event, elem in ET.iterparse(path, events=("end",)):
            if elem.tag == "LexicalEntry":
                lemma = elem.find("Lemma")
                if lemma is None:
                    continue
                form = lemma.get("writtenForm", "")
                entries[elem.get("id", "")] = form
                for sense in elem.findall("Sense"):
                    heads.setdefault(sense.get("synset", ""), form)
                elem.clear()
            elif elem.tag == "Synset":
                order.append(elem.get("id", ""))
                if elem.get("members"):
                    members[elem.get("id", "")] = elem.get("members", "").split()
    except ET.ParseError as e:
        raise QueryInputError(f"{path}: malformed WN-LMF XML at line {e.position[0]}") from e
    except FileNotFoundError as e:
        raise QueryInputError(f"{path}: no such WN-LMF file") from e
    out = []
    for sid in order:
        head = entries.get(members[sid][0]) if sid in members and members[sid] else heads.get(sid)
        if head:
            out.append(_lemma(head))
    return _once(out)


def write_heads(lemmas: Iterable[str], path: str) -> None:
    """The shipped list's format: one lemma a line, gzip without a timestamp so rebuilds are byte-identical."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
        f.write("".join(f"{lemma}\n" for lemma in _once(lemmas)).encode())


def shipped() -> list[str]:
    """WordNet 3.0's head lemmas as shipped with wit (made with `write_heads(read_database(DIR), ...)`)."""
    data = resources.files("queries").joinpath("data", SHIPPED).read_bytes()
    return gzip.decompress(data).decode().splitlines()


def read(path: str) -> list[str]:
    if os.path.isdir(path):
        return read_database(path)
    if os.path.exists(path):
        return read_lmf(path)
    raise QueryInputError(f"{path}: no WordNet database directory or WN-LMF file there")
