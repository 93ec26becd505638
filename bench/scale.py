"""How the plan (everything before the download) grows with the pool, and what 1.6 billion candidates cost.

Builds candidate pools offline with the skew of the real web: Zipf captions
over wordfreq's English list (so "the", "a" and "of" match most captions,
against 500,000 queries as `bench/match.py` makes them), a few URLs repeated
thousands of times (placeholders and logos), one caption repeated 20,000 times
(a spam alt text), and 2% of rows repeating an earlier URL. Then it runs
`wit build --plan-only` on each pool, in-process and on the multi-process
runner, and prints for each run:

- CPU-seconds per candidate: every process of the run, workers included
  (user + system time of the `wit` process and all it waited for);
- peak memory: the largest resident set of any one process of the run;
- the largest key of every grouping step (from stats.json);
- the projection to 1.6 billion candidates in vCPU-hours, with the arithmetic;
- beside each size, the baseline: reading the pool and matching its captions alone (the stages every plan
  starts with), in-process, and the whole plan's CPU as a multiple of it.

Goals: the largest key of each step flat as the pool grows 10x (within 1.2x),
and at most 60 us of CPU per candidate.

    python bench/scale.py [--sizes 100000,1000000] [--modes in_memory,multi_processing]

With --spark, the plan of the largest pool runs on a standalone Spark cluster of two one-core workers
on loopback (tests/engines.py; `make test-engines` prepares it) and, beside it, on the local runner in the
same virtualenv (apache-beam 2.62.0, which the Spark job server needs): wall time and CPU-seconds per candidate
of each, and their ratio. CPU there is the whole machine's (/proc/stat, nothing else running), since the
cluster's processes are not the launcher's children.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

from match import make_captions, make_queries  # noqa: E402

FULL_SIZE = 1_600_000_000
PLACEHOLDERS, PLACEHOLDER_REPEATS = 5, 3_000  # URLs that many pages point to
SPAM_REPEATS = 20_000  # one caption on that many pages
REPEAT_SHARE = 0.02  # rows that repeat an earlier URL
CHUNK = 200_000


def write_pool(path: str, n: int, seed: int = 0) -> None:
    """n candidate rows as Parquet, written in row groups of CHUNK."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    spam = "Buy cheap high quality photos online at the best price | PhotoShop Deals"
    planted = [(f"http://static.example.com/placeholder-{k}.png", None) for k in range(PLACEHOLDERS)] * \
        PLACEHOLDER_REPEATS + [(None, spam)] * SPAM_REPEATS
    planted_at = dict(zip(rng.sample(range(n), min(n, len(planted))), planted))
    with pq.ParquetWriter(path, pa.schema([("url", pa.string()), ("caption", pa.string())])) as writer:
        for start in range(0, n, CHUNK):
            captions = make_captions(min(CHUNK, n - start), seed=seed * 1_000_003 + start)
            urls = []
            for i in range(start, start + len(captions)):
                url, caption = planted_at.get(i, (None, None))
                if caption:
                    captions[i - start] = caption
                if url is None:
                    j = rng.randrange(i) if i and rng.random() < REPEAT_SHARE else i
                    url = f"http://img{j % 997}.example.org/photos/{j:012d}.jpg"
                urls.append(url)
            writer.write_table(pa.table({"url": urls, "caption": captions}))


def run_plan(pool: str, queries: str, out: str, mode: str) -> dict:
    """One `wit build --plan-only`; its stats, CPU-seconds and the peak memory of its largest process."""
    args = [sys.executable, "-m", "wit.cli", "build", "--candidates", pool, "--queries", queries, "--out", out,
            "--plan-only", "--runner", "FnApiRunner", "--direct_running_mode", mode]
    if mode == "multi_processing":
        args += ["--direct_num_workers", str(os.cpu_count() or 2)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=os.path.join(HERE, ".."))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:  # reported, and the other runs go on
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(os.path.join(out, "stats.json")) as f:
        stats = json.load(f)
    return {"stats": stats, "cpu": cpu, "wall": wall, "peak_mb": after.ru_maxrss / 1024}


def machine_busy_seconds() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def spark_versus_local(pool: str, queries: str, work: str, n: int) -> None:
    from tests import engines

    why = engines.spark_ready()
    if why:
        print(f"\nSpark: skipped ({why})")
        return
    runs = {}
    with engines.SparkCluster(engines.Path(tempfile.mkdtemp(prefix="wit-spark-", dir=work))) as cluster:
        for name, beam_args in (("local runner", ["--runner", "FnApiRunner"]), ("Spark, 2 workers", cluster.beam_args)):
            out = os.path.join(work, f"out-{n}-{name.split()[0].lower()}")
            subprocess.run(["rm", "-rf", out], check=True)
            busy, start = machine_busy_seconds(), time.perf_counter()
            engines.wit("build", "--candidates", pool, "--queries", queries, "--out", out, "--plan-only",
                        "--no-progress", *beam_args, timeout=3600)
            runs[name] = (time.perf_counter() - start, machine_busy_seconds() - busy,
                          json.load(open(os.path.join(out, "stats.json")))["stages"])
    print(f"\n{n:,} candidates, plan only, apache-beam {engines.BEAM}, machine CPU:")
    for name, (wall, cpu, stages) in runs.items():
        print(f"  {name:<17} {wall:7.1f}s wall  {cpu:7.1f} CPU-s  {1e6 * cpu / n:6.1f} us/candidate  "
              f"{stages['selected']:,} selected")
    (lw, lc, ls), (sw, sc, ss) = runs["local runner"], runs["Spark, 2 workers"]
    print(f"  Spark / local: {sw / lw:.2f}x wall, {sc / lc:.2f}x CPU; same selection: {ls == ss}")


