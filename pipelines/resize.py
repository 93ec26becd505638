"""Decoding and resizing downloaded images with Pillow, as img2dataset does with OpenCV.

Resize modes and defaults follow img2dataset 1.47 (`--resize-mode border`,
`--image-size 256`, JPEG quality 95), rule for rule, so its users get the
images they expect:
  no                  keep the decoded image as it is
  keep_ratio          smaller side -> image_size
  keep_ratio_largest  larger side -> image_size
  center_crop         smaller side -> image_size, then a centred square crop
  border              larger side -> image_size, then white padding to a square
Sizes are rounded as albumentations rounds them (Python's round); with
`resize_only_if_bigger` an image whose deciding side is not over image_size is
left as it is, uncropped and unpadded. EXIF orientation is not applied
(OpenCV's IMREAD_UNCHANGED ignores it: the stored image and its original size
are as coded); greyscale stays one channel; transparency is matted on white.
`apply_exif_orientation` and `rgb` give wit's other choices. Resampling is
OpenCV's, reproduced: INTER_AREA shrinking, INTER_LANCZOS4 enlarging.
JPEGs are decoded at a reduced scale (`Image.draft`) when far larger than the
target: the biggest single saving in a resize-bound job.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numba
import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

from wit.core.options import Options, option
from wit.core.errors import ErrorKind

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
OPENABLE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
_ORIENTATION = 0x0112
HASH_INPUT_MIN = 128


class ResizeError(Exception):
    """The bytes are not an image we can decode and resize; `kind` says which way."""

    def __init__(self, kind: ErrorKind, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ResizeOptions(Options):
    image_size: int = option(256, help="side of the stored image, in pixels")
    resize_mode: str = option("border", help="how images are fitted to --image-size (img2dataset's modes)",
                              choices=RESIZE_MODES)
    resize_only_if_bigger: bool = option(False, help="never enlarge an image")
    encode_quality: int = option(95, help="JPEG quality of the stored image")
    max_pixels: int = option(89_478_485, help="refuse larger images (decompression bombs; Pillow's own limit)")
    max_jpeg_scans: int = option(100, help="refuse JPEGs of more scans: each scan of a progressive JPEG is "
                                           "decoded over the whole image, so a small file of a thousand "
                                           "repeated scans costs a minute of CPU (libjpeg-turbo's scan limit)")
    min_image_size: int = option(0, help="refuse images whose shorter side is smaller")
    apply_exif_orientation: bool = option(False, help="rotate images as their EXIF orientation tag says, and report "
                                                      "the size as shown (img2dataset stores them as coded)")
    rgb: bool = option(False, help="store greyscale images as RGB (img2dataset keeps them one channel)")

    def check(self) -> None:
        if self.image_size < 1:
            self.refuse("image_size", "must be at least 1")
        if not 1 <= self.encode_quality <= 100:
            self.refuse("encode_quality", "must be in 1..100")
        if self.max_pixels < 1:
            self.refuse("max_pixels", "must be at least 1")
        if self.max_jpeg_scans < 1:
            self.refuse("max_jpeg_scans", "must be at least 1")
        if self.min_image_size < 0:
            self.refuse("min_image_size", "must not be negative")


@dataclass(frozen=True)
class Resized:
    jpeg: bytes
    width: int
    height: int
    original_width: int
    original_height: int
    phash: int
    exif: Optional[str] = None


def _target(w: int, h: int, opts: ResizeOptions) -> tuple[int, int]:
    """Size the image is scaled to before any crop or border."""
    size = opts.image_size
    if opts.resize_mode == "no":
        return w, h
    longest = opts.resize_mode in ("keep_ratio_largest", "border")
    side = max(w, h) if longest else min(w, h)
    if opts.resize_only_if_bigger and side <= size:
        return w, h
    scale = size / side
    return max(1, round(w * scale)), max(1, round(h * scale))


def _draft_size(ow: int, oh: int, tw: int, th: int) -> tuple[int, int]:
    scale = max(tw / ow, th / oh, min(1.0, HASH_INPUT_MIN / min(ow, oh)))
    return max(1, round(ow * scale)), max(1, round(oh * scale))


GREY_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L", "F")


@lru_cache(maxsize=4096)
def _area_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_AREA shrink of one axis as (dst, taps) input indices and weights: output pixel d is the
    mean of the input span [d*scale, (d+1)*scale), each input pixel weighted by the part of it inside
    (overlaps under 1e-3 ignored, as OpenCV does; unused taps weigh 0). Compiled: sizes vary from image to
    image, so the cache rarely holds them, and numpy's many small steps cost a sixth of the kernel itself."""
    return _area_taps_compiled(src, dst)


