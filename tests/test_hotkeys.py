"""Planted hot keys: a query matching every caption, a URL repeated many times, one image at many URLs, one
caption on many pages. No grouping step gathers more than --max-group-size elements of a key, and the
output is what the in-memory reference says."""

from __future__ import annotations

import glob
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import balance, sizing, textdedup
from pipelines.build import BuildOptions, run_build
from pipelines.fetch import FetchOptions
from pipelines.match import QueryMatcher
from pipelines.resize import ResizeOptions
from pipelines.records import Pair, ids_of, pack_ids
from pipelines.urldedup import choose_pair, normalize_url, uid_for
from wit.core.text import clean_caption

MAX_GROUP, CAP, REPEATS = 40, 20, 150
HOT_QUERY = "planted"


@pytest.fixture(scope="module")
def hot(web_server, tmp_path_factory):
    web, server = web_server
    root = tmp_path_factory.mktemp("hot")
    rows = [r for r in web.rows(server.base_url)[:300] if r.fault in ("ok", "mirror", "variant", "dup_url")]
    base = server.base_url
    one = next(r for r in rows if r.fault == "ok" and r.url.endswith(".jpg"))
    image_id = one.image_id
    table = [(r.url, f"{r.caption} {HOT_QUERY}") for r in rows]  # every caption matches the hot query
    table += [(f"{base}/mirror/{image_id}/{n}.jpg", f"copy{n} of the same picture {HOT_QUERY}")
              for n in range(REPEATS)]  # one image at many URLs, each copy selected by a query of its own
    table += [(one.url, f"caption {n} of one url {HOT_QUERY}") for n in range(REPEATS)]  # one URL, many captions
    table += [(one.url, one.caption) for _ in range(REPEATS)]  # one (url, caption) many times
    spam = f"buy cheap drawings online at the best price in town today {HOT_QUERY}"
    table += [(f"{base}/img/{r.image_id}.jpg?page={n}", spam) for n, r in
              enumerate(r for r in rows if r.fault == "ok") if n < REPEATS]  # one caption on many pages
    (root / "in").mkdir()
    pq.write_table(pa.table({"url": [u for u, _ in table], "caption": [c for _, c in table]}),
                   root / "in" / "candidates.parquet")
    queries = web.write_queries(str(root / "in" / "queries.txt")) + [HOT_QUERY] + [f"copy{n}" for n in range(REPEATS)]
    (root / "in" / "queries.txt").write_text("".join(q + "\n" for q in queries))
    opts = BuildOptions(candidates=(str(root / "in" / "candidates.parquet"),), queries=str(root / "in" / "queries.txt"),
                        out=str(root / "out"), per_query_cap=CAP, shard_size=100, threads=16, caption_dup_threshold=0.9,
                        max_group_size=MAX_GROUP, resize=ResizeOptions(image_size=48),
                        fetch=FetchOptions(timeout=1.2, retries=1, retry_backoff=0.01, allow_private_networks=True))
    stats = run_build(opts, ["--runner=DirectRunner"])
    return {"table": table, "queries": queries, "stats": stats, "out": root / "out", "image_id": image_id}


def test_no_grouping_step_gathers_more_than_max_group_of_one_key(hot):
    keys = hot["stats"].largest_keys
    for step in ("caption_band", "sha256"):
        assert keys[step]["largest"] <= MAX_GROUP, (step, keys[step])
    assert keys["phash_group"]["largest"] <= sizing.LIMIT
    # URL partitions and ordering buckets are cut by input size (a few thousand candidates each); this input
    # is smaller than one, and its partials and pairs arrive once each
    for step in ("url_partition", "order_bucket"):
        assert keys[step]["largest"] <= len(hot["table"]), (step, keys[step])
    assert keys["shard"]["largest"] <= 100 and keys["shard_verdicts"]["largest"] <= 100
    # the hot query matches every pair, yet its bottom-k sees about 1.5x the cap, not the pool
    assert keys["query_topk"]["largest"] <= balance.expected_passing(CAP) * 1.5 < len(hot["table"]) / 2
    # combines see the repeats and hold one value and a count each
    assert keys["url"]["largest"] >= 2 * REPEATS + 1  # the URL with many captions, many times over
    # the image at many URLs and the spam caption's MinHash bands went around the grouping
    assert hot["stats"].stages["hot_keys"] >= 2


def test_the_output_is_the_reference_selection_and_dedup(hot):
    matcher = QueryMatcher(hot["queries"])
    by_url: dict[str, list[Pair]] = {}
    for url, caption in hot["table"]:
        text = clean_caption(caption)
        by_url.setdefault(normalize_url(url), []).append(Pair(text, url, pack_ids(matcher.match(text))))
    chosen = {uid_for(u): choose_pair(ps)[0] for u, ps in by_url.items()}
    sketches = [textdedup.sketch(uid, p.caption, 0) for uid, p in chosen.items()]
    bands: dict[bytes, list] = {}
    for sk in sketches:
        for band in textdedup.band_keys(sk, 0.9):
            bands.setdefault(band, []).append(sk)
    dropped = {d.uid for members in bands.values() for d in textdedup.drops_in_bucket(members, 0.9)}
    assert len(dropped) >= REPEATS - 1  # the spam caption's pages, all but one
    expected = balance.select({uid: ids_of(p.matched).tolist() for uid, p in chosen.items() if uid not in dropped},
                              CAP, seed=0)
    rows = [r for f in sorted(glob.glob(f"{hot['out']}/shards/*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert {r["uid"]: tuple(r["selected_query_ids"]) for r in rows} == expected
    assert {r["uid"]: r["caption"] for r in rows} == {uid: chosen[uid].caption for uid in expected}
    hot_id = hot["queries"].index(HOT_QUERY)
    assert sum(hot_id in r["selected_query_ids"] for r in rows) == CAP
    copies = [r for r in rows if f"/mirror/{hot['image_id']}/" in r["url"] and r["status"] != "failed_to_download"]
    assert copies and sum(r["status"] == "success" for r in copies) <= 1
    assert all(r["status"] in ("success", "duplicate") for r in copies)
    stats = json.loads((hot["out"] / "stats.json").read_text())
    assert stats["stages"]["duplicate_pairs"] >= REPEATS - 1
