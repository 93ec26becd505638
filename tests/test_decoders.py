"""The pool's calls: other CPU work of the job, run in the decoding processes."""

import multiprocessing
import os
import signal
import threading
import time

import pytest

from pipelines import decoders
from pipelines.decoders import DecoderPool, shared_pool


class Unrebuildable(Exception):
    def __init__(self, a, b):  # pickles, but unpickling calls __init__ with one argument
        super().__init__(f"{a}/{b}")


def _pid_and_sum(*xs: int) -> tuple[int, int]:
    return os.getpid(), sum(xs)


def _fails(kind: str):
    if kind == "value":
        raise ValueError("bad shard 7")
    raise Unrebuildable("x", "y")


def _sleeps(seconds: float) -> None:
    time.sleep(seconds)


def test_a_call_runs_in_a_worker_and_returns_its_value():
    pool = DecoderPool(2)
    try:
        futures = [pool.call(_pid_and_sum, i, 10) for i in range(6)]
        results = [f.result(timeout=60) for f in futures]
        assert [s for _pid, s in results] == [10, 11, 12, 13, 14, 15]
        assert {pid for pid, _s in results} <= set(pool.pids()) and os.getpid() not in {p for p, _ in results}
    finally:
        pool.close()


def test_a_calls_exception_reaches_the_caller():
    pool = DecoderPool(1)
    try:
        with pytest.raises(ValueError, match="bad shard 7"):
            pool.call(_fails, "value").result(timeout=60)
        with pytest.raises(RuntimeError, match="Unrebuildable: x/y"):  # cannot cross as itself: named instead
            pool.call(_fails, "other").result(timeout=60)
        assert pool.call(_pid_and_sum, 1, 2).result(timeout=60)[1] == 3  # the worker goes on
    finally:
        pool.close()


def test_a_worker_that_dies_during_a_call_fails_it_and_is_replaced():
    pool = DecoderPool(1)
    try:
        victim = pool.pids()[0]
        pending = pool.call(_sleeps, 30)
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(RuntimeError, match="died running _sleeps"):
            pending.result(timeout=60)
        assert pool.pids() != [victim] and pool.call(_pid_and_sum, 4).result(timeout=60)[1] == 4
    finally:
        pool.close()


def test_the_shared_pool_is_one_per_process():
    assert shared_pool() is shared_pool() and shared_pool().size == len(os.sched_getaffinity(0))


def _imported(name: str) -> bool:
    import sys

    return name in sys.modules


def test_a_worker_imports_what_calls_need_once_idle():
    pool = DecoderPool(1)
    try:
        assert not pool.call(_imported, "pipelines.shards").result(timeout=60)  # busy from its start: not yet
        time.sleep(decoders.IDLE_SECONDS + 2)
        assert pool.call(_imported, "pipelines.shards").result(timeout=60)
    finally:
        pool.close()


def test_a_worker_imports_hashings_fft_before_its_first_body():
    pool = DecoderPool(1)
    try:
        assert pool.call(_imported, "scipy.fftpack").result(timeout=60)
    finally:
        pool.close()


def test_a_task_goes_down_the_pipe_in_one_write_as_connection_frames(monkeypatch):
    """The worker reads a task's two messages with Connection.recv_bytes; the fetching thread sends them in one
    system call, each of which hands the fetching process's GIL to another thread."""
    ours, theirs = multiprocessing.Pipe()
    writes = []
    writev = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, buffers: writes.append(fd) or writev(fd, buffers))
    head, body = b"head", os.urandom(100_000)
    decoders._send_framed(ours, head, body)
    assert theirs.recv_bytes() == head and theirs.recv_bytes() == body
    assert writes == [ours.fileno()]
    huge = os.urandom(8 << 20)  # more than the pipe holds: written as the reader makes room
    sender = threading.Thread(target=decoders._send_framed, args=(ours, b"", huge))
    sender.start()
    assert theirs.recv_bytes() == b"" and theirs.recv_bytes() == huge
    sender.join()


def test_results_read_back_through_a_buffer_whoever_framed_them():
    ours, theirs = multiprocessing.Pipe()
    reader = open(ours.fileno(), "rb", buffering=decoders._READ_BUFFER, closefd=False)
    decoders._send_framed(theirs, b"one", b"two")
    theirs.send_bytes(b"x" * 70_000)  # Connection's own framing, header and payload in two writes
    assert decoders._read_framed(reader) == b"one" and decoders._read_framed(reader) == b"two"
    assert decoders._read_framed(reader) == b"x" * 70_000
    theirs.close()
    with pytest.raises(EOFError):
        decoders._read_framed(reader)
