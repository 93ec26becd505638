"""The synthetic web's content: which URL serves what, with the real web's faults.

A site is a pure function of (seed, number of candidates): every URL encodes
what it serves, so the server needs no state and a candidate list can be
regenerated exactly. Each row also carries its ground truth (fault, image id,
concept) for tests and for judging the demo's result.
"""

from __future__ import annotations

import io
import random
from dataclasses import asdict, dataclass
from functools import lru_cache

from PIL import Image

from wit.synthweb import draw
from wit.synthweb.vocab import Concept, caption_for, concepts, no_match_caption, query_list, zipf_weights

# Share of candidate rows with each fault; the rest are plain, working images.
FAULTS: dict[str, float] = {
    "http_404": 0.03, "http_500": 0.02, "slow": 0.02, "truncated": 0.02, "html": 0.02, "redirect": 0.03,
    "noai": 0.02, "mirror": 0.05, "variant": 0.05, "dup_url": 0.04, "no_match": 0.05,
}
_PATHS = {"ok": "img", "http_404": "missing", "http_500": "error", "slow": "slow", "truncated": "truncated",
          "html": "html", "redirect": "redirect", "noai": "noai"}


@dataclass(frozen=True)
class Row:
    url: str
    caption: str
    fault: str
    image_id: int  # the drawing whose pixels this URL serves (-1: none)
    colour: str
    shape: str
    texture: str


class SyntheticWeb:
    def __init__(self, seed: int = 0, count: int = 3000, faults: dict[str, float] | None = None):
        self.seed, self.count = seed, count
        self.faults = dict(FAULTS if faults is None else faults)
        if sum(self.faults.values()) >= 1:
            raise ValueError("fault shares must sum to less than 1")
        self._concepts = concepts(seed)
        self._weights = zipf_weights(len(self._concepts))

    # ------------------------------------------------------------ content
    def concept(self, image_id: int) -> Concept:
        rng = random.Random(f"concept-{self.seed}-{image_id}")
        return rng.choices(self._concepts, self._weights)[0]

    def drawing(self, image_id: int) -> draw.Drawing:
        return draw.make_drawing(self.seed, image_id, self.concept(image_id))

    def image_bytes(self, image_id: int, ext: str = "jpg") -> bytes:
        return _encoded(self.seed, image_id, ext, self.drawing(image_id))

    def variant_bytes(self, image_id: int, variant: int) -> bytes:
        """The same drawing resized and re-encoded: a near duplicate, not an exact one."""
        rng = random.Random(f"variant-{self.seed}-{image_id}-{variant}")
        img = Image.open(io.BytesIO(self.image_bytes(image_id)))
        scale = max(rng.uniform(0.8, 0.95), 96 / min(img.size))
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        return draw.encode(img, "JPEG", quality=rng.randint(70, 90))

    # ------------------------------------------------------------ candidates
    def rows(self, base_url: str) -> list[Row]:
        base_url = base_url.rstrip("/")
        names, shares = list(self.faults) + ["ok"], list(self.faults.values()) + [1 - sum(self.faults.values())]
        rows: list[Row] = []
        ok_rows: list[int] = []
        for i in range(self.count):
            rng = random.Random(f"row-{self.seed}-{i}")
            fault = rng.choices(names, shares)[0]
            if fault in ("mirror", "variant", "dup_url") and not ok_rows:
                fault = "ok"
            if fault in ("mirror", "variant", "dup_url"):
                j = rows[rng.choice(ok_rows)].image_id
                concept, texture = self.concept(j), self.drawing(j).texture
                if fault == "dup_url":
                    source = rows[rng.choice(ok_rows)]
                    caption = source.caption if rng.random() < 0.5 else caption_for(
                        self.concept(source.image_id), self.drawing(source.image_id).texture, rng)
                    rows.append(Row(source.url, caption, fault, source.image_id, source.colour, source.shape,
                                    source.texture))
                    continue
                ext = next(rows[k].url.rsplit(".", 1)[1] for k in ok_rows if rows[k].image_id == j)
                url = f"{base_url}/{fault}/{j}/{i}.{ext if fault == 'mirror' else 'jpg'}"
                rows.append(Row(url, caption_for(concept, texture, rng), fault, j, concept.colour, concept.shape,
                                texture))
                continue
            concept, texture = self.concept(i), self.drawing(i).texture
            ext = "jpg"
            if fault in ("ok", "no_match"):
                ext = rng.choices(["jpg", "png", "webp"], [0.8, 0.1, 0.1])[0]
            path = _PATHS.get(fault, "img")
            caption = no_match_caption(rng) if fault == "no_match" else caption_for(concept, texture, rng)
            served = i if fault in ("ok", "no_match", "slow", "redirect", "noai") else -1
            rows.append(Row(f"{base_url}/{path}/{i}.{ext}", caption, fault, served, concept.colour, concept.shape,
                            texture))
            if fault == "ok":
                ok_rows.append(len(rows) - 1)
        return rows

    def write_candidates(self, path: str, base_url: str) -> list[Row]:
        """Parquet with img2dataset's `url` and `caption` columns plus ground-truth columns."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from wit.core import fileio
        rows = self.rows(base_url)
        table = pa.Table.from_pylist([asdict(r) for r in rows])
        with fileio.atomic_open(path) as f:
            pq.write_table(table, f)
        return rows

    @staticmethod
    def write_queries(path: str) -> list[str]:
        from wit.core import fileio
        queries = query_list()
        fileio.write_bytes(path, ("\n".join(queries) + "\n").encode())
        return queries


@lru_cache(maxsize=4096)
def _encoded(seed: int, image_id: int, ext: str, drawing: draw.Drawing) -> bytes:
    img = draw.render(drawing)
    if ext == "png":
        return draw.encode(img, "PNG")
    if ext == "webp":
        return draw.encode(img, "WEBP")
    return draw.encode(img, "JPEG", quality=random.Random(f"q-{seed}-{image_id}").randint(80, 95))
