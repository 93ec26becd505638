"""Processes that turn downloaded bodies into stored images, one per core, fed over pipes.

concurrent.futures' process pool pickles every body, and moves each task
through a feeder thread, a manager thread and a future: in the downloading
process that cost as much CPU as the fetch itself (bench/download.py). Here a
body goes down its worker's pipe as raw bytes from the fetching thread, and one
thread per worker reads the results back and calls the task's callback.

A worker that dies (a crash in a native decoder) is replaced; the tasks it held
are called back with None, and the downloader tries each once more.

The same processes take other CPU work of the job (`call`): writing a shard
holds the GIL for most of its time, so threads of the job's process would write
one shard at a time, while these cores are idle once the download has ended.
A worker imports what those calls need (`IDLE_IMPORTS`) the first time it waits
for work a while, which is at the download's end, not in its busiest part.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import hashlib
import importlib
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pipelines.resize import ResizeError, ResizeOptions, Resized, preload, resize_image
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


def cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)  # the cores this process may use, in a container too
    return len(affinity(0)) if affinity else os.cpu_count() or 1


# The modules of the job's calls: writing a shard (its writer imports Beam's filesystems), and after how
# long without work a worker imports them.
IDLE_IMPORTS = ("pipelines.shards",)
IDLE_SECONDS = 1.0

_HEADER = struct.Struct("<QB")  # the task number and kind; a body's pickled options follow it
_BODY, _CALL = 0, 1

# Messages go over the pipes framed as multiprocessing's Connection frames them (a 4-byte length), but several
# frames in one system call, and results are read through a buffer. Each system call of the fetching process
# hands the GIL to another of its threads and back, and Connection takes three writes to send a task and two
# reads to take a result (bench/download.py).
_LENGTH = struct.Struct("!i")
_LONGEST = 0x7FFFFFFF  # longer messages take Connection's own framing
_READ_BUFFER = 1 << 20


def _send_framed(conn, *messages: bytes) -> None:
    """The messages as `conn.send_bytes` would send them one by one, in as few writes as the pipe takes."""
    if any(len(m) > _LONGEST for m in messages):
        for m in messages:
            conn.send_bytes(m)
        return
    views = []
    for m in messages:
        views += [memoryview(_LENGTH.pack(len(m))), memoryview(m)]
    while views:
        sent = os.writev(conn.fileno(), views)
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if sent:
            views[0] = views[0][sent:]


def _read_framed(reader) -> bytes:
    """One message sent by `_send_framed` or `Connection.send_bytes`, read from a buffered reader of the pipe."""
    head = reader.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError
    size, = _LENGTH.unpack(head)
    if size == -1:
        longer = reader.read(8)
        if len(longer) < 8:
            raise EOFError
        size, = struct.unpack("!Q", longer)
    message = reader.read(size)
    if len(message) < size:
        raise EOFError
    return message


@dataclass(frozen=True)
class _Returned:
    """What a `call` gave: its value, or the exception it raised."""

    value: Any = None
    error: Optional[BaseException] = None


def _run_call(message: bytes) -> _Returned:
    try:
        fn, args = pickle.loads(message)
        return _Returned(fn(*args))
    except Exception as e:
        try:
            pickle.loads(pickle.dumps(e))  # some exceptions pickle but cannot be rebuilt from their args
        except Exception:
            e = RuntimeError(f"{type(e).__name__}: {e}")
        return _Returned(error=e)


def _worker_main(conn) -> None:
    """A worker's loop: (header [+ options], body or call) in, (task number, result) out, until the pipe
    closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    preload()
    options: dict[bytes, ResizeOptions] = {}
    imported = False
    while True:
        try:
            if not imported and not conn.poll(IDLE_SECONDS):
                imported = True
                for name in IDLE_IMPORTS:
                    try:
                        importlib.import_module(name)
                    except Exception:  # ahead of need only: a call that needs it reports the failure
                        pass
            head = conn.recv_bytes()
            body = conn.recv_bytes()
        except (EOFError, OSError):
            return
        token, kind = _HEADER.unpack_from(head)
        if kind == _CALL:
            result = _run_call(body)
        else:
            result = _processed(body, head[_HEADER.size:], options)
        try:
            _send_framed(conn, pickle.dumps((token, result), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:  # the parent closed the pipe (it is exiting): nobody wants the result
            return


def _processed(body: bytes, key: bytes, options: dict[bytes, ResizeOptions]) -> Processed:
    opts = options.get(key)
    if opts is None:
        opts = options[key] = pickle.loads(key)
    try:
        return process_body(body, opts)
    except Exception as e:  # a bug in the processing: the sample records it
        return Processed(hashlib.sha256(body).hexdigest(), error_kind=ErrorKind.OTHER,
                         error=f"{type(e).__name__}: {e}")


Callback = Callable[[Optional[Any]], None]


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
        """End the workers: their pipes are shut down, so each worker and its results thread see the end of
        the pipe. Closing the descriptor instead would leave a results thread blocked on it, and a pipe of a
        later pool could be given the same number while that thread still reads."""
        self._closing = True
        for w in self._workers:
            try:
                with socket.fromfd(w.conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already: the worker died

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def _start(self) -> _Worker:
        w = _Worker(self._ctx)
        threading.Thread(target=self._receive, args=(w,), name="wit-decoder-results", daemon=True).start()
        return w

    @property
    def size(self) -> int:
        return len(self._workers)

    def submit(self, data: bytes, opts: ResizeOptions, callback: Callable[[Optional[Processed]], None]) -> None:
        token = next(self._tokens)
        self._send(token, _HEADER.pack(token, _BODY) + _pickled(opts), data, callback)

    def call(self, fn: Callable, *args) -> concurrent.futures.Future:
        """fn(*args) in a worker (both pickled): its value, or its exception, in the future."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def done(returned: Optional[_Returned]) -> None:
            if returned is None:
                future.set_exception(RuntimeError(f"the worker process died running {fn.__name__}"))
            elif returned.error is not None:
                future.set_exception(returned.error)
            else:
                future.set_result(returned.value)

        message = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        token = next(self._tokens)
        self._send(token, _HEADER.pack(token, _CALL), message, done)
        return future

    def _send(self, token: int, head: bytes, data: bytes, callback: Callback) -> None:
        with self._lock:
            w = min(self._workers, key=lambda w: len(w.waiting))  # the least loaded worker
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
                _send_framed(w.conn, head, data)
            except OSError:  # the worker died: its results thread calls every waiting task back
                pass

    def _receive(self, w: _Worker) -> None:
        reader = open(w.conn.fileno(), "rb", buffering=_READ_BUFFER, closefd=False)
        while True:
            try:
                token, result = pickle.loads(_read_framed(reader))
            except (EOFError, OSError):
                break
            except Exception:
                if self._closing:  # `close` shut the pipe in the middle of this read
                    break
                raise
            with w.lock:
                callback = w.waiting.pop(token)
            callback(result)
        if self._closing:
            w.conn.close()
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


_shared: Optional[DecoderPool] = None
_shared_lock = threading.Lock()


def shared_pool() -> DecoderPool:
    """The process's pool, one worker per core, started at first use and shared by every stage."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DecoderPool(cores())
        return _shared
