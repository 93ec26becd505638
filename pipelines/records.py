"""The records that cross the build's steps, each named once, here.

Beam carries a record between steps as the plain tuple of its fields: a
NamedTuple or a dataclass would be pickled with its class, several times
slower per element (the shuffle-heavy steps move billions of them). So each
record has a NamedTuple that names its fields, for code that builds or reads
one at a time, and a namespace of field positions (`PAIR.MATCHED`), for the
hot loops that read the plain tuple. The id lists a pair carries are one
bytes object (`pack_ids`), not a tuple of a dozen ints, for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from wit.core.errors import ErrorKind
from wit.core.shardformat import Status


def positions(record: type) -> SimpleNamespace:
    """The position of each of a NamedTuple's fields in its plain tuple, by the field's name in capitals."""
    return SimpleNamespace(**{name.upper(): i for i, name in enumerate(record._fields)})


# ---------------------------------------------------------------- the plan: candidates that matched

class Pair(NamedTuple):
    """A candidate whose caption matched: what the plan's stages carry instead of the candidate."""

    caption: str
    url: str
    matched: bytes  # the matched query ids, `pack_ids`ed (`ids_of` reads them)
    file: int = -1  # the candidate's input file, as its index in the build's sorted file list
    row: int = -1  # and its row there: the plan and the shards name both, so every sample leads to its row
    additional: tuple = ()  # the values of `wit build --save-additional-columns`, in their order


PAIR = positions(Pair)


class Selected(NamedTuple):
    """A pair the balancing kept, with the ids of the queries that selected it, ascending."""

    uid: str
    pair: tuple  # a `Pair`'s plain tuple
    selecting: tuple[int, ...]


SELECTED = positions(Selected)


def pack_ids(ids: Iterable[int]) -> bytes:
    """Query ids as a pair carries them: int32, little-endian. Every shuffle of the plan pickles and
    unpickles each pair, and pays per object (bench/scale.py)."""
    return np.fromiter(ids, "<i4").tobytes()


def ids_of(packed: bytes) -> np.ndarray:
    return np.frombuffer(packed, "<i4")


def id_count(packed: bytes) -> int:
    """How many ids one `pack_ids` output holds."""
    return len(packed) >> 2


def id_counts(packed: Sequence[bytes]) -> np.ndarray:
    """How many ids each of `pack_ids`'s outputs holds."""
    return np.fromiter(map(len, packed), np.int32, len(packed)) >> 2


# ---------------------------------------------------------------- the download: images

class ImageInfo(NamedTuple):
    """What image dedup needs to know of one successfully fetched sample. The uid is hexadecimal (a hash
    of the URL), so that it orders as a number."""

    uid: str
    key: str
    shard: int
    sha256: str
    phash: int
    pixels: int

    @property
    def rank(self) -> tuple[int, str]:
        """Smaller is better: more original pixels first, then the uid."""
        return (-self.pixels, self.uid)


IMAGE = positions(ImageInfo)


@dataclass(frozen=True)
class EvalImage:
    """An image of an evaluation set that no dataset image may be near."""

    source: str  # the evaluation set's name
    key: str
    phash: int


class Verdict(NamedTuple):
    """A downloaded image the writer turns into a dropped sample; `duplicate_of` names the image it is
    dropped for (a kept sample's key, or an evaluation image's SET/KEY); `degenerate` says image dedup's
    bounded rule found it; `source` is the evaluation set of an `EVAL_DUPLICATE`."""

    uid: str
    status: Status
    kind: ErrorKind
    message: str
    duplicate_of: str
    degenerate: bool = False
    source: str = ""
