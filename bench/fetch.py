"""Images per second per core: wit's fetch + resize + shard writing against img2dataset 1.47.

Both download the same URL list from the same loopback server (pre-encoded
JPEGs of 300-800 px held in memory, HTTP/1.1 keep-alive) into webdataset tars
with 256 px images (border resize, quality 95), with the same number of
requests in flight (img2dataset's threads; wit's fixed --threads, its decoding
in a process per core). Each runs as a child process; the rows give wall-clock
images/s and images per CPU-second of the child and its processes (the
server's CPU is not counted for either). With no latency this is a control for
CPU per image; bench/download.py measures the download under web conditions.

img2dataset pins webdataset<0.3 and pulls wandb, albumentations and opencv, so
it lives in its own virtualenv:

    python3 -m venv /tmp/i2dvenv && /tmp/i2dvenv/bin/pip install img2dataset==1.47.0
    python bench/fetch.py --img2dataset /tmp/i2dvenv/bin/img2dataset [--count 3000 --threads 32]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def make_images(n: int, seed: int = 0) -> list[bytes]:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    images = []
    for i in range(n):
        w, h = rng.randint(300, 800), rng.randint(300, 800)
        img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(30):
            x, y = rng.randrange(w), rng.randrange(h)
            draw.ellipse([x, y, x + rng.randint(10, 200), y + rng.randint(10, 200)],
                         fill=tuple(rng.randrange(256) for _ in range(3)))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=90)
        images.append(out.getvalue())
    return images


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, images: list[bytes]):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # as web servers do: no 40 ms delayed-ACK stall per response

            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1].split(".")[0]
                body = images[int(name) % len(images)] if name.isdigit() else b""
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)


def run_wit(urls: str, out: str, threads: int, shard_size: int) -> None:
    """The child process for wit: the same functions the Beam job's DownloadToStaging/WriteShard call."""
    import pyarrow.parquet as pq

    from wit.core import shardformat
    from pipelines.download import download_shard
    from pipelines.fetch import FetchOptions
    from pipelines.resize import ResizeOptions

    rows = pq.read_table(urls).to_pylist()
    fetch_opts = FetchOptions(timeout=30, retries=0, allow_private_networks=True, max_per_host=threads)
    resize_opts = ResizeOptions(image_size=256, resize_mode="border", encode_quality=95)
    for shard, start in enumerate(range(0, len(rows), shard_size)):
        batch = rows[start:start + shard_size]
        samples = [shardformat.Sample(key=shardformat.key_for(shard, i, shard_size), uid=str(start + i), url=r["url"],
                                 caption=r["caption"]) for i, r in enumerate(batch)]
        results = download_shard(samples, fetch_opts, resize_opts, threads)
        shardformat.write_shard(out, shard, results)


def timed_child(cmd: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{proc.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def count_tar_samples(directory: str) -> int:
    import tarfile

    n = 0
    for root, _dirs, files in os.walk(directory):
        for f in files:
            if f.endswith(".tar"):
                with tarfile.open(os.path.join(root, f)) as tar:
                    n += sum(1 for m in tar.getmembers() if m.name.endswith(".jpg"))
    return n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--img2dataset", default=shutil.which("img2dataset"), help="the img2dataset executable")
    p.add_argument("--child", nargs=3, metavar=("URLS", "OUT", "THREADS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        run_wit(a.child[0], a.child[1], int(a.child[2]), a.shard_size)
        return 0

    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = tempfile.mkdtemp(prefix="wit-bench-fetch-")
    server = Server(make_images(200))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = os.path.join(tmp, "urls.parquet")
    pq.write_table(pa.table({"url": [f"{base}/img/{i}.jpg" for i in range(a.count)],
                             "caption": [f"picture number {i}" for i in range(a.count)]}), urls)
    print(f"{a.count:,} URLs on {base}, {a.threads} threads, one process each, 256 px border resize")

    rows = {}
    wall, cpu = timed_child([sys.executable, __file__, "--shard-size", str(a.shard_size),
                             "--child", urls, os.path.join(tmp, "wit"), str(a.threads)])
    n = count_tar_samples(os.path.join(tmp, "wit"))
    rows["wit"] = (n, wall, cpu)
    if a.img2dataset:
        wall, cpu = timed_child([
            a.img2dataset, "--url_list", urls, "--input_format", "parquet", "--url_col", "url",
            "--caption_col", "caption", "--output_format", "webdataset", "--output_folder",
            os.path.join(tmp, "i2d"), "--processes_count", "1", "--thread_count", str(a.threads),
            "--image_size", "256", "--resize_mode", "border", "--encode_quality", "95",
            "--number_sample_per_shard", str(a.shard_size), "--distributor", "multiprocessing",
            "--enable_wandb", "False", "--timeout", "30", "--retries", "0"])
        rows["img2dataset 1.47 (baseline)"] = (count_tar_samples(os.path.join(tmp, "i2d")), wall, cpu)
    else:
        print("img2dataset not found: pass --img2dataset PATH (see the docstring); baseline skipped")
    server.shutdown()

    print(f"\n{'':30s} {'images':>8s} {'wall s':>8s} {'images/s':>10s} {'CPU s':>8s} {'images/CPU-s':>13s}")
    for name, (n, wall, cpu) in rows.items():
        print(f"{name:30s} {n:8,} {wall:8.1f} {n / wall:10,.0f} {cpu:8.1f} {n / cpu:13,.0f}")
    if len(rows) == 2:
        (n1, w1, c1), (n2, w2, c2) = rows.values()
        print(f"\nwit / img2dataset: {(n1 / w1) / (n2 / w2):.2f}x images/s, {(n1 / c1) / (n2 / c2):.2f}x images per "
              f"CPU-second (goal 1.5x)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
