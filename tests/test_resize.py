import io

import pytest
from PIL import Image

import imagehash
import numpy as np

from pipelines.resize import (ResizeError, ResizeOptions, _area_taps, _lanczos4_taps, _pixels, _resized,
                              _separable, perceptual_hash, resize_image)


def _img(w, h, fmt="JPEG", mode="RGB", **save):
    out = io.BytesIO()
    Image.new(mode, (w, h), (200, 30, 30) if mode == "RGB" else (200, 30, 30, 0)).save(out, format=fmt, **save)
    return out.getvalue()


@pytest.mark.parametrize("mode,size", [
    ("border", (64, 64)), ("keep_ratio", (128, 64)), ("keep_ratio_largest", (64, 32)),
    ("center_crop", (64, 64)), ("no", (400, 200)),
])
def test_resize_modes(mode, size):
    r = resize_image(_img(400, 200), ResizeOptions(image_size=64, resize_mode=mode))
    assert (r.width, r.height) == size
    assert (r.original_width, r.original_height) == (400, 200)
    assert Image.open(io.BytesIO(r.jpeg)).size == size


def test_resize_only_if_bigger_keeps_small_images():
    r = resize_image(_img(40, 30), ResizeOptions(image_size=64, resize_mode="keep_ratio", resize_only_if_bigger=True))
    assert (r.width, r.height) == (40, 30)


def test_transparent_png_becomes_rgb_on_white():
    r = resize_image(_img(50, 50, "PNG", "RGBA"), ResizeOptions(image_size=32))
    assert Image.open(io.BytesIO(r.jpeg)).getpixel((16, 16)) == pytest.approx((255, 255, 255), abs=3)


