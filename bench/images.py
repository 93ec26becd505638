"""wit's stored images against img2dataset's, pixel for pixel, on the same inputs in every resize mode.

The inputs cover the rules that differ between tools: landscape, portrait, very
wide and small images; RGB and greyscale JPEGs, greyscale, RGBA and palette
PNGs, and a JPEG whose EXIF orientation says "rotate 90 degrees". Content is a
smooth gradient with hard-edged shapes and noise, so that resampling shows.

img2dataset's side is its own `Resizer` (1.47: OpenCV decode with
IMREAD_UNCHANGED, albumentations' resize, crop and pad, OpenCV's JPEG encoder),
run in the Python that has img2dataset installed (it pins webdataset<0.3, so it
lives in a venv of its own). wit's side is `pipelines.resize.resize_image` with
the same settings. Both outputs are decoded with Pillow and compared: the
sizes and channel counts must be equal, and the mean absolute pixel difference
at most 2/255 (JPEG noise of two encoders).

    python3 -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset==1.47.0
    python bench/images.py --img2dataset-python /tmp/i2d/bin/python [--image-size 256]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from pipelines.resize import RESIZE_MODES, ResizeOptions, resize_image  # noqa: E402

GOAL = 2 / 255

# Run with img2dataset's Python: argv = input dir, output dir, JSON of the settings.
I2D_SIDE = r"""
import io, json, os, sys
from img2dataset.resizer import Resizer
src, dst, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
resizer = Resizer(settings["image_size"], settings["resize_mode"], settings["resize_only_if_bigger"])
for name in sorted(os.listdir(src)):
    with open(os.path.join(src, name), "rb") as f:
        img, w, h, ow, oh, err = resizer(io.BytesIO(f.read()))
    if err:
        print(json.dumps({"name": name, "error": err}))
        continue
    with open(os.path.join(dst, name + ".jpg"), "wb") as f:
        f.write(img)
    print(json.dumps({"name": name, "size": [w, h], "original": [ow, oh]}))
"""


def _content(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / max(1, w - 1), y * 255 / max(1, h - 1), (x + y) * 127 / max(1, w + h - 2)], -1)
    for _ in range(6):  # hard-edged rectangles
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        img[y0:y0 + h // 4, x0:x0 + w // 5] = rng.integers(0, 256, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def inputs(folder: str) -> list[str]:
    made = []

    def save(name: str, img: Image.Image, fmt: str, **kw) -> None:
        img.save(os.path.join(folder, name), format=fmt, **kw)
        made.append(name)

    for i, (w, h) in enumerate([(640, 480), (480, 640), (1000, 300), (97, 61), (256, 256), (2000, 1500),
                                (300, 1000), (150, 120)]):
        rgb = Image.fromarray(_content(w, h, i))
        save(f"rgb-{w}x{h}.jpg", rgb, "JPEG", quality=92)
        if i % 2 == 0:
            save(f"grey-{w}x{h}.jpg", rgb.convert("L"), "JPEG", quality=92)
            save(f"grey-{w}x{h}.png", rgb.convert("L"), "PNG")
        else:
            rgba = rgb.convert("RGBA")
            alpha = np.zeros((h, w), np.uint8)
            alpha[h // 6: h - h // 6, w // 6: w - w // 6] = 255
            rgba.putalpha(Image.fromarray(alpha))
            save(f"rgba-{w}x{h}.png", rgba, "PNG")
            save(f"palette-{w}x{h}.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG")
    rotated = Image.fromarray(_content(400, 200, 99))
    exif = rotated.getexif()
    exif[0x0112] = 6
    save("exif-rotated-400x200.jpg", rotated, "JPEG", quality=92, exif=exif)
    return made


def compare(a: bytes, b: bytes) -> tuple[bool, bool, float]:
    x, y = Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b))
    same_size, same_mode = x.size == y.size, x.mode == y.mode
    if not same_size:
        return False, same_mode, float("nan")
    ax = np.asarray(x.convert("RGB"), np.float64)
    ay = np.asarray(y.convert("RGB"), np.float64)
    return True, same_mode, float(np.abs(ax - ay).mean() / 255)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img2dataset-python", required=True, help="a Python with img2dataset 1.47 installed")
    ap.add_argument("--image-size", type=int, default=256)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="wit-images-")
    src = os.path.join(work, "in")
    os.makedirs(src)
    names = inputs(src)
    print(f"{len(names)} input images; image size {args.image_size}; goal: equal sizes and channels, "
          f"mean pixel difference at most {GOAL * 255:.0f}/255")
    failed = False
    print(f"{'mode':<20}{'only if bigger':>15}{'images':>8}{'sizes equal':>13}{'channels equal':>16}"
          f"{'mean diff':>11}{'worst':>9}  worst image")
    for mode in RESIZE_MODES:
        for only in (False, True):
            settings = {"image_size": args.image_size, "resize_mode": mode, "resize_only_if_bigger": only}
            dst = os.path.join(work, f"out-{mode}-{only}")
            os.makedirs(dst)
            proc = subprocess.run([args.img2dataset_python, "-c", I2D_SIDE, src, dst, json.dumps(settings)],
                                  capture_output=True, text=True, check=True)
            theirs = {r["name"]: r for r in map(json.loads, proc.stdout.splitlines())}
            opts = ResizeOptions(image_size=args.image_size, resize_mode=mode, resize_only_if_bigger=only)
            sizes = channels = 0
            diffs = {}
            for name in names:
                with open(os.path.join(src, name), "rb") as f:
                    ours = resize_image(f.read(), opts)
                with open(os.path.join(dst, name + ".jpg"), "rb") as f:
                    same_size, same_mode, diff = compare(ours.jpeg, f.read())
                same_size &= [ours.original_width, ours.original_height] == theirs[name]["original"]
                sizes += same_size
                channels += same_mode
                diffs[name] = diff
            worst = max(diffs, key=lambda n: diffs[n] if diffs[n] == diffs[n] else float("inf"))
            mean = float(np.nanmean(list(diffs.values())))
            ok = sizes == channels == len(names) and diffs[worst] <= GOAL
            failed |= not ok
            print(f"{mode:<20}{str(only):>15}{len(names):>8}{sizes:>13}{channels:>16}{mean * 255:>9.2f}/255"
                  f"{diffs[worst] * 255:>7.2f}/255  {worst}{'' if ok else '  <- over the goal'}")
    print("all within the goal" if not failed else "SOME OVER THE GOAL")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
