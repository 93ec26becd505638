import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.candidates import Candidate, CandidateFileError, Reject, detect_format, read_path


def _split(items):
    items = list(items)
    return [i for i in items if isinstance(i, Candidate)], [i for i in items if isinstance(i, Reject)]


def test_reads_every_format_with_configurable_columns(tmp_path):
    rows = [{"URL": "http://a.example/1.jpg", "TEXT": "a red circle"}, {"URL": "https://b.example/2", "TEXT": "x"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "c.csv").write_text("URL,TEXT\n" + "".join(f'{r["URL"]},"{r["TEXT"]}"\n' for r in rows))
    (tmp_path / "c.tsv").write_text("URL\tTEXT\n" + "".join(f'{r["URL"]}\t{r["TEXT"]}\n' for r in rows))
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    for name in ("c.parquet", "c.jsonl", "c.csv", "c.tsv", "c.jsonl.gz"):
        good, bad = _split(read_path(str(tmp_path / name), url_col="URL", caption_col="TEXT"))
        assert [(c.url, c.caption, c.row) for c in good] == [
            ("http://a.example/1.jpg", "a red circle", 0), ("https://b.example/2", "x", 1)], name
        assert bad == []


def test_bad_rows_are_rejected_by_file_and_row_and_the_rest_is_kept(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join([
        json.dumps({"url": "http://ok.example/a.jpg", "caption": "fine"}),
        "{not json",
        json.dumps({"url": "ftp://x/y.jpg", "caption": "wrong scheme"}),
        json.dumps({"url": "http://ok.example/b.jpg", "caption": "   "}),
        json.dumps({"url": None, "caption": "no url"}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"url": "http://ok.example/c.jpg", "caption": "also fine"}),
    ]))
    good, bad = _split(read_path(str(path)))
    assert [c.row for c in good] == [0, 6]
    reasons = {r.row: r.reason for r in bad}
    assert reasons[1].startswith("invalid JSON")
    assert "not an http(s) url" in reasons[2]
    assert reasons[3] == "empty caption" and reasons[4] == "missing url"
    assert reasons[5] == "JSON line is not an object"
    assert str(bad[0]).startswith(f"{path}: row 1: ")


