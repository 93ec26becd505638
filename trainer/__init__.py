"""CLIP trainer that reads the shards written by `wit build` (the format in `wit.core.shardformat`).

It imports wit's core only, never the Beam job, so a training machine needs neither.
"""
