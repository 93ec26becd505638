"""How finely the build cuts its work: every partition count, batch size, flush point and group cap, with
its reason. The figures behind them are in bench/RESULTS.md (bench/scale.py for the plan, bench/dedup.py for
image dedup, bench/match.py for the matcher).

Partition and bucket counts come from the input's size, known before anything
runs, so a step never waits for a count to be stored before it can be spread.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------- Beam elements

# Candidates one Beam element holds: the matcher takes them a list at a time, since per caption the call
# would cost more than the match.
READ_BATCH = 8192
# Values a packed list holds (pairs in the balancing, (key, value) in the keeper steps): a Beam element
# costs more than the work on one value, and a list this long is a few hundred kB at most.
BATCH = 4096
# A text candidate file larger than this is read in parts of this size, so one large file still spreads
# over workers.
SPLIT_BYTES = 64 * 1024 * 1024

# ---------------------------------------------------------------- what a bundle holds before handing on

# Distinct keys a bundle's partial counts (or combines) hold before they go on: bounds a worker's memory
# whatever the bundle's size, while most keys still meet once per bundle.
FLUSH_KEYS = 100_000
# (query, pair) entries the balancing's bundle holds before it hands its partial bottom-ks on.
FLUSH_ENTRIES = 4_000_000
# Image-dedup rows (`Found`) a bundle holds before it hands them on per shard.
FLUSH_FOUND = 1_000_000

# ---------------------------------------------------------------- groups and hot keys

# Values of one key a worker groups; a key with more is hot and is resolved without grouping (the same
# result), so "the", a placeholder URL or a blank image costs no worker more than this.
MAX_GROUP = 10_000
# Partial combines a hot key is spread over before its last merge.
HOT_KEY_FANOUT = 16
# Distinct captions of one URL remembered to tell repeats of a (url, caption) pair from other captions.
MAX_CAPTIONS = 10_000

# ---------------------------------------------------------------- partitions of the plan

# Candidate input per URL-dedup partition (and per caption-dedup partition): a few thousand pairs each,
# at any size, so the shuffle moves lists, not single pairs.
PARTITION_BYTES = 1_000_000
# Candidate input per ordering bucket of the plan: at most a few thousand selected pairs each.
BUCKET_BYTES = 250_000


def url_partitions(input_bytes: int) -> int:
    return max(1, input_bytes // PARTITION_BYTES)


def caption_partitions(input_bytes: int) -> int:
    """Caption dedup follows the URL dedup's pairs, so it is cut as finely."""
    return url_partitions(input_bytes)


def plan_buckets(input_bytes: int) -> int:
    """Enough buckets that none holds more selected pairs than its share of the input has candidates."""
    return max(1, input_bytes // BUCKET_BYTES)


# ---------------------------------------------------------------- image dedup

# Images of one sha256 partition: the keeper step's lists stay a few MB.
IMAGES_PER_SHA256_PARTITION = 50_000
# (table, image) entries a worker compares at once in one pHash table partition: about 50 MB of columns.
ENTRIES_PER_PARTITION = 1_000_000
# Images of uniform pHashes expected per (table, key): the number of blocks grows until groups are no
# larger. Larger groups cost comparisons, more tables cost every image a shuffle entry each; this is where
# the two meet (bench/dedup.py).
TARGET_GROUP = 512
MAX_TABLES = 64  # the blocks stop growing before they need more tables than this (at large thresholds)
# Members of one group compared pairwise; a larger group (blank and placeholder images) is the degenerate
# class, compared against its best members only. Far above what uniform hashes reach at TARGET_GROUP.
LIMIT = 2_000


def sha256_partitions(images: int) -> int:
    return max(1, -(-images // IMAGES_PER_SHA256_PARTITION))


def phash_partitions(images: int) -> int:
    return max(1, -(-images // ENTRIES_PER_PARTITION))


# ---------------------------------------------------------------- spreading keys

# Fibonacci hashing's multiplier (2^64 / the golden ratio): multiplying spreads nearby keys over the high
# bits, which the hash tables of the matcher and image dedup's partitions then take.
MIX = np.uint64(0x9E3779B97F4A7C15)