def read_and_match(pool: str, queries: str) -> None:
    """The baseline, in a child process: read the pool and match its captions, the stages every plan starts
    with, and nothing else."""
    import apache_beam as beam

    from pipelines.candidates import ReadCandidates
    from pipelines.match import MatchQueries
    from wit.core.runner import pipeline_options

    p = beam.Pipeline(options=pipeline_options([]))
    candidates, _rejects = p | ReadCandidates([(pool, os.path.getsize(pool))], "auto", "url", "caption")
    _ = candidates | MatchQueries(queries) | beam.combiners.Count.Globally() | beam.Map(print)
    p.run().wait_until_finish()


def baseline(pool: str, queries: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, __file__, "--read-and-match", pool, queries], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    if sys.argv[1:2] == ["--read-and-match"]:
        read_and_match(*sys.argv[2:4])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--modes", default="in_memory,multi_processing")
    p.add_argument("--queries", type=int, default=500_000)
    p.add_argument("--work", help="folder for the pools and outputs (default: a temporary one)")
    p.add_argument("--spark", action="store_true", help="also plan the largest pool on a Spark cluster")
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    work = a.work or tempfile.mkdtemp(prefix="wit-scale-")
    queries = os.path.join(work, "queries.txt")
    if not os.path.exists(queries):
        with open(queries, "w") as f:
            f.write("".join(q + "\n" for q in make_queries(a.queries)))
    print(f"{a.queries:,} queries; pools and outputs in {work}; {os.cpu_count()} cores")
    results = {}
    for n in sizes:
        pool = os.path.join(work, f"pool-{n}.parquet")
        if not os.path.exists(pool):
            t0 = time.perf_counter()
            write_pool(pool, n)
            print(f"wrote a pool of {n:,} candidates in {time.perf_counter() - t0:.0f}s", flush=True)
        base = baseline(pool, queries)
        print(f"\n{n:,} candidates, baseline (read and match only, in_memory): {base:.1f} CPU-s "
              f"({1e6 * base / n:.1f} us/candidate)", flush=True)
        for mode in a.modes.split(","):
            out = os.path.join(work, f"out-{n}-{mode}")
            subprocess.run(["rm", "-rf", out], check=True)
            r = run_plan(pool, queries, out, mode)
            if "error" in r:
                print(f"{n:,} candidates, {mode}: failed: {r['error']}", flush=True)
                continue
            results[(n, mode)] = r
            s = r["stats"]["stages"]
            print(f"{n:,} candidates, {mode}: {r['cpu']:.1f} CPU-s ({1e6 * r['cpu'] / n:.1f} us/candidate, "
                  f"{r['cpu'] / base:.2f}x the baseline), "
                  f"{r['wall']:.1f}s wall, peak {r['peak_mb']:,.0f} MB in one process; "
                  f"{s['matched']:,} matched, {s['unique_pairs']:,} unique, {s['selected']:,} selected", flush=True)
            for step, k in r["stats"]["largest_keys"].items():
                print(f"  largest key  {step:<15} {k['largest']:>9,}  (mean {k['mean']:,.1f}, {k['keys']:,} keys)")
    print("\nlargest key as the pool grows 10x (goal: within 1.2x):")
    for mode in a.modes.split(","):
        for small, big in zip(sizes, sizes[1:]):
            if (small, mode) in results and (big, mode) in results and big == 10 * small:
                ks, kb = results[(small, mode)]["stats"]["largest_keys"], results[(big, mode)]["stats"]["largest_keys"]
                for step in kb:
                    ratio = kb[step]["largest"] / max(1, ks.get(step, {"largest": 0})["largest"])
                    print(f"  {mode:<16} {step:<15} {ks.get(step, {}).get('largest', 0):>9,} -> "
                          f"{kb[step]['largest']:>9,}  x{ratio:.2f}")
    print(f"\nprojection to {FULL_SIZE:,} candidates (goal: at most 60 us/candidate):")
    print("  the marginal cost is the slope between two pool sizes: the CPU a run spends whatever its size")
    print("  (imports, building the matcher for the query list, starting the runner) is paid once per worker,")
    print("  not per candidate")
    for mode in a.modes.split(","):
        runs = sorted((n, r) for (n, m), r in results.items() if m == mode)
        for n, r in runs:
            print(f"  {mode:<16} {n:>12,}: {r['cpu']:7.1f} CPU-s / {n:,} = {1e6 * r['cpu'] / n:6.1f} us/candidate")
        for (n0, r0), (n1, r1) in zip(runs, runs[1:]):
            us = 1e6 * (r1["cpu"] - r0["cpu"]) / (n1 - n0)
            fixed = r0["cpu"] - us * n0 / 1e6
            print(f"  {mode:<16} marginal ({r1['cpu']:.1f} - {r0['cpu']:.1f}) CPU-s / ({n1:,} - {n0:,}) = {us:.1f} "
                  f"us/candidate (fixed {fixed:.1f} CPU-s); x {FULL_SIZE:.1e} = {us * FULL_SIZE / 1e6:,.0f} CPU-s "
                  f"= {us * FULL_SIZE / 1e6 / 3600:,.0f} vCPU-hours")
    if a.spark:
        spark_versus_local(os.path.join(work, f"pool-{sizes[-1]}.parquet"), queries, work, sizes[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
