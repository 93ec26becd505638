"""Evaluation sets to keep out of the dataset (`wit build --exclude-near PATH`).

DataComp removes the near duplicates of its evaluation images from its pools;
the CLIP paper only measured the overlap after training. A PATH is a folder
of images, a folder of webdataset tars (clip_benchmark's layout,
`NAME/test/0.tar ...`, is found below it), or a glob of tars. Each image is
hashed as a downloaded image is (resized with the build's settings, then
pHash), so that a re-encoded or resized copy served on the web lands within
the near-duplicate threshold. The images are few (thousands to a hundred
thousand), so they are read on the driver and travel with the job.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator, Sequence

from pipelines.records import EvalImage
from pipelines.resize import ResizeError, ResizeOptions, resize_image
from wit.core import fileio
from wit.core.errors import InputError
from wit.core.shardformat import iter_tar

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class EvalSetError(InputError):
    """An --exclude-near PATH that holds no evaluation image."""


def set_name(path: str) -> str:
    """A set's name: its folder's name (`wds_cifar10` for `wds_cifar10/test/*.tar`, as clip_benchmark names
    sets after their folders)."""
    folder = path.rstrip("/")
    if any(ch in folder for ch in "*?[") or folder.endswith(".tar"):
        folder = folder.rsplit("/", 1)[0] if "/" in folder else "."
    parts = [p for p in folder.split("/") if p not in ("", ".")]
    while len(parts) > 1 and parts[-1] in ("test", "train", "val", "validation"):
        parts.pop()
    return parts[-1] if parts else os.path.basename(os.path.abspath(folder))


def _members(path: str) -> Iterator[tuple[str, str, bytes]]:
    """(where, key, image bytes) of every image below PATH."""
    if any(ch in path for ch in "*?[") or path.endswith(".tar"):
        tars = [m.path for m in fileio.match_files([path], "--exclude-near", EvalSetError)]
        files = []
    else:
        found = [m.path for m in fileio.match_files([fileio.join(fileio.escape(path), "**")], "--exclude-near",
                                                    EvalSetError)]
        tars = sorted(p for p in found if p.endswith(".tar"))
        files = sorted(p for p in found if p.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS)
    for tar in tars:
        def on_error(e: Exception) -> bool:
            log.warning("--exclude-near %s: %s", tar, e)
            return True

        for sample in iter_tar(tar, on_error):
            data = next((sample[k] for k in IMAGE_EXTENSIONS if k in sample), None)
            if data is not None:
                yield tar, sample["__key__"], data
    for file in files:
        yield file, file.rsplit("/", 1)[-1].rsplit(".", 1)[0], fileio.read_bytes(file)


def read_eval_set(path: str, resize: ResizeOptions, name: str) -> list[EvalImage]:
    images = []
    for where, key, data in _members(path):
        try:
            images.append(EvalImage(name, key, resize_image(data, resize).phash))
        except ResizeError as e:  # one bad image does not lose the set
            log.warning("--exclude-near %s: %s: skipped: %s", where, key, e)
    if not images:
        raise EvalSetError(f"--exclude-near {path}: no image found (a folder of images, a folder of webdataset "
                           "tars, or a glob of tars)")
    log.info("--exclude-near %s: %d images of evaluation set %r", path, len(images), name)
    return images


def read_eval_sets(paths: Sequence[str], resize: ResizeOptions) -> list[EvalImage]:
    """Every image of every set; sets whose folders share a name are told apart by their paths."""
    names = [set_name(p) for p in paths]
    return [image for path, name in zip(paths, names)
            for image in read_eval_set(path, resize, name if names.count(name) == 1 else path.rstrip("/"))]
