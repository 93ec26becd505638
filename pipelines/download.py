"""Downloading shards: many requests in flight per process, decoding and resizing on every core.

The network and the CPU are separate resources and get separate workers. One
`Downloader` per worker process keeps requests in flight on threads that only
fetch (a request is mostly waiting), and hands each body to a pool of
processes, one per core, that hash, decode, resize and encode it (that work
holds the GIL for much of its time, so threads of one process could not use
more than about one core).

How many requests are in flight follows Little's law: to keep the pool fed,
the fetchers must start bodies at the rate the pool finishes them, so
in flight = pool rate x mean fetch time / share of fetches that give an image,
with headroom, all measured as the download goes (`_Controller`). Bodies wait
for the pool in a bounded queue; when it is full, fetchers wait instead of
fetching, so memory stays bounded whichever side is faster. Near the end of
the queued work the queue deepens to what the pool finishes in the time the
slowest fetches take (bounded by `BACKLOG_BYTES`): the last requests then
start early enough that the pool works through it while the slowest of them
are still on the way, instead of idling until they are answered.

Work is queued per host across every shard the process has open: a thread
takes the next sample of the next host (round robin) below its
`max_per_host` limit, so a slow or hostile host costs its own URLs time. The
job's stage (`DownloadToStaging`) submits the next shard while the last one's
stragglers are still in flight, so a shard's slowest URL never idles the
process; a shard's results are staged to one file as soon as it is complete,
so image bytes never travel through a Beam shuffle.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Iterator, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from pipelines.fetch import FetchOptions, Fetched, fetch, host_limits, host_of
from pipelines.records import ImageInfo
from pipelines.decoders import DecoderPool, Processed, cores, shared_pool
from pipelines.resize import ResizeOptions
from pipelines.counters import MAIN, CountingDoFn, count_in, counter
from wit.core import fileio, shardformat
from wit.core.shardformat import Sample, Status
from wit.core.errors import ErrorKind

log = logging.getLogger(__name__)


# Sizing (measured in bench/download.py; figures in bench/RESULTS.md).
# The adaptive limit of requests in flight stays in this range: below it a burst of fast failures would
# starve the pool; above it threads and in-flight bodies cost more memory than any latency seen needs.
MIN_IN_FLIGHT = 16
MAX_IN_FLIGHT = 1024
# in flight = HEADROOM x what Little's law says: latency varies, and a body that arrives before the pool
# has room waits in the queue instead of idling a core.
HEADROOM = 2.0
# Bodies fetched and waiting for the pool, per pool process, while more than the end's backlog is queued:
# enough that no process waits for work while the fetchers catch up.
BACKLOG_PER_PROCESS = 8
# Bodies handed to each pool process and not yet done; the rest of a deeper backlog waits in the fetching
# process.
POOL_PER_PROCESS = 16
# The backlog's bound in bytes, whatever the latency says (bodies are capped by --max-bytes each).
BACKLOG_BYTES = 256 << 20
# The backlog covers this quantile of the recent fetch times, over this many fetches.
SLOW_QUANTILE, SLOW_WINDOW = 0.99, 1024
# Before any measurement: a web-like mean fetch time and CPU per image, in seconds (bench/download.py).
START_LATENCY, START_CPU = 0.3, 0.004


def fetched_sample(sample: Sample, got: Fetched, done: Optional[Processed]) -> Sample:
    """The sample as its download ended: a failed fetch, a failed decode, or the stored image."""
    if not got.ok:
        return replace(sample, status=Status.OPTED_OUT if got.opted_out else Status.FAILED_TO_DOWNLOAD,
                       error_message=got.error, error_kind=got.kind, http_status=got.http_status)
    assert done is not None
    if done.image is None:
        return replace(sample, status=Status.FAILED_TO_RESIZE, error_message=done.error, error_kind=done.error_kind,
                       http_status=got.http_status, sha256=done.sha256)
    img = done.image
    return replace(sample, status=Status.SUCCESS, error_message=None, http_status=got.http_status,
                   sha256=done.sha256, phash=f"{img.phash:016x}", width=img.width, height=img.height,
                   original_width=img.original_width, original_height=img.original_height, exif=img.exif,
                   jpg=img.jpeg)


class ShardJob:
    """One shard's samples on their way through the downloader; `results` in input order when `done`."""

    def __init__(self, samples: Sequence[Sample], fetch_opts: FetchOptions, resize_opts: ResizeOptions) -> None:
        self.samples = list(samples)
        self.fetch_opts, self.resize_opts = fetch_opts, resize_opts
        self.results: list[Optional[Sample]] = [None] * len(self.samples)
        self._left = len(self.samples)
        self._lock = threading.Lock()
        self.done = threading.Event()
        if not self.samples:
            self.done.set()

    def finish(self, i: int, result: Sample) -> None:
        with self._lock:
            self.results[i] = result
            self._left -= 1
            if self._left == 0:
                self.done.set()


