"""The download's progress while it runs: shards done of all, images, images/s, success rate and an ETA.

The local runners hold the driver until the job ends, and distributed runners
show their counters on their own consoles, so the driver watches what the job
leaves in DIR, the same on every runner: a shard's staging file appears when
its download is done (its status column says how many images arrived), its
`_stats.json` when it is written. On a terminal a tqdm bar; otherwise (a log
file, a Dataflow or Spark driver) one line a minute on stderr.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Optional, TextIO

from wit.core import fileio, shardformat
from wit.core.shardformat import Status

LOG_EVERY = 60.0  # seconds between lines when there is no terminal


class DownloadProgress:
    """Polls DIR every `interval` seconds from a thread of the driver while the download job runs (by
    default 2 s on a local disk; 30 s on an object store, where a listing of 40,000 shards is 40 requests)."""

    def __init__(self, out: str, shards: int, finished: frozenset[int], interval: Optional[float] = None,
                 stream: Optional[TextIO] = None, bar: Optional[bool] = None) -> None:
        self.out, self.shards = out, shards
        self.interval = interval if interval is not None else (2.0 if fileio.is_local(out) else 30.0)
        self.stream = stream or sys.stderr
        self.bar_wanted = self.stream.isatty() if bar is None else bar
        self.done: set[int] = set(finished)
        self.before = len(self.done)
        self.images = self.samples = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._bar = None
        self._last_line = self.started  # the first line after a minute; a short run prints only its last
        self._ended = False

    def __enter__(self) -> "DownloadProgress":
        if self.bar_wanted:
            from tqdm import tqdm

            self._bar = tqdm(total=self.shards, initial=self.before, unit="shard", desc="download",
                             file=self.stream, dynamic_ncols=True)
        self._thread = threading.Thread(target=self._run, name="wit-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll()
        if self._bar is not None:
            self._bar.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # progress must never fail the build; the next poll tries again
                pass

    def poll(self) -> None:
        """Counts the shards that reached staging or were written since the last poll."""
        for shard, path in shardformat.numbered_files(self.out, "_staging", ".parquet"):
            if shard not in self.done:
                try:
                    status = shardformat.read_parquet(path, columns=["status"]).column("status").to_pylist()
                except Exception:  # being renamed into place, or just written over: next time
                    continue
                self._count(shard, len(status), sum(s == Status.SUCCESS.value for s in status))
        for shard, path in shardformat.numbered_files(self.out, "shards", "_stats.json"):
            if shard not in self.done:
                try:
                    stats = json.loads(fileio.read_bytes(path))
                except Exception:
                    continue
                self._count(shard, stats.get("count", 0), shardformat.status_count(stats, Status.SUCCESS))
        self._show()

    def _count(self, shard: int, samples: int, successes: int) -> None:
        self.done.add(shard)
        self.samples += samples
        self.images += successes

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.started)
        new = len(self.done) - self.before
        left = self.shards - len(self.done)
        eta = f"{_duration(left * elapsed / new)}" if new and left else ("0s" if not left else "?")
        rate = f"{self.images / elapsed:,.0f} images/s"
        ok = f"{self.images / self.samples:.0%} fetched" if self.samples else "-"
        return f"shards {len(self.done):,}/{self.shards:,}, {self.images:,} images, {rate}, {ok}, ETA {eta}"

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.n = len(self.done)
            elapsed = max(1e-9, time.monotonic() - self.started)
            ok = f", {self.images / self.samples:.0%} fetched" if self.samples else ""
            self._bar.set_postfix_str(f"{self.images:,} images, {self.images / elapsed:,.0f}/s{ok}", refresh=True)
            return
        now, ended = time.monotonic(), len(self.done) == self.shards
        if now - self._last_line >= LOG_EVERY or ended and not self._ended:
            print(f"wit build: {self.line()}", file=self.stream, flush=True)
            self._last_line, self._ended = now, ended


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
