import pytest

from queries.errors import QueryInputError
from queries.wordnet import read
from tests.queries_fixtures import write_wordnet


def test_head_lemmas_from_the_database(tmp_path):
    assert read(str(write_wordnet(tmp_path / "wn"))) == [
        "entity", "ice cream", "zebra", "city", "New York", "swim", "able", "quickly"]


def test_missing_data_file_is_named(tmp_path):
    with pytest.raises(QueryInputError, match="data.verb: missing WordNet data file"):
        read(str(write_wordnet(tmp_path / "wn", skip="data.verb")))
    with pytest.raises(QueryInputError, match="no WordNet database directory"):
        read(str(tmp_path / "nowhere"))


def test_wn_lmf(tmp_path):
    path = tmp_path / "wn.xml"
    path.write_text("""<?xml version="1.0" encoding="UTF-8"?>
<LexicalResource xmlns:dc="https://globalwordnet.github.io/schemas/dc/">
  <Lexicon id="oewn" label="Open English WordNet" language="en" email="x@y" license="CC" version="2024">
    <LexicalEntry id="oewn-ice_cream-n"><Lemma writtenForm="ice cream" partOfSpeech="n"/>
      <Sense id="s1" synset="oewn-07609840-n"/></LexicalEntry>
    <LexicalEntry id="oewn-icecream-n"><Lemma writtenForm="icecream" partOfSpeech="n"/>
      <Sense id="s2" synset="oewn-07609840-n"/></LexicalEntry>
    <LexicalEntry id="oewn-zebra-n"><Lemma writtenForm="zebra" partOfSpeech="n"/>
      <Sense id="s3" synset="oewn-02391049-n"/></LexicalEntry>
    <Synset id="oewn-07609840-n" partOfSpeech="n" members="oewn-ice_cream-n oewn-icecream-n"/>
    <Synset id="oewn-02391049-n" partOfSpeech="n"/>
  </Lexicon>
</LexicalResource>
""")
    assert read(str(path)) == ["ice cream", "zebra"]


def test_shipped_head_lemmas_round_trip(tmp_path):
    from queries.wordnet import shipped, write_heads

    heads = shipped()
    assert len(heads) == len(set(heads)) == 87_379  # WordNet 3.0's distinct synset heads
    assert heads[:2] == ["entity", "physical entity"] and "ice cream" in heads
    write_heads(heads, str(tmp_path / "h.txt.gz"))
    from importlib import resources
    shipped_bytes = resources.files("queries").joinpath("data", "wordnet-3.0-heads.txt.gz").read_bytes()
    assert (tmp_path / "h.txt.gz").read_bytes() == shipped_bytes  # the file is reproducible
