from pathlib import Path

import pytest

from queries.assemble import Thresholds, assemble
from queries.build import read_counts
from queries.ngrams import count, pmi

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "enwiki-2012-unigram-counts.tsv"


def test_ngram_counts_and_pmi_ordering():
    unigrams, bigrams = count(["new york new york ice cream", "the cat the dog\nthe end"])
    assert unigrams["new"] == 2 and bigrams["new york"] == 2 and "dog the" not in bigrams
    tw, tp = sum(unigrams.values()), sum(bigrams.values())
    strong = pmi(bigrams["ice cream"], unigrams["ice"], unigrams["cream"], tw, tp)
    weak = pmi(bigrams["the cat"], unigrams["the"], unigrams["cat"], tw, tp)
    assert strong > weak


def _inputs():
    unigrams = {"the": 5000, "city": 900, "new": 800, "york": 300, "ice": 400, "cream": 350, "rare": 99,
                "zebra": 150, "hot": 500, "dog": 450}
    bigrams = {"new york": 290, "ice cream": 300, "the city": 400, "hot dog": 120, "rare pair": 5}
    titles = {"New York": 1100, "Zebra": 2000, "Obscure": 10, "Ice cream": 1500, "Star Wars": 5000}
    wordnet = ["entity", "ice cream", "zebra", "New York", "swim"]
    return unigrams, bigrams, titles, wordnet


def test_thresholds_and_dedup_across_sources():
    u, b, t, w = _inputs()
    res = assemble(u, b, t, w, Thresholds(target=1000, min_word_count=100, min_bigram_count=100, min_pmi=3.0,
                                          min_views=1000), total_words=10_000, total_pairs=10_000)
    by_query = {e.query: e for e in res.entries}
    assert "rare" not in by_query and "Obscure" not in by_query and "rare pair" not in by_query
    assert by_query["new york"].source == "bigram" and "New York" not in by_query  # title and lemma are dups
    assert by_query["zebra"].source == "word" and "Zebra" not in by_query
    assert by_query["Star Wars"].source == "title" and by_query["swim"].source == "wordnet"
    assert "the city" not in by_query  # frequent words, low PMI
    pmis = [e.pmi for e in res.entries if e.source == "bigram"]
    assert pmis == sorted(pmis, reverse=True)
    assert res.report["sources"]["wordnet"]["already_present"] == 3


def test_exact_target_cuts_the_lowest_ranked_bigrams_and_titles_first():
    u, b, t, w = _inputs()
    th = Thresholds(target=12, min_word_count=100, min_bigram_count=100, min_pmi=3.0, min_views=1000, numbers=0)
    res = assemble(u, b, t, w, th, total_words=10_000, total_pairs=10_000)
    assert len(res.entries) == 12
    sources = [e.source for e in res.entries]
    assert sources[:9] == ["word"] * 9 and sources[9:11] == ["wordnet"] * 2  # words, then WordNet
    assert res.entries[-1].query == "Star Wars"  # best title and best bigram compete for the last slot
    assert res.report["short_by"] == 0
    again = assemble(u, b, t, w, th, total_words=10_000, total_pairs=10_000)
    assert [e.query for e in again.entries] == [e.query for e in res.entries]


def test_numbers_follow_the_words_and_own_their_form():
    u, b, t, w = _inputs()
    th = Thresholds(target=13, min_word_count=100, min_bigram_count=100, min_pmi=3.0, min_views=1000, numbers=3)
    res = assemble(u, b, dict(t, **{"2": 9000}), w, th, total_words=10_000, total_pairs=10_000)
    assert [e.source for e in res.entries][8:13] == ["word", "number", "number", "number", "wordnet"]
    assert [e.query for e in res.entries if e.source == "number"] == ["0", "1", "2"]
    assert [e.source for e in res.entries if e.query == "2"] == ["number"]  # the title "2" is the same query
    assert res.report["thresholds"]["numbers"] == 3


def test_count_files_are_read_as_captions_are(tmp_path):
    f = tmp_path / "u.tsv"
    f.write_text("The\t10\nthe\t5\nu.s\t7\nlt br gt\t3\n42\t9\nNaïve\t2\n")
    read = read_counts([str(f)], "unigram", 1)
    assert read.counts == {"the": 15, "naïve": 2}
    assert read.dropped == {"not 1 word": 3}  # "u s" and "lt br gt" are not one word; "42" is none
    g = tmp_path / "b.tsv"
    g.write_text("New York\t10\nnew-york\t4\nnew york city\t3\nyork\t1\n")
    read = read_counts([str(g)], "bigram", 2)
    assert read.counts == {"new york": 14} and read.dropped == {"not 2 words": 2}


@pytest.mark.skipif(not SHARED.exists(), reason="shared Wikipedia unigram counts not present")
def test_real_wikipedia_unigram_counts():
    read = read_counts([str(SHARED)], "unigram", 1)
    unigrams = read.counts
    assert len(unigrams) > 100_000 and unigrams["the"] > 10**8
    res = assemble(unigrams, {}, {}, [], Thresholds(target=50_000, min_word_count=100))
    assert len(res.entries) == 50_000
    counts = [e.count for e in res.entries]
    assert counts == sorted(counts, reverse=True) and min(counts) >= 100
    assert res.report["sources"]["word"]["cut"] == res.report["sources"]["word"]["candidates"] - 50_000
