"""Evaluation sets kept out of the dataset: reading them, and a build whose candidates serve re-encoded and
resized copies of evaluation images."""

from __future__ import annotations

import glob
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.build import BuildOptions, run_build
from pipelines.evalsets import EvalSetError, read_eval_sets, set_name
from pipelines.fetch import FetchOptions
from pipelines.resize import ResizeOptions
from wit.core import shardformat
from wit.summary import summary

RESIZE = ResizeOptions(image_size=48)


def test_sets_are_named_after_their_folders():
    assert set_name("/data/wds_cifar10/test/*.tar") == "wds_cifar10"
    assert set_name("/data/wds_cifar10/") == "wds_cifar10"
    assert set_name("evals/imagenet/0.tar") == "imagenet"
    assert set_name("flowers") == "flowers"


def test_a_folder_of_images_and_a_tar_glob_are_read_and_a_bad_image_is_skipped(tmp_path, web_server):
    web, _ = web_server
    (tmp_path / "a").mkdir()
    for i in range(3):
        (tmp_path / "a" / f"img{i}.png").write_bytes(web.image_bytes(i, "png"))
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    tars = tmp_path / "b" / "test"
    tars.mkdir(parents=True)
    with open(tars / "0.tar", "wb") as f:
        shardformat.write_members(f, [("s7.jpg", web.image_bytes(7)), ("s7.cls", b"3")])
    images = read_eval_sets([str(tmp_path / "a"), str(tars / "*.tar")], RESIZE)
    assert [(i.source, i.key) for i in images] == [("a", "img0"), ("a", "img1"), ("a", "img2"), ("b", "s7")]
    with pytest.raises(EvalSetError, match="no image found"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("x")
        read_eval_sets([str(tmp_path / "empty")], RESIZE)


@pytest.fixture(scope="module")
def decontaminated(web_server, tmp_path_factory):
    web, server = web_server
    root = tmp_path_factory.mktemp("evalsets")
    rows = [r for r in web.rows(server.base_url)[:400] if r.fault in ("ok", "mirror", "variant", "dup_url")]
    copied = sorted({r.image_id for r in rows if r.fault in ("variant", "mirror")})
    in_folder, in_tar = set(copied[:4]), set(copied[4:8])
    (root / "evals" / "drawn").mkdir(parents=True)
    for i in in_folder:
        (root / "evals" / "drawn" / f"{i}.png").write_bytes(web.image_bytes(i, "png"))
    (root / "evals" / "wds_drawn" / "test").mkdir(parents=True)
    with open(root / "evals" / "wds_drawn" / "test" / "0.tar", "wb") as f:
        shardformat.write_members(f, [(f"{i:06d}.jpg", web.image_bytes(i)) for i in sorted(in_tar)])
    (root / "in").mkdir()
    pq.write_table(pa.table({"url": [r.url for r in rows], "caption": [r.caption for r in rows]}),
                   root / "in" / "candidates.parquet")
    web.write_queries(str(root / "in" / "queries.txt"))
    opts = BuildOptions(candidates=(str(root / "in" / "candidates.parquet"),), queries=str(root / "in" / "queries.txt"),
                        out=str(root / "out"), shard_size=100, threads=16, resize=RESIZE,
                        exclude_near=(str(root / "evals" / "drawn"), str(root / "evals" / "wds_drawn")),
                        fetch=FetchOptions(timeout=1.2, retries=1, retry_backoff=0.01, allow_private_networks=True))
    stats = run_build(opts, ["--runner=DirectRunner"])
    table = [r for f in sorted(glob.glob(f"{root}/out/shards/*.parquet")) for r in pq.read_table(f).to_pylist()]
    return {"rows": rows, "stats": stats, "table": table, "folder": in_folder, "tar": in_tar, "out": root / "out"}


def test_every_copy_of_an_evaluation_image_is_dropped_and_nothing_else(decontaminated):
    image_of = {r.url: r.image_id for r in decontaminated["rows"]}
    evaluated = decontaminated["folder"] | decontaminated["tar"]
    fetched = [r for r in decontaminated["table"] if r["status"] not in ("failed_to_download", "failed_to_resize")]
    dropped = {r["url"] for r in fetched if r["status"] == "eval_duplicate"}
    assert dropped and dropped == {r["url"] for r in fetched if image_of[r["url"]] in evaluated}
    for r in fetched:
        if r["status"] == "eval_duplicate":
            source, key = r["duplicate_of"].split("/")
            assert r["error_kind"] == "eval_duplicate" and r["error_message"].endswith(f"{source}/{key}")
            assert int(key) in (decontaminated["folder"] if source == "drawn" else decontaminated["tar"])


def test_stats_and_the_summary_count_each_evaluation_set(decontaminated):
    stats = decontaminated["stats"]
    by_set = {}
    for r in decontaminated["table"]:
        if r["status"] == "eval_duplicate":
            name = r["duplicate_of"].split("/")[0]
            by_set[name] = by_set.get(name, 0) + 1
    assert stats.excluded_per_eval_set == by_set and set(by_set) == {"drawn", "wds_drawn"}
    assert stats.stages["eval_duplicate"] == sum(by_set.values())
    assert json.loads((decontaminated["out"] / "stats.json").read_text())["excluded_per_eval_set"] == by_set
    text = summary(stats, str(decontaminated["out"]))
    assert "near an evaluation image (--exclude-near)" in text and "wds_drawn" in text


def test_the_report_page_counts_each_evaluation_set(decontaminated, tmp_path):
    from wit.cli import main

    page = tmp_path / "report.html"
    assert main(["report", str(decontaminated["out"]), "--out", str(page), "--queries", "1", "--per-query", "1"]) == 0
    text = page.read_text()
    assert "near an evaluation image (--exclude-near)" in text and "drawn" in text and "wds_drawn" in text
    assert "eval_duplicate" in text  # the status breakdown
