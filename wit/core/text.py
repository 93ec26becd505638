"""Text normalisation shared by the query builder, the matcher and the trainer.

Two forms exist on purpose: `clean_caption` keeps what a person wrote (it goes
into the shards), `match_form` is the lossy form both queries and captions are
reduced to before matching, so that "Red-Circle!" matches the query "red circle".
"""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200b-\u200f\u2028\u2029\ufeff]")
_SPACE = re.compile(r"\s+")
# Anything that is not a letter, digit or combining mark separates words.
_NON_WORD = re.compile(r"[^\w]+|_+")


# ASCII control characters that str.split() does not already take as spaces.
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x7f]")


def clean_caption(text: str) -> str:
    """NFC, no control/zero-width characters, single spaces, stripped."""
    if text.isascii():  # most captions: NFC is the identity, and split() knows the rest of the spaces
        return " ".join(_ASCII_CONTROL.sub(" ", text).split())
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def match_form(text: str) -> str:
    """Casefolded NFKC words joined by single spaces: the form queries are matched in."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _NON_WORD.sub(" ", text).strip()