def test_csv_row_with_wrong_field_count_is_rejected(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("url,caption\nhttp://a.example/1.jpg,one\nhttp://a.example/2.jpg\nhttp://a.example/3.jpg,three\n")
    good, bad = _split(read_path(str(path)))
    assert [c.caption for c in good] == ["one", "three"]
    assert bad == [Reject(str(path), 1, "1 fields, header has 2")]


def test_unreadable_file_and_missing_column_name_the_file(tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(CandidateFileError, match="broken.parquet: not a readable Parquet file"):
        list(read_path(str(broken)))
    cols = tmp_path / "cols.csv"
    cols.write_text("link,text\nhttp://a/1.jpg,x\n")
    with pytest.raises(CandidateFileError, match=r"cols.csv: missing column\(s\) url, caption"):
        list(read_path(str(cols)))
    with pytest.raises(CandidateFileError, match="cannot tell the format"):
        detect_format("data.bin")


def test_the_read_stage_splits_candidates_from_rejects_and_counts_both(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from pipelines.candidates import ReadCandidates
    from tests.counting import run_counted

    (tmp_path / "a.jsonl").write_text('{"url": "http://x/1.jpg", "caption": "one"}\nnot json\n')
    (tmp_path / "b.csv").write_text("url,caption\nhttp://x/2.jpg,two\nftp://x/3.jpg,three\n")
    files = [(str(tmp_path / name), (tmp_path / name).stat().st_size) for name in ("b.csv", "a.jsonl")]
    p = beam.Pipeline("DirectRunner")
    good, bad = p | ReadCandidates(files, "auto", "url", "caption")
    assert_that(good | beam.FlatMap(lambda batch: [c.caption for c in batch]), equal_to(["one", "two"]),
                label="Good")
    assert_that(bad | beam.Map(lambda r: (r.source.rsplit("/", 1)[-1], r.row)), equal_to([("a.jsonl", 1),
                                                                                         ("b.csv", 1)]), label="Bad")
    counts = run_counted(p, tmp_path).stages
    assert (counts["candidates"], counts["rejected_rows"]) == (4, 2)


def _big_inputs(tmp_path, n=500):
    rows = [{"url": f"http://x.example/{i}.jpg", "caption": f"caption number {i} " + "word " * (i % 7)}
            for i in range(n)]
    lines = [json.dumps(r) for r in rows]
    lines[37], lines[212] = "{broken", ""  # a bad row and a blank line keep their numbers
    (tmp_path / "big.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "big.tsv").write_text("caption\turl\n" + "".join(
        f"{r['caption']}\t{r['url']}\n" if i != 99 else "only one field\n" for i, r in enumerate(rows)))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "big.parquet", row_group_size=64)
    return rows


@pytest.mark.parametrize("name", ["big.jsonl", "big.tsv", "big.parquet"])
def test_a_file_read_in_parts_gives_every_row_once_with_its_number(tmp_path, name):
    from pipelines.candidates import split_file

    _big_inputs(tmp_path)
    path = str(tmp_path / name)
    whole = list(read_path(path, split_bytes=1 << 30))
    parts = split_file(path, (tmp_path / name).stat().st_size, split_bytes=1000)
    assert len(parts) > 5  # row groups of 64 rows; 1,000-byte ranges
    assert list(read_path(path, split_bytes=1000)) == whole
    good, bad = _split(whole)
    assert len(good) + len(bad) == (499 if name == "big.jsonl" else 500)
    assert [c.row for c in good] == sorted(c.row for c in good)
    if name == "big.jsonl":
        assert [(r.row, r.reason[:12]) for r in bad] == [(37, "invalid JSON")] and 212 not in {c.row for c in good}
        assert good[-1].row == 499 and good[-1].url == "http://x.example/499.jpg"
    if name == "big.tsv":
        assert [(r.row, r.reason) for r in bad] == [(99, "1 fields, header has 2")]


def test_the_read_stage_reads_large_files_in_parts(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from pipelines.candidates import ReadCandidates

    rows = _big_inputs(tmp_path)
    files = [(str(tmp_path / n), (tmp_path / n).stat().st_size) for n in ("big.jsonl", "big.tsv", "big.parquet")]
    expected = [r["url"] for i, r in enumerate(rows) if i not in (37, 212)] + \
        [r["url"] for i, r in enumerate(rows) if i != 99] + [r["url"] for r in rows]
    with beam.Pipeline("DirectRunner") as p:
        good, bad = p | ReadCandidates(files, "auto", "url", "caption", split_bytes=1000)
        assert_that(good | beam.FlatMap(lambda batch: [c.url for c in batch]), equal_to(expected), label="Good")
        assert_that(bad | beam.Map(lambda r: (r.source.rsplit("/", 1)[-1], r.row)),
                    equal_to([("big.jsonl", 37), ("big.tsv", 99)]), label="Bad")


# One bad row costs only that row: each of these once ended the whole job.
@pytest.mark.parametrize("url, caption, reason", [
    ("http://[::1/a.jpg", "unbalanced IPv6 literal", "not an http(s) url"),
    ("http://[zzzz::1]/a.jpg", "invalid IPv6 literal", "not an http(s) url"),
    ("http://exa\uff03mple.com/a.jpg", "host changes under NFKC", "not an http(s) url"),
    ("http://ex\u2100ample.com/a.jpg", "host changes under NFKC", "not an http(s) url"),
    ("http://a.example/\ud800.jpg", "lone surrogate in the url", "url holds a lone surrogate"),
    ("http://a.example/a.jpg", "lone \udfff surrogate", "caption holds a lone surrogate"),
    ("http://a.example/" + "a" * 20_000, "very long url", "url of 20,017 characters"),
    ("http://a.example/a.jpg", "x" * 70_000, "caption of 70,000 characters"),
    (12345, "a number", "url is a int, not text"),
    ("http://a.example/a.jpg", ["a", "list"], "caption is a list, not text"),
])
def test_hostile_rows_are_rejected_one_by_one(tmp_path, url, caption, reason):
    path = tmp_path / "c.jsonl"
    ok = json.dumps({"url": "http://ok.example/a.jpg", "caption": "fine"})
    path.write_text("\n".join([ok, json.dumps({"url": url, "caption": caption}), ok]) + "\n")
    good, bad = _split(read_path(str(path)))
    assert [c.row for c in good] == [0, 2]
    assert len(bad) == 1 and bad[0].row == 1 and reason in bad[0].reason, bad


def test_deeply_nested_json_and_huge_csv_fields_cost_one_row(tmp_path):
    ok = json.dumps({"url": "http://ok.example/a.jpg", "caption": "fine"})
    deep = tmp_path / "deep.jsonl"
    deep.write_text("\n".join([ok, "[" * 200_000 + "]" * 200_000, '{"a":' * 100_000 + "1" + "}" * 100_000, ok]))
    good, bad = _split(read_path(str(deep)))
    assert [c.row for c in good] == [0, 3] and [r.row for r in bad] == [1, 2]
    assert {r.reason for r in bad} <= {"JSON nested too deeply to read", "JSON line is not an object"}
    big = tmp_path / "big.csv"
    big.write_text("url,caption\nhttp://a.example/1.jpg,one\n"
                   f'http://a.example/2.jpg,"{"y" * 300_000}"\nhttp://a.example/3.jpg,three\n')
    good, bad = _split(read_path(str(big)))
    assert [c.caption for c in good] == ["one", "three"] and "caption of 300,000 characters" in bad[0].reason


def test_a_byte_order_mark_is_read_past(tmp_path):
    rows = "url,caption\nhttp://a.example/1.jpg,one\n"
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbf" + rows.encode())
    (tmp_path / "excel.tsv").write_bytes(b"\xef\xbb\xbf" + rows.replace(",", "\t").encode())
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"url": "http://a.example/1.jpg",
                                                                       "caption": "one"}).encode() + b"\n")
    for name in ("excel.csv", "excel.tsv", "bom.jsonl"):
        good, bad = _split(read_path(str(tmp_path / name)))
        assert [(c.url, c.caption) for c in good] == [("http://a.example/1.jpg", "one")] and not bad, name


