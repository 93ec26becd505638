from queries.pageviews import article_title, parse_lines


def test_namespaces_are_not_articles_but_colons_in_titles_are_fine():
    assert article_title("Category:Cities") is None
    assert article_title("Talk:New_York") is None
    assert article_title("Star_Wars:_Episode_IV") == "Star Wars: Episode IV"
    assert article_title("Hot%20dog") == "Hot dog"


def test_only_english_domains_and_wellformed_lines_count():
    lines = ["en New_York 600 0", "de New_York 9 0", "en.m Ice_cream 5 0", "junk", "en X notanumber 0"]
    assert list(parse_lines(lines)) == [("New York", 600), ("Ice cream", 5)]
