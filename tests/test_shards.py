"""The write stage: verdicts applied to a staged shard, the shard written, every shard's statuses counted."""

import json

import apache_beam as beam

from pipelines import stages
from pipelines.imagededup import Verdict
from pipelines.shards import WriteShards, apply_verdicts
from wit import shardformat
from wit.shardformat import ErrorKind, Sample, Status


def _staged(n: int) -> list[Sample]:
    return [Sample(key=shardformat.key_for(0, i, 10), uid=f"u{i}", url=f"http://x/{i}", caption="c",
                   sha256=f"s{i}", phash="0" * 16, jpg=b"\xff\xd8jpeg") for i in range(n)]


def test_a_verdict_keeps_the_row_and_drops_the_image():
    v = Verdict("u1", Status.DUPLICATE, ErrorKind.DUPLICATE, "the same bytes as a kept image", "000")
    out = apply_verdicts(_staged(3), {"u1": v})
    assert [s.status for s in out] == [Status.SUCCESS, Status.DUPLICATE, Status.SUCCESS]
    assert out[1].jpg is None and out[1].error_kind is ErrorKind.DUPLICATE and out[1].error_message == v.message
    assert out[1].duplicate_of == "000"
    assert out[0].jpg == b"\xff\xd8jpeg"


def test_write_shards_writes_staged_shards_and_counts_finished_ones_too(tmp_path):
    out = str(tmp_path)
    shardformat.write_shard(out, 1, [Sample(key="000010", uid="f", url="http://x/f", caption="c",
                                            status=Status.FAILED_TO_DOWNLOAD, error_kind=ErrorKind.HTTP)])
    shardformat.write_parquet(shardformat.paths(out, 0)["staging"], _staged(3), shardformat.STAGING_SCHEMA)
    verdict = Verdict("u2", Status.NEAR_DUPLICATE, ErrorKind.NEAR_DUPLICATE, "pHash 2 bits from a kept image", "001")
    p = beam.Pipeline("DirectRunner")
    _ = ((p | "Shards" >> beam.Create([0, 1]), p | "Verdicts" >> beam.Create([(0, verdict)]))
         | WriteShards(out, finished=frozenset({1})))
    result = p.run()
    result.wait_until_finish()
    counts = stages.from_metrics(result)
    assert (counts["success"], counts["near_duplicate"], counts["failed_to_download"]) == (2, 1, 1)
    stats = json.loads((tmp_path / "shards" / "00000_stats.json").read_text())
    assert stats["successes"] == 2 and stats["near_duplicate"] == 1
    assert not (tmp_path / "_staging" / "00000.parquet").exists()
    rows = shardformat.read_samples(shardformat.paths(out, 0)["parquet"])
    assert rows[2].status is Status.NEAR_DUPLICATE and rows[2].error_message == "pHash 2 bits from a kept image"
    assert rows[2].duplicate_of == "001"
