import io

import pytest
from PIL import Image

from pipelines.resize import ResizeError, ResizeOptions, resize_image


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


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (300, 100), (10, 200, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif)
    r = resize_image(out.getvalue(), ResizeOptions(image_size=50, resize_mode="keep_ratio_largest"))
    assert (r.original_width, r.original_height) == (100, 300)
    assert (r.width, r.height) == (17, 50)


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
    from wit.shardformat import ErrorKind

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

    from wit.shardformat import ErrorKind

    info = PngInfo()
    info.add_text("comment", "x" * 3_000_000, zip=True)  # a zTXt chunk past Pillow's text-chunk limit
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG", pnginfo=info)
    with pytest.raises(ResizeError) as e:
        resize_image(out.getvalue(), ResizeOptions())
    assert e.value.kind is ErrorKind.DECODE
    assert str(e.value).startswith("unreadable PNG header: ValueError: Decompressed data too large")
