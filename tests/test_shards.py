"""The write stage: verdicts applied to a staged shard, the shard written, every shard's statuses counted."""

import json

import apache_beam as beam
import pytest

from pipelines.grouping import pack
from pipelines.imagededup import found_rows
from pipelines.records import EvalImage, Verdict
from pipelines.shards import WriteShards, apply_verdicts
from wit.core import shardformat
from wit.core.shardformat import Sample, Status
from wit.core.errors import ErrorKind
from tests.counting import run_counted


def _staged(n: int) -> list[Sample]:
    return [Sample(key=shardformat.key_for(0, i, 10), uid=f"{i:016x}", url=f"http://x/{i}", caption="c",
                   sha256=f"s{i}", phash="0" * 16, jpg=b"\xff\xd8jpeg") for i in range(n)]


def test_a_verdict_keeps_the_row_and_drops_the_image():
    v = Verdict(f"{1:016x}", Status.DUPLICATE, ErrorKind.DUPLICATE, "the same bytes as a kept image", "000")
    out = apply_verdicts(_staged(3), {f"{1:016x}": v})
    assert [s.status for s in out] == [Status.SUCCESS, Status.DUPLICATE, Status.SUCCESS]
    assert out[1].jpg is None and out[1].error_kind is ErrorKind.DUPLICATE and out[1].error_message == v.message
    assert out[1].duplicate_of == "000"
    assert out[0].jpg == b"\xff\xd8jpeg"


def test_write_shards_writes_staged_shards_and_counts_finished_ones_too(tmp_path):
    out = str(tmp_path)
    shardformat.write_shard(out, 1, [Sample(key="000010", uid="f", url="http://x/f", caption="c",
                                            status=Status.FAILED_TO_DOWNLOAD, error_kind=ErrorKind.HTTP)])
    shardformat.write_parquet(shardformat.paths(out, 0).staging, _staged(3), shardformat.STAGING_SCHEMA)
    # what the image dedup stage found for shard 0, in two bundles: the image of uid 2 near a kept image in
    # two tables (the better one, key 000001, is named), the image of uid 1 near an evaluation image
    refs = (EvalImage("cifar", "7", 0),)
    rows = [(2, 0, 1, False, False, -1, 40, 5, 2), (1, 0, 0, False, False, 0, 0, 0, 0)]
    lists = [(0, (2, pack(list(found_rows(rows))))),
             (0, (1, pack(list(found_rows([(2, 0, 2, False, False, -1, 50, 0, 1)])))))]
    p = beam.Pipeline("DirectRunner")
    _ = ((p | "Shards" >> beam.Create([0, 1]), p | "Verdicts" >> beam.Create(lists))
         | WriteShards(out, finished=frozenset({1}), refs=refs))
    counted = run_counted(p, tmp_path)
    counts = counted.stages
    assert (counts["success"], counts["near_duplicate"], counts["eval_duplicate"], counts["failed_to_download"]) == \
        (1, 1, 1, 1)
    assert counted.eval_sets == {"cifar": 1}
    stats = json.loads((tmp_path / "shards" / "00000_stats.json").read_text())
    assert stats["successes"] == 1 and stats["near_duplicate"] == 1 and stats["eval_duplicate"] == 1
    assert not (tmp_path / "_staging" / "00000.parquet").exists()
    rows = shardformat.read_samples(shardformat.paths(out, 0).parquet)
    assert rows[2].status is Status.NEAR_DUPLICATE and rows[2].error_message == "pHash 2 bits from a kept image"
    assert rows[2].duplicate_of == "000001"
    assert rows[1].status is Status.EVAL_DUPLICATE and rows[1].duplicate_of == "cifar/7"


def test_a_failed_write_waits_for_the_writes_still_in_the_pool_before_it_fails_the_stage():
    """The command must not return while another shard is still being written (its temporary file would
    outlive the run)."""
    import threading
    from collections import deque
    from concurrent.futures import Future

    from pipelines.shards import WriteShard

    stage = WriteShard("unused", frozenset())
    stage.start_bundle()
    failed, slow = Future(), Future()
    failed.set_exception(OSError("refused"))
    stage.writing = deque([(1, slow)])
    threading.Timer(0.3, slow.set_result, args=[None]).start()
    with pytest.raises(OSError):
        list(stage._written(0, failed))
    assert slow.done() and not stage.writing