@dataclass(frozen=True)
class _Body:
    """A fetched body on its way to the pool."""

    job: ShardJob
    i: int
    got: Fetched
    retried: bool = False


class _Controller:
    """The limit of requests in flight, from Little's law over what the download has measured so far."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.latency, self.cpu, self.image_share = START_LATENCY, START_CPU, 1.0
        self.limit = self._target()
        self._recent: list[float] = []  # the last SLOW_WINDOW fetch times, a ring
        self._fetches = 0
        self.slow = START_LATENCY  # SLOW_QUANTILE of `_recent`
        self._last_done: Optional[float] = None
        self.interval = START_CPU / processes  # mean time between images the pool finishes while it has work
        self.backlog_limit = self._backlog_target()

    def _target(self) -> int:
        rate = self.processes / max(self.cpu, 1e-4)  # images/s the pool finishes
        need = HEADROOM * rate * self.latency / max(self.image_share, 0.05)
        return max(MIN_IN_FLIGHT, min(MAX_IN_FLIGHT, math.ceil(need)))

    def _backlog_target(self) -> int:
        """Bodies the pool finishes, at the rate it has been finishing them, in the time the slowest fetches
        take: a queue that keeps it busy from the last request's start to its answer."""
        return max(self.processes * BACKLOG_PER_PROCESS, math.ceil(self.slow / max(self.interval, 1e-6)))

    def fetched(self, seconds: float, image: bool) -> None:
        # exponentially weighted means over about the last 200 fetches: they follow a change of hosts
        self.latency += (seconds - self.latency) / 200
        self.image_share += ((1.0 if image else 0.0) - self.image_share) / 200
        self.limit = self._target()
        if len(self._recent) < SLOW_WINDOW:
            self._recent.append(seconds)
        else:
            self._recent[self._fetches % SLOW_WINDOW] = seconds
        self._fetches += 1
        if self._fetches % 128 == 0:  # a sort of the window now and then costs less than a running quantile
            recent = sorted(self._recent)
            self.slow = recent[int(SLOW_QUANTILE * (len(recent) - 1))]
            self.backlog_limit = self._backlog_target()

    def processed(self, cpu_seconds: float, busy: bool) -> None:
        """`busy`: the pool had other bodies waiting, so the time since the last one done is its pace (not
        a wait for bodies)."""
        self.cpu += (cpu_seconds - self.cpu) / 200
        self.limit = self._target()
        now = time.monotonic()
        if busy and self._last_done is not None:
            self.interval += (now - self._last_done - self.interval) / 200
        self._last_done = now


