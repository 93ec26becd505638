import bz2

import pytest

from queries.errors import QueryInputError
from queries.wikipedia import read_dump
from tests.queries_fixtures import page, standard_dump, write_dump


def test_articles_only_as_plain_text(tmp_path):
    pages = list(read_dump(str(standard_dump(tmp_path / "enwiki-pages-articles.xml.bz2", copies=2))))
    assert [p.title for p in pages] == ["Article 0", "Article 1"]
    text = pages[0].text
    assert "New York is a city" in text and "ice cream in New York" in text
    assert "Infobox" not in text and "[[" not in text and "A source" not in text


def test_plain_xml_dump(tmp_path):
    path = write_dump(tmp_path / "dump.xml", [page("A", "Hello ''world''")], compress=False)
    assert [p.text for p in read_dump(str(path))] == ["Hello world"]


def test_truncated_bz2_names_the_file(tmp_path):
    good = standard_dump(tmp_path / "full.xml.bz2", copies=5).read_bytes()
    cut = tmp_path / "cut.xml.bz2"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(QueryInputError, match="cut.xml.bz2: truncated or corrupt"):
        list(read_dump(str(cut)))


def test_malformed_page_names_the_file_and_the_last_good_page(tmp_path):
    broken = page("Good", "fine") + "  <page><title>Bad</title><ns>0</ns><revision><text>x</revision></page>\n"
    path = tmp_path / "broken.xml.bz2"
    path.write_bytes(bz2.compress(write_dump(tmp_path / "x.xml", [broken], compress=False).read_bytes()))
    with pytest.raises(QueryInputError, match=r"broken.xml.bz2: malformed XML at line \d+.*after page 'Good'"):
        list(read_dump(str(path)))
