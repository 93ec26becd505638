"""`wit build` against img2dataset 1.47 on a web-like server: latency, many hosts, slow bodies.

The server runs in its own process (asyncio) on 200 loopback addresses
(127.0.0.2 .. 127.0.0.201). Every URL has its own fixed latency before the
status line (log-normal, median 150 ms, 90th percentile about 600 ms; 3% of
URLs take 2-3 s), sends its body at 2-5 MB/s, and serves distinct bytes (a
distinct 300-800 px JPEG per URL, so neither tool's dedup drops any). robots.txt
answers 404 at once. The server samples the requests in flight every 20 ms.

Rows: the whole `wit build` on default flags (plan, download, image dedup,
write: only --allow-private-networks, --timeout 10 and --retries 0 are given),
and img2dataset at 1 process x 256 threads (its defaults) and at 1 process per
core x 256 threads, in the same run. Columns: wall images/s over the whole run;
images/s inside the download window (first request to last response at the
server); CPU-s of the tool per image; its voluntary thread switches per image
(a thread that blocks: on the network, on a pipe, or waiting for the GIL or a
lock; getrusage of the tool's processes); requests in flight (mean and max in the
window, as the server saw them); how busy the machine's cores were in the window
(all processes, from /proc/stat; the server's own CPU-s are shown beside it).

img2dataset lives in its own virtualenv (it pins webdataset<0.3):

    python3 -m venv /tmp/i2dvenv && /tmp/i2dvenv/bin/pip install img2dataset==1.47.0
    python bench/download.py --img2dataset /tmp/i2dvenv/bin/img2dataset [--count 20000] [--rounds 3]

On a VM whose speed drifts from minute to minute, one round's ratio moves with
it; `--rounds N` runs every row N times, one round after the other, and prints
each round's ratio and their median.

The images are made once and kept in --cache (a minute or two for 20,000).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fetch import count_tar_samples  # noqa: E402  (bench/fetch.py, the zero-latency control)

HOSTS = 200
WORDS = ("dog", "cat", "car", "tree", "house", "boat", "bird", "flower", "river", "chair")


def make_images(n: int, cache: str) -> tuple[bytes, list[int]]:
    """n distinct JPEGs of 300-800 px, concatenated, and their offsets; cached on disk."""
    path = os.path.join(cache, f"web-images-{n}.bin")
    if not os.path.exists(path):
        from concurrent.futures import ProcessPoolExecutor

        os.makedirs(cache, exist_ok=True)
        with ProcessPoolExecutor() as pool:
            parts = list(pool.map(_image, range(n), chunksize=64))
        offsets, pos = [], 0
        for p in parts:
            offsets.append(pos)
            pos += len(p)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(json.dumps(offsets + [pos]).encode() + b"\n" + b"".join(parts))
        os.replace(tmp, path)
    with open(path, "rb") as f:
        head = f.readline()
        return f.read(), json.loads(head)


def _image(i: int) -> bytes:
    from PIL import Image, ImageDraw

    rng = random.Random(i)
    w, h = rng.randint(300, 800), rng.randint(300, 800)
    img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = rng.randrange(w), rng.randrange(h)
        draw.rectangle([x, y, x + rng.randint(20, 300), y + rng.randint(20, 300)],
                       fill=tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def url_profile(i: int) -> tuple[float, float]:
    """(seconds before the status line, body bytes per second) of URL i: fixed per URL."""
    rng = random.Random(1_000_003 * i + 7)
    if rng.random() < 0.03:
        latency = rng.uniform(2.0, 3.0)
    else:
        latency = min(1.9, 0.15 * math.exp(1.08 * rng.gauss(0, 1)))  # log-normal: median 150 ms, p90 ~600 ms
    return latency, rng.uniform(2e6, 5e6)


# ---------------------------------------------------------------- the server (its own process)

def serve(count: int, cache: str, port_file: str) -> None:
    blob, offsets = make_images(count, cache)
    state = {"in_flight": 0, "samples": [], "first": None, "last": None, "requests": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                path = line.split()[1].decode() if len(line.split()) > 1 else "/"
                if path.startswith("/__stats"):
                    body = json.dumps(state).encode()
                    if "reset" in path:
                        state.update(samples=[], first=None, last=None, requests=0)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)
                    await writer.drain()
                    continue
                name = path.rsplit("/", 1)[-1].split(".")[0]
                if not path.startswith("/img/") or not name.isdigit() or int(name) >= count:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                i = int(name)
                now = time.monotonic()
                state["first"] = state["first"] or now
                state["requests"] += 1
                state["in_flight"] += 1
                try:
                    latency, rate = url_profile(i)
                    await asyncio.sleep(latency)
                    body = blob[offsets[i]:offsets[i + 1]]
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\n\r\n")
                    chunk = 16384
                    for start in range(0, len(body), chunk):
                        writer.write(body[start:start + chunk])
                        await writer.drain()
                        await asyncio.sleep(chunk / rate)
                finally:
                    state["in_flight"] -= 1
                    state["last"] = time.monotonic()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def sample() -> None:
        while True:
            await asyncio.sleep(0.02)
            if state["first"] is not None:
                state["samples"].append((time.monotonic(), state["in_flight"]))

    port = [0]

    async def start() -> None:  # one port on every address
        first = await asyncio.start_server(handle, "127.0.0.2", 0, backlog=4096)
        port[0] = first.sockets[0].getsockname()[1]
        for k in range(1, HOSTS):
            await asyncio.start_server(handle, f"127.0.0.{2 + k}", port[0], backlog=4096)
        asyncio.get_running_loop().create_task(sample())
        with open(port_file + ".tmp", "w") as f:
            f.write(str(port[0]))
        os.replace(port_file + ".tmp", port_file)
        await asyncio.Event().wait()

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(start())


def start_server(count: int, cache: str) -> tuple[subprocess.Popen, int]:
    """The server in its own process, serving the first `count` images of the set; it and its port, once
    it listens."""
    port_file = os.path.join(tempfile.mkdtemp(prefix="wit-bench-server-"), "port")
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--count", str(count), "--serve", cache,
                               port_file])
    while not os.path.exists(port_file):
        if server.poll() is not None:
            raise RuntimeError("the server did not start")
        time.sleep(0.1)
    with open(port_file) as f:
        return server, int(f.read())


def server_stats(port: int, reset: bool = False) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.2:{port}/__stats{'?reset' if reset else ''}", timeout=10) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------- measuring a tool

class CpuSampler:
    """The machine's busy and total CPU ticks, sampled every 50 ms from /proc/stat."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
            idle = fields[3] + fields[4]
            self.samples.append((time.monotonic(), sum(fields) - idle, sum(fields)))
            time.sleep(0.05)

    def busy(self, start: float, end: float) -> float:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return float("nan")
        (_, b0, t0), (_, b1, t1) = inside[0], inside[-1]
        return (b1 - b0) / max(1, t1 - t0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_tool(name: str, cmd: list[str], port: int, server_pid: int, cpu: CpuSampler, count_images) -> dict:
    server_stats(port, reset=True)
    server_before = server_cpu(server_pid)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    ended = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    stats = server_stats(port)
    served_cpu = server_cpu(server_pid) - server_before
    images = count_images()
    first, last = stats["first"], stats["last"]
    window = [n for t, n in stats["samples"] if first <= t <= last]
    tool_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    switches = after.ru_nvcsw - before.ru_nvcsw
    machine = cpu.busy(first, last)
    return {"name": name, "images": images, "wall": ended - started, "window": last - first,
            "cpu": tool_cpu, "switches": switches, "mean_in_flight": sum(window) / max(1, len(window)),
            "max_in_flight": max(window, default=0), "machine_busy": machine, "requests": stats["requests"],
            "server_cpu": served_cpu}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=20_000)
    p.add_argument("--img2dataset", default=shutil.which("img2dataset"), help="the img2dataset executable")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "wit-bench-cache"))
    p.add_argument("--only", choices=("wit", "img2dataset"), help="run one tool only")
    p.add_argument("--rounds", type=int, default=1, help="rounds of every row, one after the other; with more "
                                                         "than one, the ratio of each round and their median")
    p.add_argument("--serve", nargs=2, metavar=("CACHE", "PORT_FILE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        serve(a.count, a.serve[0], a.serve[1])
        return 0

    import pyarrow as pa
    import pyarrow.parquet as pq

    make_images(a.count, a.cache)
    tmp = tempfile.mkdtemp(prefix="wit-bench-download-")
    server, port = start_server(a.count, a.cache)
    cpu = CpuSampler()
    try:
        urls = [f"http://127.0.0.{2 + i % HOSTS}:{port}/img/{i}.jpg" for i in range(a.count)]
        captions = [f"a photo of a {WORDS[i % len(WORDS)]}, picture {i}" for i in range(a.count)]
        cand = os.path.join(tmp, "candidates.parquet")
        pq.write_table(pa.table({"url": urls, "caption": captions}), cand)
        queries = os.path.join(tmp, "queries.txt")
        with open(queries, "w") as f:
            f.write("\n".join(WORDS) + "\n")
        ncores = os.cpu_count() or 1
        print(f"{a.count:,} URLs on {HOSTS} loopback addresses, port {port}; {ncores} cores; "
              f"latency log-normal (median 150 ms), 3% at 2-3 s, bodies at 2-5 MB/s")
        wit = os.path.join(os.path.dirname(sys.executable), "wit")
        if a.img2dataset is None and a.only is None:
            print("img2dataset not found: pass --img2dataset PATH (see the docstring); baselines skipped")
        ratios = []
        for _ in range(a.rounds):
            rows = []
            if a.only in (None, "wit"):
                out = os.path.join(tmp, "wit")
                rows.append(run_tool("wit build, default flags", [
                    wit, "build", "--candidates", cand, "--queries", queries, "--out", out,
                    "--allow-private-networks", "--timeout", "10", "--retries", "0", "--no-progress"],
                    port, server.pid, cpu, lambda: count_tar_samples(os.path.join(out, "shards"))))
            if a.img2dataset and a.only in (None, "img2dataset"):
                for procs in (1, ncores):
                    out = os.path.join(tmp, f"i2d{procs}")
                    rows.append(run_tool(f"img2dataset 1.47, {procs} x 256", [
                        a.img2dataset, "--url_list", cand, "--input_format", "parquet", "--url_col", "url",
                        "--caption_col", "caption", "--output_format", "webdataset", "--output_folder", out,
                        "--processes_count", str(procs), "--thread_count", "256", "--distributor",
                        "multiprocessing", "--enable_wandb", "False", "--timeout", "10", "--retries", "0"],
                        port, server.pid, cpu, lambda out=out: count_tar_samples(out)))
            ratio = print_round(rows)
            if ratio is not None:
                ratios.append(ratio)
            for name in ("wit", *(f"i2d{procs}" for procs in (1, ncores))):  # the next round starts empty
                shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
        if len(ratios) > 1:
            print(f"\nwit / the better img2dataset over {len(ratios)} rounds: "
                  f"{', '.join(f'{r:.2f}x' for r in ratios)}; median {statistics.median(ratios):.2f}x (goal 1.5x)")
    finally:
        cpu.stop()
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def print_round(rows: list[dict]) -> Optional[float]:
    """One round's table and, with both tools in it, wit's ratio to the better img2dataset."""
    head = (f"{'':28s} {'images':>7s} {'wall s':>7s} {'img/s':>7s} {'window s':>9s} {'img/s in':>9s} "
            f"{'CPU ms/img':>10s} {'switches/img':>12s} {'in flight':>11s} {'cores busy':>10s} {'server CPU-s':>12s}")
    print("\n" + head)
    for r in rows:
        print(f"{r['name']:28s} {r['images']:7,} {r['wall']:7.1f} {r['images'] / r['wall']:7.0f} {r['window']:9.1f} "
              f"{r['images'] / r['window']:9.0f} {1000 * r['cpu'] / max(1, r['images']):10.2f} "
              f"{r['switches'] / max(1, r['images']):12.1f} "
              f"{r['mean_in_flight']:5.0f}/{r['max_in_flight']:<5d} {100 * r['machine_busy']:9.0f}% "
              f"{r['server_cpu']:12.1f}", flush=True)
    if len(rows) != 3:
        return None
    best = max(rows[1:], key=lambda r: r["images"] / r["wall"])
    ratio = (rows[0]["images"] / rows[0]["wall"]) / (best["images"] / best["wall"])
    print(f"\nwit / {best['name']} (the better img2dataset): {ratio:.2f}x wall images/s (goal 1.5x); "
          f"wit's cores busy in its download window: {100 * rows[0]['machine_busy']:.0f}% (goal 85%)", flush=True)
    return ratio


if __name__ == "__main__":
    sys.exit(main())
