"""Near-duplicate images at scale: the table algorithm alone, and the Beam stage end to end.

Synthetic 64-bit pHashes, uniform, with planted structure:
- clusters: a base image (best ranked), t + 1 copies at distances 0..t (flips in
  the low 32 bits), and one at t+1..t+3 (flips in the high 32 bits, so it is
  more than t bits from every other member): 10% of the images;
- one degenerate value shared by 1% of the images (a blank placeholder).
Every copy within t must be dropped (recall 100%), the far member must stay,
and every image named must be within t bits (recomputed here): no wrong drop.
Uniform hashes meet within t by chance (about n^2/2 * P(<= t bits) pairs: 2 at
10^7 for t = 4); those drops are reported apart.

Prints microseconds per image, the largest group compared, recall, wrong drops,
and the projection to 4*10^8 images in core-hours. The algorithm alone runs
`pipelines.imagededup.group_found` over every table in memory; the Beam stage
is `ImageDedup` on the local runner, in-process and multi-process, its CPU
measured as the run's minus a run that makes the same images and no dedup
(and apart, its exact step, whose cost does not grow with the tables).

    python bench/dedup.py [--sizes 1000000,10000000] [--beam-sizes 1000000] [--threshold 4]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from pipelines import imagededup, records, sizing  # noqa: E402
from pipelines.imagededup import Found, Group, best_found, by_rank, group_found, join, tables_for  # noqa: E402

FULL_SIZE = 4 * 10**8
FULL_TABLES = len(tables_for(4, FULL_SIZE).masks)  # the threshold's default
CLUSTER_SHARE, DEGENERATE_SHARE = 0.10, 0.01
CHUNK = 100_000


def make_hashes(n: int, t: int, seed: int = 0):
    """(phash, pixels, role) arrays: role 0 uniform, 1 base, 2 near copy, 3 far copy, 4 degenerate."""
    rng = np.random.default_rng(seed)
    phash = rng.integers(0, 2**64, n, dtype=np.uint64)
    pixels = rng.integers(1_000, 1_000_000, n, dtype=np.int64)
    role = np.zeros(n, np.int8)
    size = t + 3
    clusters = int(n * CLUSTER_SHARE) // size
    low = np.arange(32, dtype=np.uint64)
    for c in range(clusters):
        s = c * size
        base = phash[s]
        role[s], pixels[s] = 1, 2_000_000  # the best of its cluster
        for d in range(t + 1):
            bits = rng.choice(low, d, replace=False)
            phash[s + 1 + d] = base ^ np.bitwise_or.reduce(np.uint64(1) << bits) if d else base
            role[s + 1 + d] = 2
        bits = rng.choice(low + np.uint64(32), int(rng.integers(t + 1, t + 4)), replace=False)
        phash[s + size - 1] = base ^ np.bitwise_or.reduce(np.uint64(1) << bits)
        role[s + size - 1] = 3
    start = clusters * size
    degenerate = int(n * DEGENERATE_SHARE)
    phash[start:start + degenerate] = np.uint64(0xF0F0F0F0F0F0F0F0)
    role[start:start + degenerate] = 4
    return phash, pixels, role


def group_of(phash: np.ndarray, pixels: np.ndarray) -> Group:
    n = len(phash)
    return Group(np.arange(n, dtype=np.uint64), phash, pixels, np.zeros(n, np.int64), np.full(n, -1, np.int64),
                 np.arange(n, dtype=np.int64))


def check(n: int, role: np.ndarray, phash: np.ndarray, found: Found, t: int) -> dict:
    """Recall of the planted copies within t; wrong drops: an image dropped for one that is not within t
    (recomputed here), or a planted far copy dropped; and the unplanted drops, each for an image within t
    (uniform hashes meet within t by chance: about n^2/2 * P(<= t bits) pairs)."""
    dropped = np.zeros(n, bool)
    uid, b_uid = found.uid.astype(np.int64), found.b_uid.astype(np.int64)
    dropped[uid] = True
    beyond = int((np.bitwise_count(phash[uid] ^ phash[b_uid]) > t).sum())
    degenerate = role == 4  # equal pixels: the first one ranks best and is the one kept
    unplanted = dropped & ((role == 0) | (role == 1))
    return {"recall": dropped[role == 2].mean() if (role == 2).any() else 1.0,
            "wrong": beyond + int((dropped & (role == 3)).sum()), "unplanted": int(unplanted.sum()),
            "degenerate_dropped": int(dropped[degenerate].sum()), "degenerate": int(degenerate.sum())}


def algorithm(n: int, t: int) -> dict:
    phash, pixels, role = make_hashes(n, t)
    pixels[role == 4] = 500  # the degenerate images rank by uid among themselves: the first is kept
    g = group_of(phash, pixels)
    tables = tables_for(t, n)
    start = time.process_time()
    g = by_rank(g)
    parts, largest = [], 0
    for mask in tables.masks:
        found, big = group_found(g, mask, t)
        parts.append(found)
        largest = max(largest, big)
    found = best_found(join(Found, parts))
    cpu = time.process_time() - start
    return {"n": n, "cpu": cpu, "tables": len(tables.masks), "key_bits": tables.key_bits, "largest": largest,
            "degenerate_rule": int(found.hot.sum()), **check(n, role, phash, found, t)}


# ---------------------------------------------------------------- the Beam stage

def _beam_images(chunk: int, n: int, t: int):
    from pipelines.records import ImageInfo

    phash, pixels, role = make_hashes(n, t)
    pixels[role == 4] = 500
    for i in range(chunk * CHUNK, min(n, (chunk + 1) * CHUNK)):
        yield ImageInfo(f"{i:016x}", f"{i:09d}", i // 10_000, f"{i:064x}", int(phash[i]), int(pixels[i]))


def beam_child(n: int, t: int, mode: str, dedup: int) -> None:
    """One run (in a child process, so its CPU is its own): make the images, dedup them (0: not at all, 1:
    exact duplicates only, 2: exact and near), count what was found."""
    import apache_beam as beam

    from pipelines.imagededup import ImageDedup
    from wit.core.runner import pipeline_options

    args = ["--direct_running_mode", mode] + (["--direct_num_workers", "2"] if mode == "multi_processing" else [])
    p = beam.Pipeline(options=pipeline_options(args))
    infos = (p | beam.Create(range(-(-n // CHUNK))) | beam.Reshuffle()
             | beam.FlatMap(_beam_images, n, t))
    if dedup:
        infos = infos | ImageDedup(t if dedup == 2 else -1, n) | beam.Map(lambda kv: kv[1][0])  # rows found
    _ = infos | beam.combiners.Count.Globally() | beam.Map(print)
    p.run().wait_until_finish()


def beam_run(n: int, t: int, mode: str, dedup: int) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, __file__, "--child", f"{n},{t},{mode},{dedup}"], check=True,
                   capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000000,10000000")
    p.add_argument("--beam-sizes", default="1000000")
    p.add_argument("--modes", default="in_memory,multi_processing")
    p.add_argument("--threshold", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        n, t, mode, dedup = a.child.split(",")
        beam_child(int(n), int(t), mode, int(dedup))
        return 0
    t = a.threshold
    print(f"threshold {t}; {CLUSTER_SHARE:.0%} of images in planted clusters, {DEGENERATE_SHARE:.0%} share one "
          f"degenerate value; group limit {sizing.LIMIT:,}")
    print("\nbaseline: the all-pairs reference (`near_duplicates`, what the tables must equal) on few images:")
    n = 5_000
    phash, pixels, _role = make_hashes(n, t)
    infos = [records.ImageInfo(f"{i:016x}", f"{i:09d}", 0, "", int(phash[i]), int(pixels[i])) for i in range(n)]
    imagededup.find_near(infos[:100], t)  # numba compiles (or loads) its kernel on the first call
    start = time.process_time()
    want = imagededup.near_duplicates(infos, t)
    reference = time.process_time() - start
    start = time.process_time()
    got = imagededup.find_near(infos, t)
    tables = time.process_time() - start
    assert {u: v.duplicate_of for u, v in got.items()} == {u: b.key for u, b in want.items()}
    print(f"  {n:>11,} images: all pairs {1e6 * reference / n:.1f} us/image, the tables {1e6 * tables / n:.1f} "
          f"us/image ({reference / tables:.0f}x), the same verdicts; all pairs grow with n, the tables do not")
    print("\nthe algorithm alone (every table, in memory, one core):")
    for n in [int(s) for s in a.sizes.split(",") if s]:
        r = algorithm(n, t)
        us = 1e6 * r["cpu"] / n
        print(f"  {n:>11,} images: {us:6.2f} us/image ({r['tables']} tables, keys of {r['key_bits']} bits); "
              f"largest group compared pairwise {r['largest']:,}; recall {r['recall']:.2%} of planted copies "
              f"within {t}; {r['wrong']} wrong drops ({r['unplanted']} unplanted ones, each within {t} bits of "
              f"the image named); degenerate value: {r['degenerate_dropped']:,} of {r['degenerate']:,} dropped, "
              f"{r['degenerate_rule']:,} by the bounded rule", flush=True)
        print(f"  {'':>11}  projection: {us:.2f} us / {r['tables']} tables x {FULL_TABLES} tables at {FULL_SIZE:.0e} "
              f"images = {us * FULL_TABLES / r['tables']:.2f} us x {FULL_SIZE:.0e} = "
              f"{us * FULL_TABLES / r['tables'] * FULL_SIZE / 1e6 / 3600:,.2f} core-hours")
    print("\nthe Beam stage (ImageDedup), CPU of a run minus that of a run making the same images without it;")
    print("the exact step's cost does not depend on the tables, the near step's grows with their number:")
    for n in [int(s) for s in a.beam_sizes.split(",") if s]:
        for mode in a.modes.split(","):
            # the median of three runs each: the 2-core VM's CPU time moves by 10-20% between runs
            full, exact, none = (statistics.median(beam_run(n, t, mode, d) for _ in range(a.repeats))
                                 for d in (2, 1, 0))
            tables = len(tables_for(t, n).masks)
            us_exact, us_near = 1e6 * (exact - none) / n, 1e6 * (full - exact) / n
            at_full = us_exact + us_near * FULL_TABLES / tables
            print(f"  {n:>11,} images, {mode}: exact ({exact:.1f} - {none:.1f}) CPU-s / {n:,} = {us_exact:.1f} us, "
                  f"near ({full:.1f} - {exact:.1f}) CPU-s / {n:,} = {us_near:.1f} us with {tables} tables; "
                  f"{us_exact + us_near:.1f} us/image in all", flush=True)
            print(f"  {'':>11}  projection: {us_exact:.1f} + {us_near:.1f} x {FULL_TABLES}/{tables} tables = "
                  f"{at_full:.1f} us x {FULL_SIZE:.0e} images = {at_full * FULL_SIZE / 1e6 / 3600:,.1f} core-hours "
                  "(goal: at most 5)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
