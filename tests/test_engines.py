"""The build on other Beam runners against the in-process FnApiRunner on the same inputs: Prism (Beam's Go
runner, built from the Go module proxy), a standalone Spark cluster and a Flink session cluster, each with
Beam's job server (`tests/engines.py`), all prepared by `make test-engines`. Marked `engines`: the default
suite leaves them out, and each is skipped, with its reason, where what it needs was not prepared."""

from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path

import pytest

from pipelines.build import BuildOptions, run_build
from pipelines.fetch import FetchOptions
from pipelines.resize import ResizeOptions
from tests import engines
from tests.queries_fixtures import standard_dump, write_pageviews, write_wordnet

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


# ---------------------------------------------------------------- Spark and Flink

CLUSTERS = {"spark": (engines.SparkCluster, engines.spark_ready()),
            "flink": (engines.FlinkCluster, engines.flink_ready())}
BUILD_FLAGS = ["--per-query-cap", "40", "--shard-size", "200", "--image-size", "64", "--timeout", "1.2",
               "--retries", "1", "--retry-backoff", "0.01", "--allow-private-networks", "--no-progress"]


@pytest.fixture(scope="module", params=sorted(CLUSTERS))
def cluster(request, tmp_path_factory):
    """Each engine's cluster in turn, started once for its tests and stopped after them."""
    make, skip = CLUSTERS[request.param]
    if skip:
        pytest.skip(skip)
    with make(tmp_path_factory.mktemp(request.param)) as running:
        yield running


@pytest.fixture(scope="module")
def local_build(web_server, tmp_path_factory):
    """The inputs, and the build of them on the FnApiRunner by the engines' virtualenv (the same libraries as
    the clusters' SDK workers: Pillow's and pyarrow's versions decide bytes too)."""
    web, server = web_server
    root = tmp_path_factory.mktemp("inputs")
    web.write_candidates(str(root / "candidates.parquet"), server.base_url)
    web.write_queries(str(root / "queries.txt"))
    _wit_build(root, root / "local")
    return root


def _wit_build(inputs: Path, out: Path, beam_args=()) -> dict:
    engines.wit("build", "--candidates", str(inputs / "candidates.parquet"), "--queries", str(inputs / "queries.txt"),
                "--out", str(out), *BUILD_FLAGS, *beam_args)
    return json.loads((out / "stats.json").read_text())


def _same_build(a: Path, b: Path) -> None:
    files = _files(a)
    assert files == _files(b) and any(f.endswith(".tar") for f in files)
    # the counts files hold how many elements one key received, which for some steps depends on how bundles
    # were cut; everything else is the same
    differ = [f for f in files if f not in ("stats.json", "_counts.json")
              and not filecmp.cmp(a / f, b / f, shallow=False)]
    assert differ == []
    sa, sb = json.loads((a / "stats.json").read_text()), json.loads((b / "stats.json").read_text())
    assert sa["stages"] == sb["stages"] and sa["per_query_after_balancing"] == sb["per_query_after_balancing"]
    assert sa["largest_keys"]["shard"] == sb["largest_keys"]["shard"]


def test_the_cluster_builds_the_same_bytes_and_counts_as_the_local_runner(cluster, local_build):
    _wit_build(local_build, local_build / cluster.name, cluster.beam_args)
    _same_build(local_build / "local", local_build / cluster.name)


def test_a_bundle_that_fails_once_on_the_cluster_is_counted_once(cluster, local_build):
    cluster.fail_once_armed.touch()
    _wit_build(local_build, local_build / f"{cluster.name}-retried", cluster.beam_args)
    assert not cluster.fail_once_armed.exists()  # a bundle failed after counting, and the engine ran it again
    _same_build(local_build / "local", local_build / f"{cluster.name}-retried")


def test_the_query_list_counted_on_the_cluster_is_the_local_one(cluster, tmp_path):
    dump = standard_dump(tmp_path / "enwiki-20240101-pages-articles1.xml.bz2")
    write_pageviews(tmp_path)
    wordnet = write_wordnet(tmp_path / "wordnet")
    lists = []
    for name, beam_args in (("local", []), (cluster.name, cluster.beam_args)):
        out = tmp_path / name
        engines.wit("queries", "build", "--out", str(out), "--wikipedia", str(dump), "--pageviews",
                    str(tmp_path / "pageviews-*"), "--wordnet", str(wordnet), "--target", "1000",
                    "--min-word-count", "60", "--min-bigram-count", "60", "--min-pmi", "1.0", "--min-views", "1000",
                    "--numbers", "0", "--no-progress", *beam_args)
        lists.append(((out / "queries.tsv").read_bytes(), (out / "composition.json").read_bytes()))
    assert lists[0] == lists[1] and b"ice cream\tbigram" in lists[0][0]
