"""Download progress read from what the job leaves in DIR, on a terminal and in a log."""

import io
import json

from pipelines.progress import DownloadProgress
from wit.core import shardformat
from wit.core.shardformat import Sample, Status


def _stage(out, shard, ok, failed):
    """A shard downloaded but not yet written: its staging file, as the download stage leaves it."""
    samples = [Sample(key=f"{shard:05d}{i:04d}", uid=f"{i:016x}", url=f"http://a/{i}", caption="c",
                      status=Status.SUCCESS if i < ok else Status.FAILED_TO_DOWNLOAD)
               for i in range(ok + failed)]
    shardformat.write_parquet(shardformat.paths(str(out), shard).staging, samples, shardformat.STAGING_SCHEMA)


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_counts_staged_and_written_shards(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "00000_stats.json").write_text(json.dumps({"count": 9, "successes": 9}))  # finished
    stream = io.StringIO()
    with DownloadProgress(str(tmp_path), 4, frozenset({0}), interval=60, stream=stream) as progress:
        _stage(tmp_path, 1, ok=7, failed=3)
        progress.poll()
        assert len(progress.done) == 2 and (progress.images, progress.samples) == (7, 10)
        assert progress.line().startswith("shards 2/4, 7 images, ") and "70% fetched" in progress.line()
        for shard in (2, 3):
            (tmp_path / "shards" / f"{shard:05d}_stats.json").write_text(json.dumps({"count": 10, "successes": 7}))
    lines = stream.getvalue().strip().splitlines()
    assert lines[-1].startswith("wit build: shards 4/4, 21 images, ") and lines[-1].endswith("ETA 0s")
    assert len([line for line in lines if "4/4" in line]) == 1  # the last line once, not every poll


def test_a_terminal_gets_a_bar(tmp_path):
    (tmp_path / "shards").mkdir()
    stream = _Tty()
    with DownloadProgress(str(tmp_path), 2, frozenset(), interval=60, stream=stream):
        (tmp_path / "shards" / "00000_stats.json").write_text(json.dumps({"count": 4, "successes": 4}))
    assert "download:  50%" in stream.getvalue() and "4 images" in stream.getvalue()
