import json

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from pipelines import counters
from pipelines.build import BuildOptions, run_build
from pipelines.candidates import Candidate
from pipelines.captionfilter import FilterCaptions, long_enough
from pipelines.fetch import FetchOptions
from tests.counting import run_counted


def test_words_are_counted_as_the_matcher_sees_them():
    assert long_enough("Red-Circle!", 2) and not long_enough("Red-Circle!", 3)
    assert not long_enough("  ...  ", 1) and long_enough("", 0)


def test_the_stage_drops_and_counts_short_captions(tmp_path):
    cands = [Candidate(f"http://x/{i}", c, "f", i) for i, c in enumerate(["a red circle", "red", "a big blue one"])]
    p = beam.Pipeline("DirectRunner")
    kept = p | beam.Create([cands]) | FilterCaptions(3)
    assert_that(kept | beam.FlatMap(lambda batch: [c.row for c in batch]), equal_to([0, 2]))
    assert run_counted(p, tmp_path).stages["short_captions"] == 1


def test_the_job_counts_the_drops_between_read_and_match(tmp_path):
    (tmp_path / "q.txt").write_text("red\ncircle\n")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"url": f"http://127.0.0.1:9/{i}.jpg", "caption": c}) + "\n"
                                              for i, c in enumerate(["red", "a red circle", "red circle", "blue"])))
    stats = run_build(BuildOptions(candidates=(str(tmp_path / "c.jsonl"),), queries=str(tmp_path / "q.txt"),
                                   out=str(tmp_path / "out"), min_caption_words=2,
                                   fetch=FetchOptions(timeout=0.3, retries=0, allow_private_networks=True)),
                      ["--runner=DirectRunner"])
    s = stats.stages
    assert (s["candidates"], s["short_captions"], s["unmatched"], s["matched"]) == (4, 2, 0, 2)
    assert counters.unbalanced(s) == []
