"""CLIP trainer that reads the shards written by `wit build` (see issue #3)."""
