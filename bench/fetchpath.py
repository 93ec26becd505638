"""CPU per request of wit's fetch path at web latency, against a bare asyncio client.

Whether a fetcher on one event loop would pay for itself: the server of
bench/download.py (its own process, 200 loopback addresses, log-normal latency
with median 150 ms, bodies at 2-5 MB/s), N of its URLs fetched without decoding.
Rows: `pipelines.fetch.fetch` from a thread per request in flight (what the
downloader's fetch threads run, host limits included), at several thread
counts; and the baseline, an asyncio client with as many requests in flight and
nothing but a connection per request, a GET and a Content-Length body read (no
address guard, robots.txt, deadline, retry or redirect). Each row runs in a child
process; CPU is the child's user + system time.

    python bench/fetchpath.py [--count 10000] [--threads 50,200,400]

The images are those of bench/download.py (kept in its --cache).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from download import HOSTS, make_images, start_server  # noqa: E402  (bench/download.py: the web-like server)


def urls(n: int) -> list[tuple[str, str]]:
    return [(f"127.0.0.{2 + i % HOSTS}", f"/img/{i}.jpg") for i in range(n)]


def run_wit(port: int, n: int, threads: int) -> int:
    from pipelines.fetch import FetchOptions, fetch, host_limits, host_of

    opts = FetchOptions(timeout=10, retries=0, allow_private_networks=True)
    queue = collections.deque(f"http://{h}:{port}{p}" for h, p in urls(n))
    lock, ok = threading.Lock(), [0]

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                url = queue.popleft()
            with host_limits.holds(host_of(url)):
                got = fetch(url, opts)
            if got.ok:
                with lock:
                    ok[0] += 1

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return ok[0]


def run_asyncio(port: int, n: int, in_flight: int) -> int:
    ok = [0]

    async def get(host: str, path: str) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        body = await reader.readexactly(length)
        writer.close()
        ok[0] += len(body) > 0

    async def main() -> None:
        queue = collections.deque(urls(n))

        async def worker() -> None:
            while queue:
                await get(*queue.popleft())

        await asyncio.gather(*(worker() for _ in range(in_flight)))

    asyncio.run(main())
    return ok[0]


def child(kind: str, port: int, n: int, threads: int) -> tuple[int, float, float]:
    """(images, wall s, CPU s) of one row, run in its own process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(port), str(n), str(threads)],
                         capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return int(out.stdout.split()[-1]), wall, cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--threads", default="50,200,400", help="thread counts for wit's rows")
    p.add_argument("--in-flight", type=int, default=200, help="requests in flight for the asyncio baseline")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "wit-bench-cache"))
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, port, n, threads = a.child[0], int(a.child[1]), int(a.child[2]), int(a.child[3])
        print((run_wit if kind == "wit" else run_asyncio)(port, n, threads))
        return 0

    # the first --count images of bench/download.py's set of 20,000
    make_images(max(a.count, 20_000), a.cache)
    server, port = start_server(max(a.count, 20_000), a.cache)
    try:
        rows = [(f"asyncio, {a.in_flight} in flight (baseline)", child("asyncio", port, a.count, a.in_flight))]
        rows += [(f"wit fetch, {t} threads", child("wit", port, a.count, t))
                 for t in (int(x) for x in a.threads.split(","))]
    finally:
        server.terminate()
        server.wait()
    print(f"{a.count:,} URLs of the bench/download.py server (latency median 150 ms, bodies at 2-5 MB/s), "
          "fetched without decoding\n")
    print(f"{'':32s} {'images':>7s} {'wall s':>7s} {'CPU s':>7s} {'CPU ms/request':>15s}")
    for name, (n, wall, cpu) in rows:
        print(f"{name:32s} {n:7,d} {wall:7.1f} {cpu:7.2f} {cpu / a.count * 1000:15.3f}")
    base = rows[0][1][2]
    print("\n" + "; ".join(f"{name}: {cpu / base:.2f}x the baseline's CPU" for name, (_n, _w, cpu) in rows[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