def _exif_rotated() -> bytes:
    img = Image.new("RGB", (300, 100), (10, 200, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif)
    return out.getvalue()


def test_exif_orientation_is_left_as_coded_as_img2dataset_does():
    r = resize_image(_exif_rotated(), ResizeOptions(image_size=50, resize_mode="keep_ratio_largest"))
    assert (r.original_width, r.original_height) == (300, 100) and (r.width, r.height) == (50, 17)


def test_exif_orientation_applied_on_request():
    opts = ResizeOptions(image_size=50, resize_mode="keep_ratio_largest", apply_exif_orientation=True)
    r = resize_image(_exif_rotated(), opts)
    assert (r.original_width, r.original_height) == (100, 300)
    assert (r.width, r.height) == (17, 50)


def test_border_pads_white_and_centres_as_albumentations_does():
    r = resize_image(_img(400, 200), ResizeOptions(image_size=64, resize_mode="border"))
    out = Image.open(io.BytesIO(r.jpeg))
    assert out.size == (64, 64)
    assert out.getpixel((32, 2)) == pytest.approx((255, 255, 255), abs=3)  # the band above the image
    assert out.getpixel((32, 61)) == pytest.approx((255, 255, 255), abs=3)  # and below it
    assert out.getpixel((32, 32)) == pytest.approx((200, 30, 30), abs=6)


def test_greyscale_stays_one_channel_unless_rgb_is_asked_for():
    out = io.BytesIO()
    Image.new("L", (120, 80), 90).save(out, format="PNG")
    r = resize_image(out.getvalue(), ResizeOptions(image_size=64, resize_mode="border"))
    stored = Image.open(io.BytesIO(r.jpeg))
    assert stored.mode == "L" and stored.getpixel((32, 32)) == pytest.approx(90, abs=2)
    assert stored.getpixel((32, 1)) == pytest.approx(255, abs=2)  # white border in one channel
    r = resize_image(out.getvalue(), ResizeOptions(image_size=64, rgb=True))
    assert Image.open(io.BytesIO(r.jpeg)).mode == "RGB"


@pytest.mark.parametrize("mode,expected", [("LA", "RGB"), ("P", "RGB"), ("1", "L"), ("RGBA", "RGB")])
def test_other_modes_as_img2dataset_stores_them(mode, expected):
    out = io.BytesIO()
    Image.new(mode, (40, 30)).save(out, format="PNG")
    assert Image.open(io.BytesIO(resize_image(out.getvalue(), ResizeOptions(image_size=32)).jpeg)).mode == expected


def test_center_crop_leaves_a_small_image_whole_when_only_enlarging_is_refused():
    opts = ResizeOptions(image_size=64, resize_mode="center_crop", resize_only_if_bigger=True)
    r = resize_image(_img(50, 30), opts)
    assert (r.width, r.height) == (50, 30)  # img2dataset neither scales nor crops it
    r = resize_image(_img(200, 100), opts)
    assert (r.width, r.height) == (64, 64)


@pytest.mark.parametrize("w,h,mode,size", [
    (333, 100, "keep_ratio", (213, 64)),  # 333 * 0.64 = 213.12
    (250, 100, "keep_ratio", (160, 64)),
    (101, 200, "keep_ratio_largest", (32, 64)),  # 101 * 0.32 = 32.32
    (125, 200, "keep_ratio_largest", (40, 64)),
    (75, 200, "keep_ratio_largest", (24, 64)),  # 24.0
])
def test_sizes_round_as_albumentations_rounds(w, h, mode, size):
    r = resize_image(_img(w, h), ResizeOptions(image_size=64, resize_mode=mode))
    assert (r.width, r.height) == size


def test_bad_images_raise_resize_error():
    data = _img(300, 300)
    with pytest.raises(ResizeError, match="truncated"):
        resize_image(data[: len(data) // 2], ResizeOptions())
    with pytest.raises(ResizeError, match="not a JPEG/PNG/WebP/GIF"):
        resize_image(b"<html>nope</html>", ResizeOptions())
    with pytest.raises(ResizeError, match="over the cap"):
        resize_image(_img(300, 300), ResizeOptions(max_pixels=1000))
    with pytest.raises(ResizeError, match="not a JPEG/PNG/WebP/GIF"):
        resize_image(_img(30, 30, "BMP"), ResizeOptions())


def test_large_jpeg_decoded_at_reduced_scale_still_exact_size():
    r = resize_image(_img(2000, 1500), ResizeOptions(image_size=100, resize_mode="center_crop"))
    assert (r.width, r.height) == (100, 100) and (r.original_width, r.original_height) == (2000, 1500)


def _progressive_jpeg() -> bytes:
    img = Image.new("RGB", (64, 48), (10, 200, 30))
    out = io.BytesIO()
    img.save(out, format="JPEG", progressive=True, quality=90)
    return out.getvalue()


def test_a_jpeg_of_too_many_scans_is_refused_before_decoding():
    import time

    from pipelines.resize import jpeg_scans
    from wit.core.errors import ErrorKind

    data = _progressive_jpeg()
    assert 1 < jpeg_scans(data) <= 20
    resize_image(data, ResizeOptions(image_size=32))  # an ordinary progressive JPEG decodes
    last = data.rindex(b"\xff\xda")
    hostile = data[:last] + data[last:-2] * 1000 + b"\xff\xd9"  # its last scan repeated a thousand times
    started = time.process_time()
    with pytest.raises(ResizeError) as e:
        resize_image(hostile, ResizeOptions(image_size=32))
    assert time.process_time() - started < 0.5
    assert e.value.kind is ErrorKind.TOO_COMPLEX and str(e.value).startswith("JPEG of 1,00")
    assert "over --max-jpeg-scans 100" in str(e.value)


def test_a_png_refused_by_its_header_says_why():
    from PIL.PngImagePlugin import PngInfo

    from wit.core.errors import ErrorKind

    info = PngInfo()
    info.add_text("comment", "x" * 3_000_000, zip=True)  # a zTXt chunk past Pillow's text-chunk limit
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG", pnginfo=info)
    with pytest.raises(ResizeError) as e:
        resize_image(out.getvalue(), ResizeOptions())
    assert e.value.kind is ErrorKind.DECODE
    assert str(e.value).startswith("unreadable PNG header: ValueError: Decompressed data too large")


def test_exif_tags_are_kept_as_json_in_exifreads_names():
    import json

    img = Image.new("RGB", (64, 48), (1, 2, 3))
    exif = img.getexif()
    exif[0x010F] = "Acme"  # Make
    exif[0x0112] = 1  # Orientation
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 10:00:00"  # DateTimeOriginal
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif)
    tags = json.loads(resize_image(out.getvalue(), ResizeOptions(image_size=32)).exif)
    assert tags["Image Make"] == "Acme" and tags["Image Orientation"] == "1"
    assert tags["EXIF DateTimeOriginal"] == "2024:05:01 10:00:00"
    assert resize_image(_img(40, 30), ResizeOptions(image_size=32)).exif is None


def test_exif_is_stored_within_bounds_and_what_was_cut_is_counted():
    """Long arrays, long strings and many tags (as overlapping offsets give) stay small in the stored JSON."""
    import json

    from pipelines.resize import EXIF_CUT, MAX_EXIF_ITEMS, MAX_EXIF_JSON

    img = Image.new("RGB", (64, 48), (1, 2, 3))
    exif = img.getexif()
    exif[0x010F] = "Acme"
    exif[0x9286] = "x" * 10_000  # UserComment
    for tag in range(0xA500, 0xA500 + 200):
        exif[tag] = tuple(range(100))
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif)
    stored = resize_image(out.getvalue(), ResizeOptions(image_size=32)).exif
    tags = json.loads(stored)
    assert len(stored) <= MAX_EXIF_JSON + 200
    assert tags["Image Make"] == "Acme"
    arrays = [v for k, v in tags.items() if k.startswith("Image 0xa5")]
    assert arrays and all(v == str(tuple(range(MAX_EXIF_ITEMS))) for v in arrays)
    assert len(tags["Image UserComment"]) == 1024
    assert tags[EXIF_CUT].startswith(f"{200 + 1} tag value(s) cut or left out")


def _dense(cols, weights, src):
    m = np.zeros((len(cols), src))
    np.add.at(m, (np.arange(len(cols))[:, None].repeat(cols.shape[1], 1), cols), weights)
    return m


def test_shrinking_averages_exact_areas_as_opencvs_inter_area():
    # 3 -> 2 pixels: each output covers 1.5 inputs, the middle one split between them
    assert np.allclose(_dense(*_area_taps(3, 2), 3), [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]])
    row = Image.fromarray(np.array([[0, 90, 180]] * 3, np.uint8), "L")
    assert np.asarray(_resized(row, (2, 3))).tolist() == [[30, 150]] * 3
    assert np.allclose(_dense(*_area_taps(4, 2), 4), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])  # whole pixels


