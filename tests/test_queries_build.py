"""`wit queries build` end to end: Beam counting on a real-format dump, pageviews and WordNet."""

import json

import pytest

from queries.assemble import Thresholds
from queries.build import QueryBuildOptions, QueryInputs, build, write
from queries.errors import QueryInputError
from tests.queries_fixtures import standard_dump, write_pageviews, write_wordnet
from wit.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("qin")
    dump = standard_dump(d / "enwiki-20240101-pages-articles1.xml.bz2")
    views = write_pageviews(d)
    wn = write_wordnet(d / "wordnet")
    return d, dump, views, wn


def _run(inputs, out, target):
    d, dump, _views, wn = inputs
    code = main(["queries", "build", "--out", str(out), "--wikipedia", str(dump),
                 "--pageviews", str(d / "pageviews-*"), "--wordnet", str(wn), "--target", str(target),
                 "--min-word-count", "60", "--min-bigram-count", "60", "--min-pmi", "1.0", "--min-views", "1000",
                 "--numbers", "0"])
    assert code == 0
    return (out / "queries.txt").read_text().splitlines(), json.loads((out / "composition.json").read_text())


def test_build_from_dump_pageviews_and_wordnet(inputs, tmp_path):
    queries, report = _run(inputs, tmp_path / "a", target=1000)
    lines = (tmp_path / "a" / "queries.tsv").read_text().splitlines()
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in lines}
    assert list(rows) == queries
    # words: 30 copies of the article, threshold 60 ("zebra" occurs 30 times, "new" 120)
    assert rows["new"] == ["word", "120", ""] and rows["city"][:2] == ["word", "90"]
    # bigrams: PMI above 1 bit and count >= 60, highest PMI first
    assert rows["ice cream"][0] == "bigram" and rows["new york"][0] == "bigram"
    pmis = [float(r[2]) for r in rows.values() if r[0] == "bigram"]
    assert pmis == sorted(pmis, reverse=True)
    # titles: views summed over both files and both English domains; namespaces, other wikis, low views out
    assert rows["Hot dog"] == ["title", "1200", ""]
    for absent in ("Ice cream", "Star Wars: Episode IV", "Category:Cities", "Talk:New York", "Obscure page"):
        assert absent not in rows
    assert "New York" not in rows  # 1,100 views, but already present as the bigram "new york"
    # WordNet adds only what is missing: zebra (30 < 60), entity, swim, able, quickly
    assert [q for q, r in rows.items() if r[0] == "wordnet"] == ["entity", "zebra", "swim", "able", "quickly"]
    assert report["sources"]["wordnet"]["already_present"] == 3  # ice cream, city, New York
    assert report["entries"] == len(queries) == 19 and report["short_by"] == 981
    # the count job drops rare words itself: the assembler never sees "zebra" (30 < 60)
    counted = "".join(p.read_text() for p in (tmp_path / "a" / "counts").glob("unigrams-*.tsv"))
    assert "zebra\t" not in counted and "new\t120\n" in counted


def test_exact_target_and_byte_identical_reruns(inputs, tmp_path):
    first, report = _run(inputs, tmp_path / "a", target=15)
    assert len(first) == 15 and report["short_by"] == 0
    _run(inputs, tmp_path / "b", target=15)
    for name in ("queries.txt", "queries.tsv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_offline_default_uses_wordfreq(tmp_path, capsys):
    result = build(QueryBuildOptions(str(tmp_path), QueryInputs(wordnet=None), Thresholds(target=2000)))
    assert len(result.entries) == 2000 and result.entries[0].query == "the"
    assert any("wordfreq" in n for n in result.report["notes"])
    write(result, str(tmp_path))
    assert (tmp_path / "queries.txt").read_text().splitlines()[:3] == ["the", "to", "and"]


def test_offline_default_in_full(tmp_path):
    """wordfreq's words without its placeholders, the numbers 0-99 and WordNet 3.0 as shipped."""
    result = build(QueryBuildOptions(str(tmp_path)))
    r = result.report
    entries = {e.query: e.source for e in result.entries}
    assert 190_000 < r["entries"] == len(entries) < 215_000
    assert r["sources"]["number"]["kept"] == 100 and entries["0"] == entries["99"] == "number"
    assert r["sources"]["wordnet"]["kept"] > 40_000 and entries["physical entity"] == "wordnet"
    for placeholder in ("00th", "0000s", "00pm", "a00", "ツ", "ಠ", "it s"):
        assert placeholder not in entries
    assert entries["ps4"] == entries["café"] == entries["α"] == "word"
    dropped = r["dropped_from_counts"]["unigram"]
    assert dropped["digit placeholder"] > 800 and dropped["not Latin or Greek letters"] > 100
    assert "WordNet 3.0 head lemmas shipped" in r["inputs"]["wordnet"]


def test_bad_inputs_name_the_file(inputs, tmp_path):
    d, dump, _views, _wn = inputs
    cut = tmp_path / "cut.xml.bz2"
    data = dump.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="cut.xml.bz2: truncated or corrupt"):
        build(QueryBuildOptions(str(tmp_path), QueryInputs(wikipedia=(str(cut),)), Thresholds(target=10)))
    with pytest.raises(QueryInputError, match="data.noun: missing WordNet data file"):
        wordnet = str(write_wordnet(tmp_path / "wn", skip="data.noun"))
        build(QueryBuildOptions(str(tmp_path), QueryInputs(wordnet=wordnet), Thresholds(target=10)))
    bad = tmp_path / "u.tsv"
    bad.write_text("the\t10\nbroken line\n")
    with pytest.raises(QueryInputError, match="u.tsv: line 2: expected"):
        build(QueryBuildOptions(str(tmp_path), QueryInputs(unigrams=(str(bad),)), Thresholds(target=10)))


def test_wit_build_takes_the_produced_files(inputs, tmp_path):
    from pipelines.build import BuildOptions, run_build
    from pipelines.fetch import FetchOptions

    _run(inputs, tmp_path / "q", target=50)
    cands = tmp_path / "c.jsonl"
    cands.write_text('{"url": "http://127.0.0.1:9/a.jpg", "caption": "Ice cream in New York"}\n'
                     '{"url": "http://127.0.0.1:9/b.jpg", "caption": "nothing known here qqq"}\n')
    for name in ("queries.txt", "queries.tsv"):
        stats = run_build(BuildOptions(candidates=(str(cands),), queries=str(tmp_path / "q" / name),
                                       out=str(tmp_path / f"out-{name}"),
                                       fetch=FetchOptions(timeout=0.3, retries=0, allow_private_networks=True)),
                          ["--runner=DirectRunner"])
        assert stats.stages["selected"] == 1 and stats.stages["failed_to_download"] == 1
        head = dict(stats.per_query_before_balancing["head"])
        assert head["new york"] == 1 and head["ice cream"] == 1


def test_counting_shows_its_progress_on_a_terminal(inputs, tmp_path, capsys):
    from queries.count import run_count

    d, dump, _views, _wn = inputs
    run_count(str(tmp_path / "w"), [str(dump)], [str(d / "pageviews-*")], 60, 60, 1000, ["--runner=DirectRunner"],
              show_progress=True)
    err = capsys.readouterr().err
    total = dump.stat().st_size + sum(p.stat().st_size for p in d.glob("pageviews-*"))
    assert "counting: 100%" in err and f"{total / 1024:.2f}k/{total / 1024:.2f}k" in err.replace("kB", "k")
    run_count(str(tmp_path / "v"), [str(dump)], [], 60, 60, 1000, ["--runner=DirectRunner"], show_progress=False)
    assert "counting" not in capsys.readouterr().err
