from pipelines.match import QueryMatcher, read_queries


def test_whole_word_and_phrase_matches_only():
    m = QueryMatcher(["circle", "red circle", "red", "cat", "new york"])
    assert m.match("A Red-Circle!") == (0, 1, 2)
    assert m.match("circles and concatenation") == ()
    assert m.match("I love New  York") == (4,)
    assert m.match("cat cat") == (3,)
    assert m.match("") == ()


def test_overlapping_queries_all_reported_and_duplicate_queries_share_matches():
    m = QueryMatcher(["a b", "b c", "A B", "", "c"])
    assert m.match("a b c") == (0, 1, 2, 4)


def test_empty_query_list_matches_nothing():
    assert QueryMatcher([]).match("anything") == ()


def test_read_queries_takes_first_tsv_field_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("red\tunigram\t100\n\nblue circle\tbigram\t5\n")
    assert read_queries(str(path)) == ["red", "", "blue circle"]
