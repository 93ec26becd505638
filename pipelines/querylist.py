"""The query list as the build reads it: one query per line, its id the line's number.

`wit queries build` writes it (a TSV whose first field is the query); a user's
own list is plain text. The matcher, the run stats and the build's checks all
read it through here, so a query's id is the same everywhere.
"""

from __future__ import annotations

import unicodedata
from typing import Optional

from wit.core.errors import InputError


def read_queries(path: str) -> list[str]:
    """One query per line; in a TSV (the query builder's output) the first field.

    A query's id is its 0-based line number, so ids stay stable and map back
    to the file with `sed -n "$((id+1))p"`. Blank lines keep their number.
    """
    return decode_queries(read_bytes(path), path)


def read_bytes(path: str) -> bytes:
    """The list's bytes; a compressed list (by its extension) decompressed."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        return f.read()


def decode_queries(data: bytes, path: str) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: query file is not UTF-8 (byte {e.start})") from e
    # Lines end at "\n" (or "\r\n") only: str.splitlines also breaks at U+2028, form feeds, file separators and
    # NEL, which would shift the id of every later query.
    lines = text.removeprefix("\ufeff").split("\n")  # a byte-order mark is no part of the first query
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it starts none
    return [line.removesuffix("\r").split("\t", 1)[0].strip() for line in lines]


def control_characters(queries: list[str], path: str) -> Optional[str]:
    """A line naming the first query that holds a control character, which is kept inside it, if any."""
    for number, q in enumerate(queries, 1):
        bad = next((c for c in q if unicodedata.category(c) in ("Cc", "Zl", "Zp") and c != "\t"), None)
        if bad is not None:
            return (f"{path}: line {number}: the query holds control character U+{ord(bad):04X}; it is kept "
                    f"inside that query (ids are line numbers)")
    return None
