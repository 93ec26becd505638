"""Writing one shard: wit's tar writer against the standard library's tarfile, in the same run.

A shard's write runs after image dedup, when every image is in, so its time adds
to a build's wall time one shard per worker at a time. Rows: CPU-s to write the
tar of N samples (jpg, json and txt members) with `shardformat.write_members`
and with `tarfile.open(mode="w|")` (the baseline, which writes the same bytes),
and the whole `write_shard` (tar, Parquet, stats).

    python bench/write.py [--samples 10000] [--repeat 5]

At full size: a 10,000-sample shard is one task; 40,000 shards make the total
CPU of the write the per-shard figure times 40,000.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wit.core import shardformat  # noqa: E402
from wit.core.shardformat import Sample  # noqa: E402


def samples(n: int) -> list[Sample]:
    return [Sample(key=f"00000{i:04d}", uid=f"{i:016x}", url=f"http://example.com/img/{i}.jpg",
                   caption=f"a photo of a dog, picture {i}", width=256, height=256, original_width=600,
                   original_height=500, sha256="ab" * 32, phash="cd" * 8, http_status=200, matched_query_ids=(1,),
                   selected_query_ids=(1,), source_file="candidates.parquet", source_row=i,
                   jpg=os.urandom(12_000)) for i in range(n)]


def tarfile_members(f, members) -> None:
    """The baseline: what write_members writes, through tarfile."""
    with tarfile.open(fileobj=f, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "wit", "wit"
            tar.addfile(info, io.BytesIO(data))


def members(shard: list[Sample]) -> list[tuple[str, bytes]]:
    out = []
    for s in shard:
        out += [(f"{s.key}.jpg", s.jpg), (f"{s.key}.json", repr(s.metadata()).encode()),
                (f"{s.key}.txt", s.caption.encode())]
    return out


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    shard = samples(a.samples)
    listed = members(shard)
    ours, theirs, whole = [], [], []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(a.repeat):
            mine, base = io.BytesIO(), io.BytesIO()
            ours.append(cpu(lambda: shardformat.write_members(mine, listed)))
            theirs.append(cpu(lambda: tarfile_members(base, listed)))
            if mine.getvalue() != base.getvalue():
                raise SystemExit("the two writers wrote different bytes")
            whole.append(cpu(lambda: shardformat.write_shard(out, 0, shard)))
    best = min(ours), min(theirs), min(whole)
    print(f"{a.samples:,} samples, {len(listed):,} tar members; best of {a.repeat} runs, CPU-s")
    print(f"  tar, shardformat.write_members      {best[0]:7.3f}")
    print(f"  tar, tarfile (baseline)             {best[1]:7.3f}")
    print(f"  write_shard (tar, Parquet, stats)   {best[2]:7.3f}   {1000 * best[2] / a.samples:.3f} ms/sample")
    print(f"tarfile / write_members: {best[1] / best[0]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
