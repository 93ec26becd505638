"""`wit demo`: the whole path on the bundled synthetic web, with no arguments.

Generates a few thousand candidate pairs with the real web's faults, serves
their images on 127.0.0.1, runs `wit build` on them with Beam and prints what
each stage did.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from typing import Sequence

from pipelines.build import BuildOptions, run_build
from pipelines.fetch import FetchOptions
from wit import fileio
from wit.report import summary
from wit.synthweb import SyntheticServer, SyntheticWeb

_MARKER = ".wit-demo"


def _fresh_dir(out: str) -> None:
    """The demo owns its directory: replace an earlier demo's, refuse anything else."""
    if os.path.exists(out):
        if os.listdir(out) and not os.path.exists(os.path.join(out, _MARKER)):
            raise ValueError(f"{out} exists and is not a wit demo directory; pass another --out")
        shutil.rmtree(out)
    os.makedirs(out)
    open(os.path.join(out, _MARKER), "w").close()


def run_demo(out: str = "wit-demo", count: int = 3000, per_query_cap: int = 150, shard_size: int = 500,
             seed: int = 0, beam_args: Sequence[str] = ()) -> dict:
    _fresh_dir(out)
    inputs, dataset = os.path.join(out, "inputs"), os.path.join(out, "dataset")
    web = SyntheticWeb(seed=seed, count=count)
    started = time.monotonic()
    with SyntheticServer(web, slow_seconds=3.0) as server:
        rows = web.write_candidates(fileio.join(inputs, "candidates.parquet"), server.base_url)
        web.write_queries(fileio.join(inputs, "queries.txt"))
        faults = Counter(r.fault for r in rows)
        print(f"synthetic web on {server.base_url}: {len(rows):,} candidate pairs "
              f"({', '.join(f'{k} {v}' for k, v in faults.most_common())})")
        opts = BuildOptions(
            candidates=(fileio.join(inputs, "candidates.parquet"),), queries=fileio.join(inputs, "queries.txt"),
            out=dataset, per_query_cap=per_query_cap, shard_size=shard_size, seed=seed, threads=32,
            fetch=FetchOptions(timeout=1.5, retries=1, retry_backoff=0.1),
        )
        args = list(beam_args) or ["--runner=DirectRunner", "--direct_num_workers=2",
                                   "--direct_running_mode=multi_threading"]
        print(f"running `wit build` with Beam ({' '.join(args)}) ...")
        stats = run_build(opts, args)
    print(summary(stats, dataset))
    print(f"demo finished in {time.monotonic() - started:.0f}s; inputs in {inputs}")
    with open(os.path.join(out, "demo.json"), "w") as f:
        json.dump({"stats": stats, "faults": dict(faults)}, f, indent=1)
    return stats