class Downloader:
    """The process's fetch threads, pool and queues, shared by every shard and DoFn in the process."""

    def __init__(self, processes: int = 0) -> None:
        """`processes`: a pool of its own of that size, instead of the process's shared one."""
        self._own_pool = processes
        self.processes = processes or cores()
        self.control = _Controller(self.processes)
        self._cond = threading.Condition()
        self._queues: dict[str, deque[tuple[ShardJob, int]]] = {}
        self._ready: deque[str] = deque()  # hosts with queued work and below their limit, in turn order
        self._in_ready: set[str] = set()
        self._queued = 0
        self._threads = 0
        self._waiting = 0  # threads waiting in `_take`
        self._starting = 0  # threads started that have not yet come to `_take`
        self._fixed: Optional[int] = None  # a limit set by --threads instead of the controller's
        self.in_flight = 0
        self.backlog = 0  # bodies fetched and not yet done by the pool
        self.backlog_bytes = 0
        self._unsent: deque[_Body] = deque()  # the part of the backlog not yet handed to the pool
        self._pool: Optional[DecoderPool] = None
        self._pool_lock = threading.Lock()
        host_limits.on_free(self._host_free)

    # ------------------------------------------------------------ queueing

    @property
    def limit(self) -> int:
        return self._fixed or self.control.limit

    def queued(self) -> int:
        """Samples submitted and not yet started."""
        return self._queued

    def submit(self, samples: Sequence[Sample], fetch_opts: FetchOptions, resize_opts: ResizeOptions,
               threads: int = 0) -> ShardJob:
        """Queue a shard; `threads` > 0 fixes the requests in flight instead of adapting them."""
        job = ShardJob(samples, fetch_opts, resize_opts)
        with self._cond:
            self._fixed = threads or None
            for i, s in enumerate(job.samples):
                host = host_of(s.url)
                self._queues.setdefault(host, deque()).append((job, i))
                self._turn(host)
            self._queued += len(job.samples)
            self._spawn()
            self._wake()
        return job

    def _turn(self, host: str) -> None:
        """Put `host` at the end of the turn if it has queued work below its limit (the lock held)."""
        queue = self._queues.get(host)
        if queue and host not in self._in_ready and \
                host_limits.busy(host) < max(1, queue[0][0].fetch_opts.max_per_host):
            self._ready.append(host)
            self._in_ready.add(host)

    def _spawn(self) -> None:
        """One more fetch thread if every thread is fetching and the limit and the work allow (the lock
        held). Each thread that takes a sample calls this again, so threads grow as fast as they start, and
        only to the requests that can be in flight: a thread past them would only wake to wait again."""
        if not self._waiting and not self._starting and \
                self._threads < min(self.limit, self._queued + self.in_flight):
            self._threads += 1
            self._starting += 1
            threading.Thread(target=self._fetcher, name=f"wit-fetch-{self._threads}", daemon=True).start()

    def _ending(self) -> int:
        """Queued samples below which the backlog deepens for the end (`_backlog_full`): twice the deep
        backlog leaves time to build it, as the fetchers may go about twice the pool's pace (`HEADROOM`)."""
        return 2 * self.control.backlog_limit

    def ahead(self) -> int:
        """Samples worth keeping queued: the requests that may be in flight, and the end's margin, so that a
        stage with more to submit submits it before the backlog deepens for an end that is not one."""
        return self.limit + self._ending()

    def _backlog_full(self) -> bool:
        """While much is queued, a shallow backlog is enough: fetches finish at the pool's pace. Near the end
        it deepens to what the pool does in the time of the slowest fetches, so that the pool still has work
        while the last and slowest of them are on the way, instead of idling until they are answered."""
        ending = self._queued <= self._ending()
        limit = self.control.backlog_limit if ending else self.processes * BACKLOG_PER_PROCESS
        return self.backlog >= limit or self.backlog_bytes >= BACKLOG_BYTES

    def _can_take(self) -> bool:
        """Whether a fetch thread could start a sample now (the lock held)."""
        return bool(self._ready) and self.in_flight < self.limit and not self._backlog_full()

    def _can_send(self, room: int = 1) -> bool:
        """Whether a body waits for the pool, and the pool has `room` for more (the lock held)."""
        return bool(self._unsent) and \
            self.backlog - len(self._unsent) <= self.processes * POOL_PER_PROCESS - room

    def _sendable(self) -> list[_Body]:
        """The bodies the pool has room for, oldest first, taken from the queue (the lock held)."""
        sending = []
        while self._can_send():
            sending.append(self._unsent.popleft())
        return sending

    def _wake(self) -> None:
        """Wake one waiting thread if it could start a sample, or hand the pool bodies once it has room for
        half its share (the lock held): a thread woken for nothing, or for one body, costs two thread switches
        and a turn at the GIL, which is most of what the fetching process's system time is
        (bench/download.py)."""
        if self._waiting and (self._can_send(room=self.processes * POOL_PER_PROCESS // 2) or self._can_take()):
            self._cond.notify()

    def _take(self) -> Union[list[_Body], tuple[str, ShardJob, int], None]:
        """Bodies to hand to the pool (first: they keep it busy), else the next sample to fetch, or None when
        the thread has had nothing to do for a while. Threads wait rather than end when the limit falls: it
        moves with every measurement, and starting threads costs."""
        with self._cond:
            while True:
                sending = self._sendable()
                if sending:
                    self._wake()
                    return sending
                if self._can_take():
                    host = self._ready.popleft()
                    self._in_ready.discard(host)
                    queue = self._queues[host]
                    if not host_limits.try_take(host, queue[0][0].fetch_opts.max_per_host):
                        continue  # a fetch outside the downloader took the last slot: back in turn when it frees
                    job, i = queue.popleft()
                    if not queue:
                        del self._queues[host]
                    self._turn(host)
                    self._queued -= 1
                    self.in_flight += 1
                    self._spawn()
                    self._wake()  # one waiter at a time, each passing it on: no herd of hundreds
                    return host, job, i
                self._waiting += 1
                if not self._queues and not self._queued and not self._unsent:
                    woken = self._cond.wait(30.0)
                    self._waiting -= 1
                    if not woken and not self._queued:  # idle: the thread goes
                        self._threads -= 1
                        return None
                else:  # every change that lets a thread start wakes one; the timeout is a safety net
                    self._cond.wait(5.0)
                    self._waiting -= 1

    def _release(self, host: str) -> None:
        with self._cond:
            self.in_flight -= 1
            self._spawn()
            self._wake()
        host_limits.give(host)  # `_host_free` puts the host back in turn

    def _host_free(self, host: str) -> None:
        """A slot of `host` was given back (here or by a fetch outside the downloader)."""
        with self._cond:
            if host in self._queues:
                self._turn(host)
                self._wake()

    # ------------------------------------------------------------ fetching and processing

    def _fetcher(self) -> None:
        with self._cond:
            self._starting -= 1
        while (taken := self._take()) is not None:
            if isinstance(taken, list):
                self._send(taken)
                continue
            host, job, i = taken
            sample = job.samples[i]
            started = time.monotonic()
            try:
                with host_limits.holds(host):
                    got = fetch(sample.url, job.fetch_opts)
            except Exception as e:  # a bug; the sample records it and the shard goes on
                log.exception("fetching %s", sample.url)
                got = Fetched(kind=ErrorKind.OTHER, error=f"{type(e).__name__}: {e}")
            finally:
                self._release(host)
            self.control.fetched(time.monotonic() - started, got.ok)
            if not got.ok:
                job.finish(i, fetched_sample(sample, got, None))
                continue
            self._process(_Body(job, i, got))

    def _process(self, body: _Body) -> None:
        """A fetched body into the backlog; those the pool has room for are handed to it by this thread. The
        threads that read the pool's results never hand it bodies: one blocked on a full pipe would stop
        reading the results that empty it."""
        with self._cond:
            self.backlog += 1
            self.backlog_bytes += len(body.got.data)
            self._unsent.append(body)
            sending = self._sendable()
        self._send(sending)

    def _send(self, bodies: list[_Body]) -> None:
        pool = self._decoders()
        for body in bodies:
            pool.submit(body.got.data, body.job.resize_opts, functools.partial(self._processed, body))

    def _processed(self, body: _Body, done: Optional[Processed]) -> None:
        with self._cond:
            self.backlog -= 1
            self.backlog_bytes -= len(body.got.data)
            busy = self.backlog >= self.processes
            self._wake()
        job, i, got = body.job, body.i, body.got
        if done is None:  # its decoding process died (a crash in a native library): one more try
            if not body.retried:
                self._process(replace(body, retried=True))  # on the dead process's thread: it reads no more
                return
            done = Processed(hashlib.sha256(got.data).hexdigest(), error_kind=ErrorKind.DECODE,
                             error="the decoding process died on this image")
        else:
            self.control.processed(done.cpu_seconds, busy)
        job.finish(i, fetched_sample(job.samples[i], got, done))

    def start(self) -> None:
        """Start the decoding processes now rather than at the first body."""
        self._decoders()

    def _decoders(self) -> DecoderPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = DecoderPool(self._own_pool) if self._own_pool else shared_pool()
            return self._pool


_downloader: Optional[Downloader] = None
_downloader_lock = threading.Lock()


def downloader() -> Downloader:
    """The process's downloader."""
    global _downloader
    with _downloader_lock:
        if _downloader is None:
            _downloader = Downloader()
        return _downloader


def download_shard(samples: Sequence[Sample], fetch_opts: FetchOptions, resize_opts: ResizeOptions,
                   threads: int = 0) -> list[Sample]:
    """Results in input order, one per sample, whatever happened to each."""
    job = downloader().submit(samples, fetch_opts, resize_opts, threads)
    job.done.wait()
    return job.results  # type: ignore[return-value]


# statuses whose image was downloaded
FETCHED = (Status.SUCCESS, Status.DUPLICATE, Status.NEAR_DUPLICATE, Status.EVAL_DUPLICATE)


def image_info(shard: int, s: Sample) -> ImageInfo:
    return ImageInfo(uid=s.uid, key=s.key, shard=shard, sha256=s.sha256, phash=int(s.phash, 16),
                     pixels=(s.original_width or 0) * (s.original_height or 0))


SHARDS = "shards"  # DownloadToStaging's second output: the number of every shard it saw


class DownloadShards(beam.PTransform):
    """(shard, pending samples) in; (ImageInfo of every downloaded image, every shard number) out."""

    def __init__(self, out: str, finished: frozenset[int], fetch_opts: FetchOptions, resize_opts: ResizeOptions,
                 threads: int):
        super().__init__()
        self.to_staging = DownloadToStaging(out, finished, fetch_opts, resize_opts, threads)

    def expand(self, pending):
        staged = count_in(pending, "DownloadToStaging", self.to_staging, tags=[SHARDS])
        return staged[MAIN], staged[SHARDS]


@dataclass
class _Open:
    shard: int
    staging: str
    job: ShardJob


class DownloadToStaging(CountingDoFn):
    """(shard, pending samples) in; ImageInfo out per downloaded image, and the shard number on `SHARDS`.

    A shard is submitted to the process's downloader and the element returns at once while the
    downloader has no more queued work than requests in flight, so the next shard's fetches overlap this
    one's stragglers; shards still open when the bundle ends are waited for in `finish_bundle`.
    """

    downloaded = counter("downloaded_this_run")

    def __init__(self, out: str, finished: frozenset[int], fetch_opts: FetchOptions,
                 resize_opts: ResizeOptions, threads: int):
        self.out, self.finished = out, finished
        self.fetch_opts, self.resize_opts, self.threads = fetch_opts, resize_opts, threads

    def setup(self) -> None:
        downloader().start()  # the decoding processes import while the first requests wait on the network

    def start_bundle(self) -> None:
        super().start_bundle()
        self.open: list[_Open] = []

    def process(self, item):
        shard, pending = item
        pending = sorted(pending, key=lambda s: s.key)
        p = shardformat.paths(self.out, shard)
        if shard in self.finished:
            samples = shardformat.from_table(shardformat.read_parquet(
                p.parquet, columns=["key", "uid", "url", "caption", "status", "sha256", "phash",
                                       "original_width", "original_height"]))
            yield from self._outputs(shard, samples)
            return
        samples = self._staged(p.staging, pending)
        if samples is not None:
            yield from self._outputs(shard, samples)
            return
        engine = downloader()
        while self.open and engine.queued() >= engine.ahead():  # enough queued: let the open shards advance
            self.open[0].job.done.wait(0.2)
            yield from self._harvest()
        self.open.append(_Open(shard, p.staging, engine.submit(pending, self.fetch_opts, self.resize_opts,
                                                                  self.threads)))
        yield from self._harvest()

    def finish_bundle(self):
        while self.open:
            self.open[0].job.done.wait()
            for out in self._harvest():
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
                else:
                    yield GlobalWindows.windowed_value(out)
        yield from super().finish_bundle()

    def _harvest(self) -> Iterator:
        """The outputs of every open shard that is complete, each staged first."""
        still = []
        for o in self.open:
            if not o.job.done.is_set():
                still.append(o)
                continue
            samples: list[Sample] = o.job.results  # type: ignore[assignment]
            shardformat.write_parquet(o.staging, samples, shardformat.STAGING_SCHEMA)
            self.tally.count(self.downloaded, len(samples))
            yield from self._outputs(o.shard, samples)
        self.open = still

    @staticmethod
    def _outputs(shard: int, samples: Sequence[Sample]) -> Iterator:
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
