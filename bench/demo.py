"""The demo's figures over several runs: the ranges the README quotes and `wit demo` prints beside its own.

Runs `wit demo` (default settings: 6,000 candidates, 400 steps of tiny-vit on the
CPU) N times, each in a fresh directory, and prints per run the wall time and
the zero-shot top-1 on colours, shapes and colour-shapes, then the range of
each over the runs beside the range `wit.demo.EXPECTED_TOP1` holds (the one the
README states). The figures move between runs because multi-threaded CPU
arithmetic is not bit-reproducible; the dataset itself is the same every run.

    python bench/demo.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from wit.demo import EXPECTED_TOP1  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    wit = os.path.join(os.path.dirname(sys.executable), "wit")
    figures: dict[str, list[float]] = {name: [] for name in EXPECTED_TOP1}
    walls = []
    with tempfile.TemporaryDirectory(prefix="wit-bench-demo-") as tmp:
        for run in range(a.runs):
            out = os.path.join(tmp, f"run{run}")
            started = time.monotonic()
            proc = subprocess.run([wit, "demo", "--out", out], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
            if proc.returncode:
                raise SystemExit(f"run {run + 1}: `wit demo` failed:\n{proc.stderr[-3000:]}")
            walls.append(time.monotonic() - started)
            with open(os.path.join(out, "demo.json")) as f:
                results = json.load(f)["train"]["eval"]
            for name in figures:
                figures[name].append(results[f"zeroshot/{name}"]["top1"])
            print(f"run {run + 1}: {walls[-1]:.0f} s; " + ", ".join(f"{name} {figures[name][-1]:.1%}"
                                                                  for name in figures), flush=True)
    print(f"\nover {a.runs} runs: wall {min(walls):.0f}-{max(walls):.0f} s")
    for name, values in figures.items():
        lo, hi = EXPECTED_TOP1[name]
        inside = sum(lo <= v <= hi for v in values)
        print(f"  {name:14s} top-1 {min(values):.1%} - {max(values):.1%}   (README: {lo:.0%}-{hi:.0%}; "
              f"{inside} of {a.runs} runs inside)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
