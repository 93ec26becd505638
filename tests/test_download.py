import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines import download
from pipelines.decoders import DecoderPool
from pipelines.download import Downloader, DownloadToStaging, _Controller, download_shard
from pipelines.fetch import FetchOptions, host_limits
from pipelines.resize import ResizeOptions
from wit.core import shardformat
from wit.synthweb import SyntheticWeb
from wit.core.shardformat import Sample


class _Slow(ThreadingHTTPServer):
    """Serves the synthetic web's images after a delay per path; counts requests in flight."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, web: SyntheticWeb, delays: dict[str, float], default: float):
        self.lock, self.in_flight, self.peak, self.arrivals = threading.Lock(), 0, 0, {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                    server.arrivals[self.path] = time.monotonic()
                try:
                    time.sleep(delays.get(self.path, default))
                    body = web.image_bytes(int(self.path.rsplit("/", 1)[-1].split(".")[0]) % web.count)
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def slow_server(web_server):
    web, _ = web_server
    servers = []

    def start(delays=None, default=0.3):
        s = _Slow(web, delays or {}, default)
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
        return s, f"http://127.0.0.1:{s.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


OPTS = FetchOptions(timeout=10, retries=0, allow_private_networks=True, robots_txt=False, max_per_host=1000)


def test_requests_in_flight_are_not_bounded_by_the_cpu_pool(slow_server):
    """300 samples each answered after 0.5 s: many are asked for at once, far more than there are cores."""
    server, base = slow_server(default=0.5)
    samples = [Sample(key=f"{i:05d}", uid=str(i), url=f"{base}/img/{i}.jpg", caption="c") for i in range(300)]
    started = time.monotonic()
    got = download_shard(samples, OPTS, ResizeOptions(image_size=32))
    assert [s.status.value for s in got] == ["success"] * 300
    assert server.peak >= 64, server.peak
    assert time.monotonic() - started < 300 * 0.5 / 32  # faster than 32 at a time could be


def test_a_fixed_threads_limit_bounds_the_requests_in_flight(slow_server):
    server, base = slow_server(default=0.05)
    samples = [Sample(key=f"{i:05d}", uid=str(i), url=f"{base}/img/{i}.jpg", caption="c") for i in range(60)]
    got = download_shard(samples, OPTS, ResizeOptions(image_size=32), threads=5)
    assert [s.status.value for s in got] == ["success"] * 60
    assert server.peak <= 5


def test_fetch_threads_grow_to_what_can_be_in_flight_not_to_the_limit(slow_server):
    """A quick server and one decoding process: bodies wait for the pool, so few requests can be in flight
    whatever the adaptive limit allows, and threads past them would only wake to wait again."""
    server, base = slow_server(default=0.0)
    samples = [Sample(key=f"{i:05d}", uid=str(i), url=f"{base}/img/{i}.jpg", caption="c") for i in range(400)]
    engine = Downloader(processes=1)
    assert engine.limit >= 100  # before any measurement: a web-like latency
    job = engine.submit(samples, OPTS, ResizeOptions(image_size=32))
    assert job.done.wait(120)
    assert [s.status.value for s in job.results] == ["success"] * 400
    assert engine._threads <= 8 * download.BACKLOG_PER_PROCESS, engine._threads  # the limit would give ~200


def test_decoding_runs_in_the_pool_processes(web_server):
    """The CPU work of a body runs in another process: the fetching process only waits for it."""
    _, server = web_server
    engine = Downloader(processes=2)
    samples = [Sample(key=str(i), uid=str(i), url=f"{server.base_url}/img/{i}.jpg", caption="c") for i in range(8)]
    job = engine.submit(samples, FetchOptions(timeout=5, allow_private_networks=True), ResizeOptions(image_size=32))
    assert job.done.wait(30)
    assert [s.status.value for s in job.results] == ["success"] * 8
    pids = set(engine._decoders().pids())
    assert len(pids) == 2 and all(pid != os.getpid() for pid in pids)


def test_a_decoding_process_that_dies_is_replaced_and_its_images_tried_again(web_server):
    web, _ = web_server
    pool = DecoderPool(2)
    results, done = [], threading.Event()

    def got(r):
        results.append(r)
        if len(results) == 40:
            done.set()

    victim = pool.pids()[0]
    for i in range(40):
        pool.submit(web.image_bytes(i), ResizeOptions(image_size=64), got)
        if i == 5:
            os.kill(victim, signal.SIGKILL)  # as a segfault in a native decoder would end it
    assert done.wait(60)
    lost = [r for r in results if r is None]  # the tasks the dead process held: the downloader retries these
    assert all(r.image is not None for r in results if r is not None) and len(lost) <= 40
    assert victim not in pool.pids() and len(pool.pids()) == 2
    again, ok = [], threading.Event()
    pool.submit(web.image_bytes(1), ResizeOptions(image_size=64), lambda r: (again.append(r), ok.set()))
    assert ok.wait(30) and again[0].image is not None
    pool.close()


def test_the_in_flight_limit_follows_littles_law():
    c = _Controller(processes=2)
    for _ in range(2000):  # the pool finishes 2 / 0.004 = 500 images/s; a fetch takes 0.5 s; all give an image
        c.fetched(0.5, True)
        c.processed(0.004, True)
    assert c.limit == pytest.approx(download.HEADROOM * 500 * 0.5, rel=0.02)
    for _ in range(2000):  # fast failures half the time: twice as many in flight for the same images/s
        c.fetched(0.5, _ % 2 == 0)
    assert c.limit == pytest.approx(download.HEADROOM * 500 * 0.5 * 2, rel=0.05)
    for _ in range(2000):  # a quick web needs few
        c.fetched(0.001, True)
    assert c.limit == download.MIN_IN_FLIGHT


def test_the_end_backlog_covers_the_slowest_fetches_at_the_pools_pace():
    c = _Controller(processes=2)
    for k in range(2000):  # 2% of fetches take 3 s
        c.fetched(3.0 if k % 50 == 0 else 0.2, True)
    assert c.slow == 3.0
    c.interval = 0.002  # the pool finishes an image every 2 ms
    assert c._backlog_target() == 1500
    for _ in range(2000):  # the slow hosts are gone
        c.fetched(0.2, True)
    assert c.slow == 0.2 and c._backlog_target() == 100
    c.interval = 1.0  # a slow pool: never less than the backlog kept while much is queued
    assert c._backlog_target() == 2 * download.BACKLOG_PER_PROCESS


def test_the_last_requests_start_while_the_pool_has_the_slowest_ones_time_of_work(slow_server):
    """Every 25th URL takes 0.5 s, the rest come at once: when the last request starts, bodies for about that
    long wait for the pool, not the few it keeps while much is queued, so it works while the slow ones come."""
    server, base = slow_server(delays={f"/img/{i}.jpg": 0.5 for i in range(0, 1000, 25)}, default=0.0)
    samples = [Sample(key=f"{i:05d}", uid=str(i), url=f"{base}/img/{i}.jpg", caption="c") for i in range(1000)]
    engine = Downloader(processes=1)
    job = engine.submit(samples, OPTS, ResizeOptions(image_size=32))
    waiting_at_last_start = None
    while not job.done.wait(0.001):
        if waiting_at_last_start is None and engine.queued() == 0:
            waiting_at_last_start = engine.backlog
    assert [s.status.value for s in job.results] == ["success"] * 1000
    assert engine.control.slow == pytest.approx(0.5, abs=0.1)
    assert waiting_at_last_start > 2 * download.BACKLOG_PER_PROCESS, waiting_at_last_start
    assert engine.backlog == engine.backlog_bytes == 0 and not engine._unsent


def test_a_shard_of_20000_distinct_hosts_keeps_memory_bounded():
    """Every sample on its own host (loopback addresses where nothing listens): each fails on its own, the
    process grows by little while they are in flight, and no per-host state is left once they are done."""
    import socket

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]  # bound, never listening: connections are refused
    samples = [Sample(key=f"{i:05d}", uid=str(i), url=f"http://127.{1 + i // 65536}.{i // 256 % 256}.{i % 256}:{port}"
                      f"/{i}.jpg", caption="c") for i in range(20_000)]
    engine = Downloader(processes=1)
    start, peak = rss(), [0]
    try:
        job = engine.submit(samples, FetchOptions(timeout=2, retries=0, allow_private_networks=True,
                                                  robots_txt=False), ResizeOptions(image_size=32))
        deadline = time.monotonic() + 180
        while not job.done.wait(0.05):
            peak[0] = max(peak[0], rss())
            assert time.monotonic() < deadline, "the shard did not finish"
    finally:
        probe.close()
    assert {s.error_kind.value for s in job.results} == {"connection"}
    assert peak[0] - start < 200e6, (start, peak)
    assert not engine._queues and not engine._ready and engine.in_flight == 0
    assert not host_limits._busy  # every host's slots given back: no entry is left behind


def test_the_next_shard_is_fetched_while_the_last_ones_straggler_is(slow_server, tmp_path):
    """Shard 0 ends with a 3 s URL; shard 1's requests start long before it is answered, and each shard is
    staged with its results in input order."""
    straggler = "/img/0.jpg"
    server, base = slow_server(delays={straggler: 3.0}, default=0.05)
    (tmp_path / "_staging").mkdir()
    step = DownloadToStaging(str(tmp_path), frozenset(), OPTS, ResizeOptions(image_size=32), threads=0)
    step.start_bundle()
    shards = {n: [Sample(key=shardformat.key_for(n, i, 10), uid=f"{n}-{i}", url=f"{base}/img/{n * 10 + i}.jpg",
                         caption="c") for i in range(10)] for n in (0, 1)}
    started = time.monotonic()
    out = list(step.process((0, shards[0]))) + list(step.process((1, shards[1])))
    out += list(step.finish_bundle())
    assert time.monotonic() - started < 4.5  # not 3 s, then shard 1
    assert server.arrivals["/img/10.jpg"] - started < 1.0
    for n in (0, 1):
        staged = shardformat.read_samples(shardformat.paths(str(tmp_path), n).staging)
        assert [s.key for s in staged] == [s.key for s in shards[n]]
        assert all(s.status.value == "success" for s in staged)
    shard_numbers = [getattr(o.value, "value", o.value) for o in out if getattr(o, "tag", None) == download.SHARDS]
    assert sorted(shard_numbers) == [0, 1]