def _area_taps_by_numpy(src, dst):
    """The rule of the docstring, spelled out in array operations."""
    scale = src / dst
    first = np.arange(dst) * scale
    last = np.minimum(first + scale, src)
    cols = np.floor(first).astype(np.int64)[:, None] + np.arange(int(np.ceil(scale)) + 1)[None, :]
    overlap = np.minimum(cols + 1, last[:, None]) - np.maximum(cols, first[:, None])
    weights = np.where((overlap > 1e-3) & (cols < src), overlap, 0.0) / (last - first)[:, None]
    return np.minimum(cols, src - 1), weights.astype(np.float32)


def test_compiled_area_taps_equal_the_array_rule_exactly():
    for src in range(1, 700, 7):
        for dst in sorted({1, 2, src // 3 or 1, src // 2 or 1, max(1, src - 1), src}):
            cols, weights = _area_taps(src, dst)
            expected_cols, expected_weights = _area_taps_by_numpy(src, dst)
            assert np.array_equal(cols, expected_cols) and np.array_equal(weights, expected_weights), (src, dst)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_pixels_are_pillows_own_buffer_and_a_copy_when_it_is_split(mode):
    shape = (53, 71, 3) if mode == "RGB" else (53, 71)
    img = Image.fromarray(np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8), mode).copy()
    expected = np.asarray(img).reshape(53, 71, -1)
    shared = _pixels(img)
    assert shared.shape[2] == (4 if mode == "RGB" else 1)  # Pillow's RGB has a padding byte
    assert np.array_equal(shared[..., :expected.shape[2]], expected)
    borrowed = Image.frombuffer(mode, img.size, img.tobytes(), "raw", mode, 0, 1)  # L: Pillow's export would crash
    assert np.array_equal(_pixels(borrowed)[..., :expected.shape[2]], expected)
    before = Image.core.get_block_size()
    Image.core.set_block_size(4096)  # a very large image is held in several blocks: no single buffer
    try:
        split = img.copy()
        copied = _pixels(split)
        assert np.array_equal(copied, expected)
        assert np.array_equal(np.asarray(_resized(split, (30, 20))), np.asarray(_resized(img, (30, 20))))
    finally:
        Image.core.set_block_size(before)


@pytest.mark.parametrize("size", [(30, 20), (71, 53), (140, 100)])
def test_rgb_resizes_alike_from_pillows_four_byte_pixels_and_packed_three_byte_ones(size):
    img = Image.fromarray(np.random.default_rng(7).integers(0, 256, (53, 71, 3), dtype=np.uint8), "RGB").copy()
    padded, packed = _pixels(img), np.ascontiguousarray(np.asarray(img))
    assert padded.shape[2] == 4 and packed.shape[2] == 3
    taps = _area_taps if size[0] <= 71 else _lanczos4_taps
    rows, cols = taps(53, size[1]), taps(71, size[0])
    assert np.array_equal(_separable(padded, 3, *rows, *cols), _separable(packed, 3, *rows, *cols))


def test_the_jobs_driver_imports_no_fft():
    """The driver imports this module for its options and never hashes: scipy's FFT would only add to its
    start-up."""
    import subprocess
    import sys

    probe = "import sys, pipelines.build; print(sorted(m for m in sys.modules if m.startswith('scipy.fft')))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


def test_enlarging_is_lanczos_with_four_lobes_and_replicated_edges():
    m = _dense(*_lanczos4_taps(5, 10), 5)
    assert np.allclose(m.sum(axis=1), 1)
    # output 0's centre lies at input -0.25: taps at -4 .. 3, 0.75 past the first of each pair
    t = np.array([0.75 + 3 - k for k in range(8)])
    w = np.sinc(t) * np.sinc(t / 4)
    w /= w.sum()
    assert np.isclose(m[0, 0], w[:5].sum()) and np.allclose(m[0, 1:4], w[5:])  # taps left of the edge -> pixel 0
    flat = Image.new("RGB", (7, 5), (10, 200, 77))
    assert np.all(np.asarray(_resized(flat, (20, 14))) == (10, 200, 77))


@pytest.mark.parametrize("size", [(37, 23), (256, 171), (600, 400)])
def test_three_channels_resize_as_each_channel_alone(size):
    # RGB has a loop of its own in the kernel; one channel takes the generic one
    rgb = Image.fromarray(np.random.default_rng(3).integers(0, 256, (211, 317, 3), dtype=np.uint8))
    together = np.asarray(_resized(rgb, size))
    alone = np.stack([np.asarray(_resized(band, size)) for band in rgb.split()], axis=-1)
    assert np.array_equal(together, alone)


def test_perceptual_hash_is_imagehashs_phash_of_the_image_shrunk_by_the_resize_kernel():
    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in rng.integers(32, 300, (40, 2))]
    images += [Image.fromarray(rng.integers(0, 256, (90, 120), dtype=np.uint8)),
               Image.linear_gradient("L").convert("RGB"), Image.new("RGB", (64, 48), (7, 7, 7)),
               Image.fromarray(rng.integers(0, 256, (20, 300, 3), dtype=np.uint8)),  # enlarged on one side
               Image.fromarray(rng.integers(0, 256, (9, 7), dtype=np.uint8))]
    jpeg = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").resize((300, 200)).save(jpeg, format="JPEG")
    decoded = Image.open(jpeg)
    decoded.load()  # Pillow's own buffer, four bytes a pixel, handed to the kernel without a copy
    images.append(decoded)
    for img in images:
        expected = int(str(imagehash.phash(_resized(img, (32, 32)))), 16)
        assert perceptual_hash(img) == expected, img.size
