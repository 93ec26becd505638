"""The synthetic web's vocabulary: coloured shapes on textured backgrounds.

Concepts are (colour, shape) pairs whose frequencies follow a Zipf law, so a
few queries match far more captions than the per-query cap and balancing has
real work to do; the queries are the colours, shapes, textures and
"colour shape" phrases, plus a few that occur nowhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (240, 220, 30),
    "orange": (250, 140, 20), "purple": (140, 40, 170), "pink": (250, 130, 190), "brown": (120, 70, 30),
    "black": (15, 15, 15), "white": (245, 245, 245), "grey": (128, 128, 128), "cyan": (30, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon", "ellipse", "arrow")
TEXTURES = ("plain", "striped", "dotted", "checkered", "noisy", "gradient")
SIZES = ("small", "large", "tiny", "big")
ABSENT_QUERIES = ("giraffe", "violin", "cathedral", "red giraffe", "quantum chromodynamics")

TEMPLATES = (
    "a {colour} {shape}",
    "a photo of a {colour} {shape}",
    "{colour} {shape} on a {texture} background",
    "a {size} {colour} {shape}",
    "my drawing of a {shape}. It is {colour}!",
    "{Colour} {shape}, {texture} backdrop",
    "clip art: {shape} ({colour})",
    "a {colour} {shape} with a {texture} pattern behind it",
)
NO_MATCH_CAPTIONS = (
    "IMG_{n:04d}.JPG", "click here to download", "untitled", "lorem ipsum dolor sit amet",
    "photo {n}", "DSC{n:05d}", "thumbnail", "image not available",
)


@dataclass(frozen=True)
class Concept:
    colour: str
    shape: str


def concepts(seed: int) -> list[Concept]:
    """All concepts in Zipf rank order (a seeded permutation)."""
    items = [Concept(c, s) for c in COLOURS for s in SHAPES]
    random.Random(f"concepts-{seed}").shuffle(items)
    return items


def zipf_weights(n: int, exponent: float = 1.1) -> list[float]:
    return [1.0 / (rank ** exponent) for rank in range(1, n + 1)]


def caption_for(concept: Concept, texture: str, rng: random.Random) -> str:
    template = rng.choice(TEMPLATES)
    return template.format(colour=concept.colour, Colour=concept.colour.capitalize(), shape=concept.shape,
                           texture=texture, size=rng.choice(SIZES))


def no_match_caption(rng: random.Random) -> str:
    return rng.choice(NO_MATCH_CAPTIONS).format(n=rng.randrange(100000))


def query_list() -> list[str]:
    """The synthetic web's query list, in a fixed order."""
    queries = list(COLOURS) + list(SHAPES) + [t for t in TEXTURES if t != "plain"]
    queries += [f"{c} {s}" for c in COLOURS for s in SHAPES]
    return queries + list(ABSENT_QUERIES)
