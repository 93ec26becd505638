"""Apache Beam jobs: candidate pairs in, curated balanced shards out.

Each stage's logic lives in a plain module (candidates, match, balance, fetch,
resize, dedup, shards); `build` wires them into one Beam pipeline.
"""