def test_tsv_reads_quotes_as_text_as_img2dataset_does(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text('url\tcaption\nhttp://a.example/1.jpg\t"unbalanced quote\n'
                    'http://a.example/2.jpg\ttwo\nhttp://a.example/3.jpg\t"quoted"\n')
    good, bad = _split(read_path(str(path)))
    assert [c.caption for c in good] == ['"unbalanced quote', "two", '"quoted"'] and not bad


def _lines(n):
    return "".join(json.dumps({"url": f"http://a.example/{i}.jpg", "caption": f"row {i}"}) + "\n" for i in range(n))


def test_a_truncated_compressed_file_keeps_its_rows_and_says_where_it_stopped(tmp_path):
    import bz2
    import lzma

    for suffix, compress in ((".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)):
        not_it = tmp_path / f"plain.jsonl{suffix}"
        not_it.write_text(_lines(3))
        assert f"not {suffix[1:]} data as its name says" in list(read_path(str(not_it)))[0].reason
        path = tmp_path / f"c.jsonl{suffix}"
        data = compress(_lines(60_000).encode())  # bz2 blocks hold 900 kB: several are needed
        path.write_bytes(data[: len(data) // 2])
        good, bad = _split(read_path(str(path)))
        assert 0 < len(good) < 60_000 and [c.row for c in good] == list(range(len(good))), suffix
        assert len(bad) == 1 and bad[0].damaged and bad[0].row == len(good), suffix
        assert "ends early (truncated file)" in bad[0].reason
        assert str(bad[0]).startswith(f"{path}: damaged at row {len(good)}: ")
        with pytest.raises(CandidateFileError, match=rf"c.jsonl{suffix}: damaged at row {len(good)}"):
            list(read_path(str(path), strict=True))


def test_a_file_that_is_not_what_its_name_says_is_named(tmp_path):
    path = tmp_path / "c.csv.gz"
    path.write_text("url,caption\nhttp://a.example/1.jpg,one\n")  # plain text under a .gz name
    good, bad = _split(read_path(str(path)))
    assert good == [] and len(bad) == 1 and bad[0].damaged and bad[0].row == 0
    assert "not gz data as its name says" in bad[0].reason and str(path) in str(bad[0])
    corrupt = tmp_path / "d.jsonl.gz"
    data = bytearray(gzip.compress(_lines(5_000).encode()))
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    corrupt.write_bytes(bytes(data))
    good, bad = _split(read_path(str(corrupt)))  # deflate may decode garbage first: gzip's CRC catches it
    assert [r.damaged for r in bad].count(True) == 1 and bad[-1].damaged and len(good) < 5_000
    assert "corrupt compressed data" in bad[-1].reason


def test_parquet_columns_that_cannot_be_the_url_are_named(tmp_path):
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"url": [1, 2], "caption": ["a", "b"]}), ints)
    good, bad = _split(read_path(str(ints)))
    assert good == [] and bad[0].damaged and "column 'url' holds int64, not text" in bad[0].reason
    twice = tmp_path / "twice.parquet"
    table = pa.Table.from_arrays([pa.array(["http://a.example/1.jpg"]), pa.array(["x"]), pa.array(["http://b/"])],
                                 names=["url", "caption", "url"])
    pq.write_table(table, twice)
    good, bad = _split(read_path(str(twice)))
    assert good == [] and bad[0].damaged and "2 columns are named 'url'" in bad[0].reason


def test_additional_columns_are_read_in_every_format(tmp_path):
    rows = [{"url": "http://a.example/1.jpg", "caption": "one", "SAMPLE_ID": 7, "LICENSE": "cc-by"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    (tmp_path / "c.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (tmp_path / "c.csv").write_text("url,caption,SAMPLE_ID,LICENSE\nhttp://a.example/1.jpg,one,7,cc-by\n")
    (tmp_path / "c.tsv").write_text("url\tcaption\tSAMPLE_ID\tLICENSE\nhttp://a.example/1.jpg\tone\t7\tcc-by\n")
    for name, expected in (("c.parquet", (7, "cc-by")), ("c.jsonl", (7, "cc-by")), ("c.csv", ("7", "cc-by")),
                           ("c.tsv", ("7", "cc-by"))):
        good, bad = _split(read_path(str(tmp_path / name), additional=("SAMPLE_ID", "LICENSE")))
        assert [c.additional for c in good] == [expected] and not bad, name
    with pytest.raises(CandidateFileError, match=r"missing column\(s\) NSFW"):
        list(read_path(str(tmp_path / "c.parquet"), additional=("NSFW",)))
