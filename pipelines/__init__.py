"""The Beam job: candidate pairs in, curated balanced shards out.

One module per stage, holding its plain logic and its Beam transform side by
side; `build` wires them in order and `stages` lists what each one counts.
"""
