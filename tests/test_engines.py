"""The build on another Beam runner: Prism (Beam's Go runner, built from the Go module proxy by
`make test-engines`), against the in-process FnApiRunner on the same inputs. Marked `engines`: the default
suite leaves it out, and it is skipped where no Prism binary was built (WIT_PRISM names it)."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import pytest

from pipelines.build import BuildOptions, run_build
from pipelines.fetch import FetchOptions
from pipelines.resize import ResizeOptions

pytestmark = pytest.mark.engines
PRISM = os.environ.get("WIT_PRISM", "")


def _opts(inputs: Path, out: Path) -> BuildOptions:
    return BuildOptions(candidates=(str(inputs / "candidates.parquet"),), queries=str(inputs / "queries.txt"),
                        out=str(out), per_query_cap=40, shard_size=200, resize=ResizeOptions(image_size=64),
                        progress=False,
                        fetch=FetchOptions(timeout=1.2, retries=1, retry_backoff=0.01, allow_private_networks=True))


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".wit-lock")


@pytest.mark.skipif(not os.access(PRISM, os.X_OK), reason="no Prism binary: run `make test-engines`")
def test_prism_builds_the_same_bytes_and_counts_as_the_local_runner(web_server, tmp_path):
    web, server = web_server
    inputs = tmp_path / "inputs"
    web.write_candidates(str(inputs / "candidates.parquet"), server.base_url)
    web.write_queries(str(inputs / "queries.txt"))
    local = run_build(_opts(inputs, tmp_path / "local"), ["--runner=FnApiRunner"])
    prism = run_build(_opts(inputs, tmp_path / "prism"), ["--runner=PrismRunner", f"--prism_location={PRISM}"])
    files = _files(tmp_path / "local")
    assert files == _files(tmp_path / "prism") and any(f.endswith(".tar") for f in files)
    # stats.json's largest keys count what one bundle brought a key, and bundles are the runner's to cut
    differ = [f for f in files if f != "stats.json"
              and not filecmp.cmp(tmp_path / "local" / f, tmp_path / "prism" / f, shallow=False)]
    assert differ == []
    assert prism.stages == local.stages and prism.per_query_after_balancing == local.per_query_after_balancing
