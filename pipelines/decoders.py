"""Processes that turn downloaded bodies into stored images, one per core, fed over pipes.

concurrent.futures' process pool pickles every body, and moves each task
through a feeder thread, a manager thread and a future: in the downloading
process that cost as much CPU as the fetch itself (bench/download.py). Here a
body goes down its worker's pipe as raw bytes from the fetching thread, and one
thread per worker reads the results back and calls the task's callback.

A worker that dies (a crash in a native decoder) is replaced; the tasks it held
are called back with None, and the downloader tries each once more.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import itertools
import logging
import multiprocessing
import pickle
import signal
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from pipelines.resize import ResizeError, ResizeOptions, Resized, resize_image
from wit.core.errors import ErrorKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Processed:
    """What a worker makes of one body: the stored image, or why none."""

    sha256: str
    image: Optional[Resized] = None
    error_kind: Optional[ErrorKind] = None
    error: Optional[str] = None
    cpu_seconds: float = 0.0


def process_body(data: bytes, opts: ResizeOptions) -> Processed:
    """Hash, decode, resize and encode one body."""
    started = time.process_time()
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        image = resize_image(data, opts)
    except ResizeError as e:
        return Processed(sha256, error_kind=e.kind, error=str(e), cpu_seconds=time.process_time() - started)
    return Processed(sha256, image, cpu_seconds=time.process_time() - started)


_HEADER = struct.Struct("<Q")  # the task number; the pickled options follow it


def _worker_main(conn) -> None:
    """A worker's loop: (header [+ options], body) in, (task number, Processed) out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    options: dict[bytes, ResizeOptions] = {}
    while True:
        try:
            head = conn.recv_bytes()
            body = conn.recv_bytes()
        except (EOFError, OSError):
            return
        (token,) = _HEADER.unpack_from(head)
        key = head[_HEADER.size:]
        opts = options.get(key)
        if opts is None:
            opts = options[key] = pickle.loads(key)
        try:
            result = process_body(body, opts)
        except Exception as e:  # a bug in the processing: the sample records it
            result = Processed(hashlib.sha256(body).hexdigest(), error_kind=ErrorKind.OTHER,
                               error=f"{type(e).__name__}: {e}")
        conn.send_bytes(pickle.dumps((token, result), protocol=pickle.HIGHEST_PROTOCOL))


Callback = Callable[[Optional[Processed]], None]


@functools.lru_cache(maxsize=16)
def _pickled(opts: ResizeOptions) -> bytes:
    """A job's options as the workers receive them: pickled once, not once per image."""
    return pickle.dumps(opts, protocol=pickle.HIGHEST_PROTOCOL)


class _Worker:
    def __init__(self, ctx) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child,), name="wit-decoder", daemon=True)
        self.process.start()
        child.close()
        self.lock = threading.Lock()  # guards `waiting` and `dead`
        self.sending = threading.Lock()  # keeps a task's two messages together
        self.waiting: dict[int, Callback] = {}
        self.dead = False


class DecoderPool:
    """`size` worker processes; `submit` from any thread."""

    def __init__(self, size: int) -> None:
        # spawn: a fork of a many-threaded process could inherit a lock another thread held
        self._ctx = multiprocessing.get_context("spawn")
        self._tokens = itertools.count()
        self._lock = threading.Lock()
        self._workers = [self._start() for _ in range(size)]
        self._closing = False
        atexit.register(self.close)  # before multiprocessing's own exit handler ends the workers

    def close(self) -> None:
        """End the workers (their pipes close: each exits its loop)."""
        self._closing = True
        for w in self._workers:
            w.conn.close()

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def _start(self) -> _Worker:
        w = _Worker(self._ctx)
        threading.Thread(target=self._receive, args=(w,), name="wit-decoder-results", daemon=True).start()
        return w

    def submit(self, data: bytes, opts: ResizeOptions, callback: Callback) -> None:
        with self._lock:
            w = min(self._workers, key=lambda w: len(w.waiting))  # the least loaded worker
        token = next(self._tokens)
        key = _pickled(opts)
        with w.lock:
            dead = w.dead
            if not dead:
                w.waiting[token] = callback
        if dead:
            callback(None)
            return
        # a lock of its own: a full pipe blocks the sender, and the results thread must still take results
        with w.sending:
            try:
                w.conn.send_bytes(_HEADER.pack(token) + key)
                w.conn.send_bytes(data)
            except OSError:  # the worker died: its results thread calls every waiting task back
                pass

    def _receive(self, w: _Worker) -> None:
        while True:
            try:
                token, result = pickle.loads(w.conn.recv_bytes())
            except (EOFError, OSError):
                break
            except Exception:
                if self._closing:  # `close` (at exit) shut the pipe in the middle of this read
                    return
                raise
            with w.lock:
                callback = w.waiting.pop(token)
            callback(result)
        if self._closing:
            return
        log.warning("a decoding process ended (exit code %s); starting another", w.process.exitcode)
        with self._lock:
            self._workers = [self._start() if x is w else x for x in self._workers]
        with w.lock:
            w.dead = True
            lost, w.waiting = list(w.waiting.values()), {}
        w.conn.close()
        for callback in lost:
            callback(None)
