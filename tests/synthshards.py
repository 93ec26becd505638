"""Real-format shards of synthetic drawings written directly, without the web or Beam.

For the trainer's tests and bench/train_step.py, which need shards of a given
size quickly; the bytes are what `wit build` writes (wit.core.shardformat.write_shard).
"""

from __future__ import annotations

import random

from pipelines.resize import ResizeOptions, resize_image
from wit.core import shardformat
from wit.synthweb import draw
from wit.synthweb.vocab import COLOURS, SHAPES, Concept, caption_for


def write_shards(out: str, n_shards: int = 2, per_shard: int = 16, seed: int = 0, image_size: int = 64,
                concepts: list[Concept] | None = None) -> list[str]:
    """Writes OUT/shards/0000N.{tar,parquet} and returns the tar paths; captions name the drawing's concept."""
    concepts = concepts or [Concept(c, s) for c in COLOURS for s in SHAPES]
    rng = random.Random(seed)
    opts = ResizeOptions(image_size=image_size)
    for shard in range(n_shards):
        samples = []
        for i in range(per_shard):
            n = shard * per_shard + i
            concept = concepts[n % len(concepts)]
            jpg = resize_image(draw.encode(draw.render(draw.make_drawing(seed, n, concept))), opts).jpeg
            samples.append(shardformat.Sample(key=shardformat.key_for(shard, i, per_shard), uid=f"u{n}",
                                              url=f"http://example.test/{n}.jpg",
                                              caption=caption_for(concept, "plain", rng), jpg=jpg))
        shardformat.write_shard(out, shard, samples)
    return [shardformat.paths(out, s).tar for s in range(n_shards)]
