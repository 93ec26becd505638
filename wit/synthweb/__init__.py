"""A synthetic web for the demo and the tests: drawn images, Zipf captions, real faults.

    web = SyntheticWeb(seed=0, count=3000)
    with SyntheticServer(web) as server:
        web.write_candidates("candidates.parquet", server.base_url)
        web.write_queries("queries.txt")
"""

from wit.synthweb.server import SyntheticServer, SynthwebOptions, serve_command
from wit.synthweb.site import FAULTS, Row, SyntheticWeb

__all__ = ["FAULTS", "Row", "SyntheticServer", "SyntheticWeb", "SynthwebOptions", "serve_command"]
