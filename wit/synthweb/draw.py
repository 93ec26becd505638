"""Procedurally drawn images: one shape of one colour on a textured background.

Everything is derived from (site seed, image id), so the server is stateless
and the same URL always serves the same bytes.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from wit.synthweb.vocab import COLOURS, TEXTURES, Concept


@dataclass(frozen=True)
class Drawing:
    concept: Concept
    texture: str
    width: int
    height: int
    seed: str


def _background(d: Drawing, rng: random.Random, avoid: tuple[int, int, int]) -> Image.Image:
    palette = [rgb for rgb in COLOURS.values() if sum(abs(a - b) for a, b in zip(rgb, avoid)) > 150]
    bg, fg = rng.sample(palette, 2)
    img = Image.new("RGB", (d.width, d.height), bg)
    draw = ImageDraw.Draw(img)
    step = rng.randint(8, 24)
    if d.texture == "striped":
        for x in range(-d.height, d.width, step * 2):
            draw.polygon([(x, 0), (x + step, 0), (x + step + d.height, d.height), (x + d.height, d.height)], fill=fg)
    elif d.texture == "dotted":
        r = max(2, step // 4)
        for y in range(step // 2, d.height, step):
            for x in range(step // 2, d.width, step):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=fg)
    elif d.texture == "checkered":
        for y in range(0, d.height, step):
            for x in range(0, d.width, step):
                if (x // step + y // step) % 2:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=fg)
    elif d.texture == "noisy":
        noise = np.random.default_rng(rng.randrange(2**32)).integers(-60, 60, (d.height, d.width, 3))
        arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, "RGB")
    elif d.texture == "gradient":
        t = np.linspace(0.0, 1.0, d.width)[None, :, None]
        arr = (1 - t) * np.array(bg)[None, None, :] + t * np.array(fg)[None, None, :]
        img = Image.fromarray(np.repeat(arr, d.height, axis=0).astype(np.uint8), "RGB")
    return img


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(n: int, radii: list[float]) -> list[tuple[float, float]]:
        return [(cx + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / n),
                 cy + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / n)) for i in range(n)]

    if shape == "triangle":
        return ring(3, [r])
    if shape == "square":
        return ring(4, [r])
    if shape == "diamond":
        return ring(4, [r, r * 0.6])
    if shape == "hexagon":
        return ring(6, [r])
    if shape == "star":
        return ring(10, [r, r * 0.45])
    if shape == "cross":
        w = r * 0.35
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w),
               (-w, -w)]
    else:  # arrow
        pts = [(-r, -r * 0.25), (r * 0.2, -r * 0.25), (r * 0.2, -r * 0.6), (r, 0), (r * 0.2, r * 0.6),
               (r * 0.2, r * 0.25), (-r, r * 0.25)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def render(d: Drawing) -> Image.Image:
    rng = random.Random(d.seed)
    colour = COLOURS[d.concept.colour]
    img = _background(d, rng, colour)
    draw = ImageDraw.Draw(img)
    side = min(d.width, d.height)
    r = side * rng.uniform(0.2, 0.4)
    cx = rng.uniform(r, d.width - r)
    cy = rng.uniform(r, d.height - r)
    outline = (0, 0, 0) if sum(colour) > 300 else (255, 255, 255)
    shape = d.concept.shape
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour, outline=outline, width=2)
    elif shape == "ellipse":
        draw.ellipse([cx - r, cy - r * 0.55, cx + r, cy + r * 0.55], fill=colour, outline=outline, width=2)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(3, int(r * 0.3)))
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi) if shape != "square" else
                              rng.uniform(0, math.pi / 8) + math.pi / 4), fill=colour, outline=outline)
    return img


def make_drawing(site_seed: int, image_id: int, concept: Concept) -> Drawing:
    rng = random.Random(f"drawing-{site_seed}-{image_id}")
    return Drawing(concept, rng.choice(TEXTURES), rng.randint(96, 480), rng.randint(96, 480),
                   seed=f"render-{site_seed}-{image_id}")


def encode(img: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        img.save(out, format="JPEG", quality=quality)
    else:
        img.save(out, format=fmt)
    return out.getvalue()