@numba.njit(cache=True, nogil=True)
def _area_taps_compiled(src, dst):  # pragma: no cover - compiled
    scale = src / dst
    span = int(np.ceil(scale)) + 1
    cols = np.empty((dst, span), np.int64)
    weights = np.empty((dst, span), np.float32)
    for d in range(dst):
        first = d * scale
        last = min(first + scale, src)
        start = int(np.floor(first))
        for k in range(span):
            col = start + k
            overlap = min(col + 1, last) - max(col, first)
            weight = overlap if overlap > 1e-3 and col < src else 0.0
            weights[d, k] = weight / (last - first)
            cols[d, k] = min(col, src - 1)
    return cols, weights


@lru_cache(maxsize=4096)
def _lanczos4_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_LANCZOS4 enlargement of one axis: 8 taps around the output pixel's centre in the
    input, weighted by sinc(t) sinc(t/4) and normalised, edge pixels standing in for those beyond."""
    scale = src / dst
    centre = (np.arange(dst) + 0.5) * scale - 0.5
    left = np.floor(centre).astype(np.int64)
    t = (centre - left)[:, None] + 3 - np.arange(8)[None, :]
    weights = np.sinc(t) * np.sinc(t / 4)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.clip(left[:, None] - 3 + np.arange(8)[None, :], 0, src - 1), weights.astype(np.float32)


@numba.njit(cache=True, nogil=True)
def _separable(src, c, rows, row_weights, cols, col_weights):  # pragma: no cover - compiled
    """src (h, w, stride), its first c channels -> (len(rows), len(cols), c): each output row the weighted sum
    of the input rows its taps name, then each output pixel that of the row's pixels its column taps name;
    float32, rounded to uint8 as OpenCV's saturate_cast rounds. Taps of weight 0 are padding. The row pass
    sums whole pixels, padding byte included (contiguous, so it vectorises). RGB in Pillow's four-byte pixels
    gets a loop of its own, one accumulator a byte, the padding's too, so that the four sums vectorise: the
    column pass is most of the cost, and the generic loop's gathers per channel cost twice as much
    (bench/download.py; figures in bench/RESULTS.md). Packed RGB (a copy of a very large image) takes the
    generic loop, with the same sums in the same order."""
    h, w, stride = src.shape
    th, tw = rows.shape[0], cols.shape[0]
    flat = src.reshape(h, w * stride)
    line = np.empty(w * stride, np.float32)
    out = np.empty((th, tw, c), np.uint8)
    for y in range(th):
        line[:] = 0
        for i in range(rows.shape[1]):
            weight = row_weights[y, i]
            if weight != 0:
                row = flat[rows[y, i]]
                for k in range(w * stride):
                    line[k] += weight * row[k]
        if c == 3 and stride == 4:  # Pillow's RGB: the padding byte is summed too, and the four sums vectorise
            for x in range(tw):
                r, g, b, pad = np.float32(0), np.float32(0), np.float32(0), np.float32(0)
                for j in range(cols.shape[1]):
                    weight = col_weights[x, j]
                    at = cols[x, j] * 4
                    r += weight * line[at]
                    g += weight * line[at + 1]
                    b += weight * line[at + 2]
                    pad += weight * line[at + 3]
                out[y, x, 0] = min(255, max(0, np.rint(r)))
                out[y, x, 1] = min(255, max(0, np.rint(g)))
                out[y, x, 2] = min(255, max(0, np.rint(b)))
            continue
        for x in range(tw):
            for ch in range(c):
                v = np.float32(0)
                for j in range(cols.shape[1]):
                    v += col_weights[x, j] * line[cols[x, j] * stride + ch]
                out[y, x, ch] = min(255, max(0, np.rint(v)))
    return out


def _pixels(img: Image.Image) -> np.ndarray:
    """The image's pixels as (h, w, stride) without a copy: Pillow hands out its own buffer through the Arrow
    C data interface (RGB is stored 4 bytes a pixel, the fourth unused). np.asarray copies through tobytes,
    which cost a quarter of the kernel's own time (bench/download.py; figures in bench/RESULTS.md). An
    image Pillow holds in several blocks (a very large one) cannot be handed out whole, and is copied; so is
    one whose pixels Pillow borrows (made by frombuffer or fromarray: read-only), whose export crashes
    Pillow 12 (python-pillow/Pillow#9896)."""
    w, h = img.size
    if not img.readonly and img.mode in ("RGB", "L"):
        try:
            exported = pa.array(img)
            values = exported.values if pa.types.is_fixed_size_list(exported.type) else exported
            return values.to_numpy(zero_copy_only=True).reshape(h, w, -1)
        except (ValueError, pa.ArrowException):
            pass  # held in several blocks
    return np.asarray(img).reshape(h, w, -1)


def _resized(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """img2dataset resizes with OpenCV: INTER_AREA shrinking (exact area averaging, which no Pillow filter is:
    BOX weighs whole pixels) and INTER_LANCZOS4 enlarging (Pillow's Lanczos has 3 lobes). Both separable, so
    one compiled kernel applies either from its taps: within 1/255 of OpenCV, at the cost of Pillow's own."""
    out = _resampled(img, size)
    return Image.fromarray(out.reshape(out.shape[:2]) if out.shape[2] == 1 else out, img.mode)


def _resampled(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """`_resized`'s pixels as (height, width, channels), for a caller that needs no image."""
    (w, h), (tw, th) = img.size, size
    taps = _area_taps if tw <= w and th <= h else _lanczos4_taps
    return _separable(_pixels(img), len(img.getbands()), *taps(h, th), *taps(w, tw))


def perceptual_hash(img: Image.Image) -> int:
    """imagehash.phash of the image shrunk to 32x32 by `_resized`'s kernel (area averaging), bit for bit, as an
    int. imagehash shrinks with Lanczos, the costliest step; shrinking first makes its own resize a no-op and
    gives an equally stable hash. The shrink is the compiled kernel's, not Pillow's BOX filter, which costs
    several times as much (bench/download.py; figures in bench/RESULTS.md). imagehash's other steps are taken
    here without the no-op resize, the hex string and numpy's general median."""
    from scipy.fftpack import dct  # see `preload`

    small = _resampled(img, (_HASH_SIDE, _HASH_SIDE))
    pixels = _grey(small) if small.shape[2] == 3 else small.reshape(_HASH_SIDE, _HASH_SIDE)
    low = dct(dct(pixels, axis=0), axis=1)[:8, :8].ravel()
    middle = np.partition(low, (31, 32))
    median = (middle[31] + middle[32]) / 2  # np.median's value: the mean of the two middle ones
    return int.from_bytes(np.packbits(low > median).tobytes(), "big")


_HASH_SIDE = 32


@numba.njit(cache=True, nogil=True)
def _grey(rgb):  # pragma: no cover - compiled
    """Pillow's RGB to L conversion (ITU-R 601-2 luma in 16-bit fixed point, rounded), as imagehash takes it;
    compiled, as numpy's five steps on a 32x32 image cost a fifth of the hash."""
    h, w, _ = rgb.shape
    out = np.empty((h, w), np.uint8)
    for y in range(h):
        for x in range(w):
            out[y, x] = (np.uint32(rgb[y, x, 0]) * 19595 + np.uint32(rgb[y, x, 1]) * 38470
                         + np.uint32(rgb[y, x, 2]) * 7471 + 0x8000) >> 16
    return out


def preload() -> None:
    """Import what hashing needs (scipy's FFT) now. It is imported at first use, not with this module: the
    job's driver imports the module for its options and never hashes, and the import adds to its start-up,
    before the first request (bench/download.py). A decoding process calls this at its start, before its first
    body."""
    import scipy.fftpack  # noqa: F401


def _stored_mode(img: Image.Image, rgb: bool) -> Image.Image:
    """RGB, or L for greyscale (unless `rgb`); transparency matted on white, as img2dataset does."""
    if img.mode == "RGB" or img.mode == "L" and not rgb:
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in GREY_MODES and not rgb:
        if img.mode.startswith("I") or img.mode == "F":  # 16-bit and float greyscale: to 8 bits, as libpng's strip
            return img.point(lambda v: v / 256).convert("L") if img.mode.startswith("I;16") else img.convert("L")
        return img.convert("L")
    return img.convert("RGB")


def image_format(data: bytes) -> Optional[str]:
    """The format the leading bytes announce, whatever the Content-Type claimed."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


_EXIF_IFDS = ((None, "Image"), (0x8769, "EXIF"), (0x8825, "GPS"))


# Bounds on the stored EXIF (an APP1 segment is up to 64 KiB, but overlapping offsets let many tags read the same
# bytes, and one tuple of numbers can print as megabytes): img2dataset's reader (exifread) shows long arrays cut
# short too. What is cut is counted in the JSON's own "wit cut" entry.
MAX_EXIF_TAGS = 128  # tags read per image
MAX_EXIF_ITEMS = 32  # items kept of an array value
MAX_EXIF_CHARS = 1024  # characters kept of a value
MAX_EXIF_JSON = 16 * 1024  # characters of JSON per image; tags past it are left out
EXIF_CUT = "wit cut"


def _bounded(value: object) -> tuple[str, bool]:
    """The value as text within the bounds, and whether anything was cut."""
    cut = False
    if isinstance(value, (tuple, list)) and len(value) > MAX_EXIF_ITEMS:
        value, cut = tuple(value[:MAX_EXIF_ITEMS]), True
    text = str(value).strip("\x00 ")
    if len(text) > MAX_EXIF_CHARS:
        text, cut = text[:MAX_EXIF_CHARS], True
    return text, cut


def exif_json(img: Image.Image) -> Optional[str]:
    """The EXIF tags as JSON, named as exifread names them for img2dataset ("Image Make", "EXIF
    DateTimeOriginal", "GPS GPSLatitude"); binary values (maker notes, thumbnails) are left out, and long
    values, tags past `MAX_EXIF_TAGS` and JSON past `MAX_EXIF_JSON` are cut (counted under "wit cut")."""
    from PIL import ExifTags

    try:
        exif = img.getexif()
        tags: dict[str, str] = {}
        size, seen, cut = 2, 0, 0
        for ifd, group in _EXIF_IFDS:
            values = exif if ifd is None else exif.get_ifd(ifd)
            names = ExifTags.GPSTAGS if ifd == 0x8825 else ExifTags.TAGS
            for tag in list(values.keys()):
                if tag in (0x8769, 0x8825):
                    continue
                seen += 1
                if seen > MAX_EXIF_TAGS:
                    cut += 1
                    continue
                value = values[tag]
                if isinstance(value, bytes):
                    continue
                name = f"{group} {names.get(tag, hex(tag))}"
                text, shortened = _bounded(value)
                entry = len(json.dumps({name: text}, ensure_ascii=False))
                if size + entry > MAX_EXIF_JSON:
                    cut += 1
                    continue
                tags[name] = text
                size += entry
                cut += shortened
    except Exception:
        return None  # unreadable EXIF is not a reason to lose the image
    if cut:
        tags[EXIF_CUT] = f"{cut} tag value(s) cut or left out to fit wit's bounds"
    return json.dumps(tags, sort_keys=True, ensure_ascii=False) if tags else None


def jpeg_scans(data: bytes) -> int:
    """Start-of-scan markers in a JPEG. Entropy-coded data never holds FF DA (an FF there is followed by 00
    or a restart marker), so counting is exact but for an embedded EXIF thumbnail's one scan."""
    return data.count(b"\xff\xda")


def resize_image(data: bytes, opts: ResizeOptions) -> Resized:
    fmt = image_format(data)
    if fmt is None:
        raise ResizeError(ErrorKind.NOT_AN_IMAGE,
                          f"not a JPEG/PNG/WebP/GIF image: magic bytes {data[:8].hex() or '(empty)'}")
    if fmt == "JPEG" and jpeg_scans(data) > opts.max_jpeg_scans:
        raise ResizeError(ErrorKind.TOO_COMPLEX, f"JPEG of {jpeg_scans(data):,} scans, over --max-jpeg-scans "
                                                 f"{opts.max_jpeg_scans} (each scan is a pass over the image)")
    try:
        img = Image.open(io.BytesIO(data), formats=OPENABLE_FORMATS)
    except Image.DecompressionBombError as e:  # Pillow's own cap (2x its MAX_IMAGE_PIXELS), read from the header
        raise ResizeError(ErrorKind.TOO_LARGE,
                          f"image over the cap of {opts.max_pixels} pixels (decompression bomb): {e}") from e
    except Exception as e:  # the magic bytes say which format: say what in its header is wrong
        raise ResizeError(ErrorKind.DECODE, f"unreadable {fmt} header: {type(e).__name__}: {e}") from e
    ow, oh = img.size
    exif = exif_json(img)
    if ow * oh > opts.max_pixels:
        raise ResizeError(ErrorKind.TOO_LARGE, f"image over the cap of {opts.max_pixels} pixels: {ow}x{oh}")
    if min(ow, oh) < opts.min_image_size:
        raise ResizeError(ErrorKind.TOO_SMALL, f"image {ow}x{oh} is smaller than {opts.min_image_size}")
    if opts.apply_exif_orientation:
        try:
            if img.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):
                ow, oh = oh, ow  # shown rotated by 90 degrees: report the size as displayed
        except Exception:
            pass  # unreadable EXIF is not a reason to lose the image
    tw, th = _target(ow, oh, opts)
    # Decode no smaller than HASH_INPUT_MIN on the short side: the perceptual hash drifts several bits when
    # computed from a heavily reduced decode, and 128 keeps re-encoded variants within the threshold about
    # as often as 256 while decoding faster (bench/RESULTS.md, bench/fetch.py).
    dw, dh = _draft_size(ow, oh, tw, th)
    if img.format == "JPEG" and dw * 2 <= ow and dh * 2 <= oh:
        img.draft("RGB", (dw, dh) if (ow, oh) == img.size else (dh, dw))
    try:
        img.load()
        if opts.apply_exif_orientation:
            img = ImageOps.exif_transpose(img)
        img = _stored_mode(img, opts.rgb)
    except Exception as e:
        raise ResizeError(ErrorKind.DECODE, f"cannot decode image: {type(e).__name__}: {e}") from e
    decoded = img
    if (tw, th) != img.size:
        img = _resized(img, (tw, th))
    # Its input is the resized image (cheaper to shrink) unless that fell below HASH_INPUT_MIN.
    phash = perceptual_hash(img if min(img.size) >= HASH_INPUT_MIN else decoded)
    if opts.resize_mode == "center_crop" and min(tw, th) >= opts.image_size:  # else: left as is (only-if-bigger)
        s = opts.image_size
        left, top = (tw - s) // 2, (th - s) // 2
        img = img.crop((left, top, left + s, top + s))
    elif opts.resize_mode == "border" and max(tw, th) >= opts.image_size:
        canvas = Image.new(img.mode, (opts.image_size, opts.image_size), 255 if img.mode == "L" else (255, 255, 255))
        canvas.paste(img, ((opts.image_size - tw) // 2, (opts.image_size - th) // 2))
        img = canvas
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=opts.encode_quality)
    return Resized(out.getvalue(), img.width, img.height, ow, oh, phash, exif)
