"""Training batches straight from webdataset tar shards, resumable to the sample.

Every (rank, loader worker) pair is one *stream*: each epoch it takes its share
of a seeded shard permutation, reads those tars in order, passes the raw
samples through a seeded shuffle buffer and batches them (the last partial batch
of an epoch is dropped, so every batch has the same size on every rank). A
stream's position is (epoch, raw samples taken from the buffer); images are
decoded and cropped after that point, with a per-sample seed, so resuming only
has to re-read, never re-decode, what came before. Unreadable samples are
skipped and counted.

The DataLoader hands out worker batches round-robin; on resume the workers are
renumbered so that the stream due next is served first, which makes a resumed
run see exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import io
import logging
import os
import random
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from wit.core import fileio
from wit.core.errors import InputError
from wit.core.shardformat import iter_tar

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")  # what OpenCLIP's webdataset loader accepts
MAX_IMAGE_PIXELS = 89_478_485


class CorruptSample(ValueError):
    pass


def list_shards(patterns: Sequence[str]) -> list[str]:
    """Tar shards named by globs (local, gs://, s3://, ...), sorted; a directory means DIR/*.tar."""
    expanded = []
    for p in patterns:
        if not any(ch in p for ch in "*?[") and not p.endswith(".tar"):
            p = fileio.join(p, "*.tar")
        expanded.append(p)
    return [m.path for m in fileio.match_files(expanded, "shards")]


def iter_captions(shards: Sequence[str]) -> Iterator[str]:
    """Every readable caption of the shards, in order (what the tokenizer is trained on)."""
    for path in shards:
        for sample in iter_tar(path, lambda e: True):
            try:
                yield caption(sample)
            except CorruptSample:
                continue


def image_bytes(sample: dict) -> bytes:
    for key in IMAGE_KEYS:
        if key in sample:
            return sample[key]
    raise CorruptSample(f"{sample.get('__url__')}: sample {sample.get('__key__')} has no image "
                        f"({', '.join(IMAGE_KEYS)})")


def caption(sample: dict) -> str:
    if "txt" not in sample:
        raise CorruptSample(f"{sample.get('__url__')}: sample {sample.get('__key__')} has no txt")
    try:
        return sample["txt"].decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptSample(f"{sample.get('__url__')}: sample {sample.get('__key__')}: caption is not UTF-8") from e


def open_image(data: bytes) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise CorruptSample(f"{img.width}x{img.height} image is over the pixel cap")
        return img.convert("RGB")
    except CorruptSample:
        raise
    except Exception as e:
        raise CorruptSample(f"undecodable image: {e}") from e


def square_crop(img: Image.Image, size: int, rng: Optional[random.Random] = None,
                min_scale: float = 1.0) -> np.ndarray:
    """A square crop resized to size x size, as HWC uint8. With an rng its side is a random
    fraction (>= min_scale) of the short side at a random place (CLIP's only augmentation);
    without, the centred full short side (evaluation)."""
    w, h = img.size
    side = min(w, h)
    if rng is not None:
        side = max(1, round(side * rng.uniform(min_scale, 1.0)))
        x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
    else:
        x0, y0 = (w - side) // 2, (h - side) // 2
    img = img.crop((x0, y0, x0 + side, y0 + side))
    if side != size:
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def shuffled(items: Iterator, buffer: int, rng: random.Random) -> Iterator:
    """Reservoir-style shuffle buffer: deterministic for a given rng."""
    if buffer <= 1:
        yield from items
        return
    pool: list = []
    for item in items:
        if len(pool) < buffer:
            pool.append(item)
            continue
        i = rng.randrange(buffer)
        pool[i], item = item, pool[i]
        yield item
    rng.shuffle(pool)
    yield from pool


@dataclass
class StreamPosition:
    epoch: int = 0
    taken: int = 0  # raw samples taken from the shuffle buffer in this epoch


@dataclass
class LoaderState:
    """What a checkpoint needs to put the loader back: per stream position, and how many
    batches were consumed (which stream is due next)."""

    streams: list[StreamPosition] = field(default_factory=list)
    batches: int = 0
    corrupt: int = 0

    def to_dict(self) -> dict:
        return {"streams": [[p.epoch, p.taken] for p in self.streams], "batches": self.batches,
                "corrupt": self.corrupt}

    @staticmethod
    def from_dict(d: dict) -> "LoaderState":
        return LoaderState([StreamPosition(e, t) for e, t in d["streams"]], d["batches"], d.get("corrupt", 0))


@dataclass(frozen=True)
class StreamConfig:
    shards: tuple[str, ...]
    batch_size: int
    image_size: int
    tokenizer_json: str
    seed: int = 0
    shuffle_buffer: int = 2000
    min_crop_scale: float = 0.9
    rank: int = 0
    world_size: int = 1
    workers: int = 2


class ShardStream(IterableDataset):
    """Yields whole batches: {"images": uint8 NCHW, "tokens": int64 N x 77, "stream", "epoch", "taken", "corrupt"}."""

    def __init__(self, cfg: StreamConfig, start: Optional[LoaderState] = None):
        self.cfg = cfg
        self.n_streams = max(1, cfg.workers)
        self.start = start or LoaderState([StreamPosition() for _ in range(self.n_streams)])
        if len(self.start.streams) != self.n_streams:
            raise InputError(f"the checkpoint's loader had {len(self.start.streams)} streams per rank, this run "
                             f"{self.n_streams}; resume with the same number of ranks and --workers")
        self._tokenizer = None

    def _stream_for_worker(self) -> int:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        # Renumber so the stream due next (batches % n) is served by worker 0, which the DataLoader asks first.
        return (worker + self.start.batches) % self.n_streams

    def epoch_shards(self, epoch: int, stream: int) -> list[str]:
        order = list(self.cfg.shards)
        random.Random(f"shards-{self.cfg.seed}-{epoch}").shuffle(order)
        total = self.cfg.world_size * self.n_streams
        return order[self.cfg.rank * self.n_streams + stream::total]

    def raw_samples(self, epoch: int, stream: int, errors: list) -> Iterator[dict]:
        def on_error(e: Exception) -> bool:
            errors.append(e)
            log.warning("skipping unreadable data: %s", e)
            return True

        global_stream = self.cfg.rank * self.n_streams + stream
        samples = (s for path in self.epoch_shards(epoch, stream) for s in iter_tar(path, on_error))
        rng = random.Random(f"buffer-{self.cfg.seed}-{epoch}-{global_stream}")
        return shuffled(samples, self.cfg.shuffle_buffer, rng)

    def decode(self, sample: dict, epoch: int) -> tuple[np.ndarray, str]:
        text = caption(sample)
        rng = random.Random(f"crop-{self.cfg.seed}-{epoch}-{sample['__url__']}-{sample['__key__']}")
        img = square_crop(open_image(image_bytes(sample)), self.cfg.image_size, rng, self.cfg.min_crop_scale)
        return img, text

    def tokenizer(self):
        if self._tokenizer is None:
            from trainer.tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_str(self.cfg.tokenizer_json)
        return self._tokenizer

    def __iter__(self) -> Iterator[dict]:
        stream = self._stream_for_worker()
        pos = self.start.streams[stream]
        epoch, skip = pos.epoch, pos.taken
        errors: list = []  # reported with the next batch, even across an epoch boundary
        while True:
            raw = self.raw_samples(epoch, stream, errors)
            taken, emitted = 0, 0
            images, texts = [], []
            for sample in raw:
                taken += 1
                if taken <= skip:
                    if taken == skip:
                        errors.clear()  # counted before the checkpoint
                    continue
                try:
                    img, text = self.decode(sample, epoch)
                except CorruptSample as e:
                    errors.append(e)
                    log.warning("skipping corrupt sample: %s", e)
                    continue
                images.append(img)
                texts.append(text)
                if len(images) == self.cfg.batch_size:
                    yield {"images": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
                           "tokens": self.tokenizer()(texts, trim_multiple=8), "stream": stream, "epoch": epoch,
                           "taken": taken, "corrupt": len(errors)}
                    errors.clear()
                    emitted += 1
                    images, texts = [], []
            if emitted == 0 and skip == 0:
                raise InputError(f"rank {self.cfg.rank} stream {stream}: an epoch gives no full batch of "
                                 f"{self.cfg.batch_size} (shards: {', '.join(self.epoch_shards(epoch, stream))})")
            epoch, skip = epoch + 1, 0


class Loader:
    """An endless iterator of batches that knows its own resumable state."""

    def __init__(self, cfg: StreamConfig, start: Optional[LoaderState] = None):
        per_rank = len(cfg.shards) // cfg.world_size
        if per_rank < 1:
            raise InputError(f"{len(cfg.shards)} shard(s) for {cfg.world_size} rank(s): each rank needs at least one")
        # More workers than shards per rank would leave workers with nothing to read.
        cfg = replace(cfg, workers=min(cfg.workers, per_rank))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # Rust threads and forked workers don't mix
        self.dataset = ShardStream(cfg, start)
        self.state = LoaderState([StreamPosition(p.epoch, p.taken) for p in self.dataset.start.streams],
                                 self.dataset.start.batches, self.dataset.start.corrupt)
        self.loader = DataLoader(self.dataset, batch_size=None, num_workers=cfg.workers,
                                 pin_memory=torch.cuda.is_available(), persistent_workers=cfg.workers > 0,
                                 prefetch_factor=4 if cfg.workers > 0 else None)
        self._it: Optional[Iterator] = None

    def __iter__(self) -> "Loader":
        return self

    def __next__(self) -> dict:
        if self._it is None:
            self._it = iter(self.loader)
        batch = next(self._it)
        self.state.streams[batch["stream"]] = StreamPosition(batch["epoch"], batch["taken"])
        self.state.batches += 1
        self.state.corrupt += batch["corrupt"]
        return batch

