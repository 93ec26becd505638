"""Downloading one shard: fetch, decode, resize and hash every sample in a thread pool.

A shard is the unit of work (as in img2dataset): its samples are fetched
concurrently by `threads` threads (the work is network-bound), decoded and
resized by at most one thread per core (Pillow releases the GIL meanwhile),
and the result is staged to one file so that image bytes never travel
through a Beam shuffle.

`DownloadShards` is the job's stage: shards of pending samples in, each staged
to DIR/_staging unless it is finished or already staged, and an `ImageInfo`
out per fetched image for image dedup.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Optional, Sequence
from urllib.parse import urlsplit

import apache_beam as beam

from pipelines.fetch import FetchOptions, fetch
from pipelines.imagededup import ImageInfo
from pipelines.resize import ResizeError, ResizeOptions, resize_image
from pipelines.stages import counter
from wit import fileio, shardformat
from wit.shardformat import Sample, Status

log = logging.getLogger(__name__)


def _cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)  # the cores this process may use, in a container too
    return len(affinity(0)) if affinity else os.cpu_count() or 1


# Decoding and resizing are CPU work: more threads at it than there are cores only adds switching
# (bench/fetch.py, 32 threads: 3.6 ms of CPU an image without this limit, 2.9 ms with it). The other
# threads go on waiting for the network meanwhile.
cpu_slots = threading.BoundedSemaphore(_cores())


def download_sample(sample: Sample, fetch_opts: FetchOptions, resize_opts: ResizeOptions) -> Sample:
    got = fetch(sample.url, fetch_opts)
    if not got.ok:
        return replace(sample, status=Status.OPTED_OUT if got.opted_out else Status.FAILED_TO_DOWNLOAD,
                       error_message=got.error, error_kind=got.kind, http_status=got.http_status)
    with cpu_slots:
        sha256 = hashlib.sha256(got.data).hexdigest()
        try:
            img = resize_image(got.data, resize_opts)
        except ResizeError as e:
            return replace(sample, status=Status.FAILED_TO_RESIZE, error_message=str(e), error_kind=e.kind,
                           http_status=got.http_status, sha256=sha256)
    return replace(sample, status=Status.SUCCESS, error_message=None, http_status=got.http_status, sha256=sha256,
                   phash=f"{img.phash:016x}", width=img.width, height=img.height,
                   original_width=img.original_width, original_height=img.original_height, exif=img.exif,
                   jpg=img.jpeg)


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


class _HostQueues:
    """The shard's samples queued per host; a thread takes the next sample of the next host (round robin)
    that has fewer than `per_host` of the shard's samples in flight. Threads never wait on a busy host
    while another host has work: a slow or hostile host costs its own URLs time, not the others'."""

    def __init__(self, samples: Sequence[Sample], per_host: int) -> None:
        self.per_host = per_host
        self.queues: dict[str, deque[int]] = {}
        for i, s in enumerate(samples):
            self.queues.setdefault(_host(s.url), deque()).append(i)
        self.turn = deque(self.queues)
        self.busy: dict[str, int] = {}
        self.left = len(samples)
        self.cond = threading.Condition()

    def take(self) -> Optional[tuple[str, int]]:
        with self.cond:
            while True:
                if self.left == 0:
                    return None
                for _ in range(len(self.turn)):
                    host = self.turn[0]
                    self.turn.rotate(-1)
                    if self.busy.get(host, 0) < self.per_host:
                        i = self.queues[host].popleft()
                        if not self.queues[host]:
                            self.turn.remove(host)
                        self.busy[host] = self.busy.get(host, 0) + 1
                        self.left -= 1
                        return host, i
                self.cond.wait()  # every host with work is at its limit: one finishing frees a slot

    def done(self, host: str) -> None:
        with self.cond:
            self.busy[host] -= 1
            self.cond.notify_all()  # a waiter may be for this host, or may have nothing left to wait for


def download_shard(samples: Sequence[Sample], fetch_opts: FetchOptions, resize_opts: ResizeOptions,
                   threads: int = 32) -> list[Sample]:
    """Results in input order, one per sample, whatever happened to each."""
    if not samples:
        return []
    results: list[Optional[Sample]] = [None] * len(samples)
    queues = _HostQueues(samples, max(1, fetch_opts.max_per_host))

    def work() -> None:
        while (taken := queues.take()) is not None:
            host, i = taken
            try:
                results[i] = download_sample(samples[i], fetch_opts, resize_opts)
            finally:
                queues.done(host)

    workers = max(1, min(threads, len(samples)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for f in [pool.submit(work) for _ in range(workers)]:
            f.result()
    return results  # type: ignore[return-value]


# statuses whose image was downloaded
FETCHED = (Status.SUCCESS, Status.DUPLICATE, Status.NEAR_DUPLICATE, Status.EVAL_DUPLICATE)


def image_info(shard: int, s: Sample) -> ImageInfo:
    return ImageInfo(uid=s.uid, key=s.key, shard=shard, sha256=s.sha256, phash=int(s.phash, 16),
                     pixels=(s.original_width or 0) * (s.original_height or 0))


SHARDS = "shards"  # StageShard's second output: the number of every shard it saw


class DownloadShards(beam.PTransform):
    """(shard, pending samples) in; (ImageInfo of every downloaded image, every shard number) out."""

    def __init__(self, out: str, finished: frozenset[int], fetch_opts: FetchOptions, resize_opts: ResizeOptions,
                 threads: int):
        super().__init__()
        self.stage = StageShard(out, finished, fetch_opts, resize_opts, threads)

    def expand(self, pending):
        staged = pending | "StageShard" >> beam.ParDo(self.stage).with_outputs(SHARDS, main="images")
        return staged.images, staged[SHARDS]


class StageShard(beam.DoFn):
    """(shard, pending samples) in; ImageInfo out per downloaded image, and the shard number on `SHARDS`."""

    downloaded = counter("downloaded_this_run")

    def __init__(self, out: str, finished: frozenset[int], fetch_opts: FetchOptions,
                 resize_opts: ResizeOptions, threads: int):
        self.out, self.finished = out, finished
        self.fetch_opts, self.resize_opts, self.threads = fetch_opts, resize_opts, threads

    def process(self, item):
        shard, pending = item
        pending = sorted(pending, key=lambda s: s.key)
        p = shardformat.paths(self.out, shard)
        if shard in self.finished:
            samples = shardformat.from_table(shardformat.read_parquet(
                p["parquet"], columns=["key", "uid", "url", "caption", "status", "sha256", "phash",
                                       "original_width", "original_height"]))
        else:
            samples = self._staged(p["staging"], pending)
            if samples is None:
                samples = download_shard(pending, self.fetch_opts, self.resize_opts, self.threads)
                shardformat.write_parquet(p["staging"], samples, shardformat.STAGING_SCHEMA)
                self.downloaded.inc(len(samples))
        yield beam.pvalue.TaggedOutput(SHARDS, shard)
        for s in samples:
            if s.status in FETCHED:
                yield image_info(shard, s)

    @staticmethod
    def _staged(path: str, pending: list[Sample]) -> Optional[list[Sample]]:
        """A staging file left by an interrupted run, if it holds exactly these samples."""
        if not fileio.exists(path):
            return None
        try:
            staged = shardformat.read_parquet(path, columns=["key", "uid"]).to_pylist()
        except Exception as e:  # a torn file cannot exist (atomic writes), but a foreign one can
            log.warning("%s: unreadable staging file, downloading again: %s", path, e)
            return None
        if [(r["key"], r["uid"]) for r in staged] != [(s.key, s.uid) for s in pending]:
            return None
        return shardformat.read_samples(path)
