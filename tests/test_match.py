import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipelines.match import QueryMatcher
from pipelines.querylist import control_characters, read_queries
from wit.core.text import match_form


def reference(queries: list[str], caption: str) -> tuple[int, ...]:
    """Every word n-gram of the caption looked up, in reading order: by the word a match ends at,
    longer first, ids ascending within a form, each id once. Independent of the automaton."""
    forms: dict[str, list[int]] = {}
    for qid, q in enumerate(queries):
        if match_form(q):
            forms.setdefault(match_form(q), []).append(qid)
    words = match_form(caption).split()
    out: list[int] = []
    for end in range(len(words)):
        for n in range(end + 1, 0, -1):
            for qid in forms.get(" ".join(words[end - n + 1:end + 1]), []):
                if qid not in out:
                    out.append(qid)
    return tuple(out)


def test_whole_word_and_phrase_matches_only_in_reading_order():
    m = QueryMatcher(["circle", "red circle", "red", "cat", "new york"])
    assert m.match("A Red-Circle!") == (2, 1, 0)
    assert m.match("circles and concatenation") == ()
    assert m.match("I love New  York") == (4,)
    assert m.match("cat cat") == (3,)
    assert m.match("") == ()


def test_overlapping_queries_all_reported_and_duplicate_queries_share_matches():
    m = QueryMatcher(["a b", "b c", "A B", "", "c"])
    assert m.match("a b c") == (0, 2, 1, 4)


def test_failure_links_find_matches_inside_a_longer_partial_match():
    queries = ["a b c d", "b c", "c d e", "d"]
    m = QueryMatcher(queries)
    for caption in ["a b c d e", "a b c x", "a b c d", "b c d e f", "a a b c d"]:
        assert m.match(caption) == reference(queries, caption), caption


def test_long_words_unicode_and_punctuation():
    queries = ["elephantine", "Café", "straße", "ΣΟΦΙΑ", "rock_n_roll", "x", "supercalifragilistic words"]
    m = QueryMatcher(queries)
    assert m.match("Elephantine!") == (0,)
    assert m.match("elephantinx elephantines") == ()  # same length and one longer: the bytes decide
    assert m.match("CAFÉ au lait, STRASSE") == (1, 2)
    assert m.match("σοφια") == (3,)
    assert m.match("Rock-n-Roll x") == (4, 5)
    assert m.match("SUPERCALIFRAGILISTIC  words.") == (6,)


def test_empty_query_list_matches_nothing():
    assert QueryMatcher([]).match("anything") == ()
    assert list(QueryMatcher([""]).match_many(["a", ""])) == [(), ()]


def test_batch_equals_caption_by_caption_and_grows_past_its_first_guess():
    # 300 queries with one form: a one-word caption yields more ids than the kernel's first buffer.
    queries = ["same"] * 300 + ["other"]
    m = QueryMatcher(queries)
    batch = ["same", "nothing", "Other same", ""]
    got = m.match_many(batch)
    assert len(got) == 4
    assert got[0] == tuple(range(300))
    assert got[2] == (300, *range(300))
    assert list(got) == [m.match(c) for c in batch]


@pytest.mark.parametrize("seed", range(3))
def test_random_queries_and_captions_agree_with_the_reference(seed):
    rng = random.Random(seed)
    vocab = ["a", "b", "the", "red", "circle", "new", "york", "café", "naïve", "extraordinarily", "x1", "Ω"]
    queries = [" ".join(rng.choices(vocab, k=rng.randint(1, 4))) for _ in range(150)] + ["", "RED Circle"]
    seps = [" ", "  ", "-", ", ", "!", "_", "\t", "'"]
    captions = []
    for _ in range(400):
        words = [w.upper() if rng.random() < 0.2 else w for w in rng.choices(vocab + ["zzz"], k=rng.randint(0, 12))]
        captions.append("".join(w + rng.choice(seps) for w in words))
    m = QueryMatcher(queries)
    assert list(m.match_many(captions)) == [reference(queries, c) for c in captions]


def _random_case(seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocab = ["a", "the", "red", "circle", "new", "york", "café", "Ω"]
    queries = [" ".join(rng.choices(vocab, k=rng.randint(1, 3))) for _ in range(60)]
    captions = [" ".join(rng.choices(vocab, k=rng.randint(0, 10))) for _ in range(300)]
    return queries, captions


def test_repeated_words_give_each_id_once_across_batches_and_stamp_resets():
    """The walk stamps nodes per caption: a word seen twice in one caption gives its ids once, the same
    caption in the next batch gives them again, and when the stamps run out they start over."""
    queries, captions = _random_case(7)
    m = QueryMatcher(queries)
    expected = [reference(queries, c) for c in captions]
    assert list(m.match_many(captions)) == expected
    assert list(m.match_many(captions)) == expected
    m._stamp = 2**31 - 100  # as if two billion captions had been matched
    assert list(m.match_many(captions)) == expected
    assert m._stamp < 2**20


def test_threads_sharing_one_matcher_agree_with_the_reference():
    """Beam runs several threads on one cached matcher; the stamps they write must not mix."""
    queries, captions = _random_case(8)
    m = QueryMatcher(queries)
    batches = [captions[i:i + 7] for i in range(0, len(captions), 7)] * 4
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda b: list(m.match_many(b)), batches))
    assert got == [[reference(queries, c) for c in b] for b in batches]


def test_read_queries_takes_first_tsv_field_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("red\tunigram\t100\n\nblue circle\tbigram\t5\n")
    assert read_queries(str(path)) == ["red", "", "blue circle"]


@pytest.mark.parametrize("breaker", ["\u2028", "\u2029", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\x0b"])
def test_only_newlines_end_a_query(tmp_path, breaker):
    """Characters str.splitlines breaks at stay inside their query, so later ids do not shift."""
    path = tmp_path / "q.txt"
    path.write_bytes(f"red\nblue{breaker}sky\r\ngreen\n\nyellow\nend".encode())
    queries = read_queries(str(path))
    assert queries == ["red", f"blue{breaker}sky", "green", "", "yellow", "end"]
    assert control_characters(queries, str(path)).startswith(f"{path}: line 2: the query holds control character "
                                                             f"U+{ord(breaker):04X}")


def test_a_byte_order_mark_is_not_part_of_the_first_query(tmp_path):
    path = tmp_path / "q.txt"
    path.write_bytes("\ufeffred\nblue\n".encode())
    assert read_queries(str(path)) == ["red", "blue"]
    assert control_characters(["red", "blue"], "q") is None


def test_the_match_stage_keeps_matching_candidates_as_pairs_and_counts(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from pipelines.candidates import Candidate
    from tests.counting import run_counted
    from pipelines.match import MatchQueries
    from pipelines.records import Pair, pack_ids

    (tmp_path / "q.txt").write_text("red\nred circle\nblue\n")
    captions = ["A red circle", "green", "blue sky", "nothing"]
    p = beam.Pipeline("DirectRunner")
    pairs = (p | beam.Create([[Candidate(f"http://x/{i}", c, "f", i) for i, c in enumerate(captions)]])
             | MatchQueries(str(tmp_path / "q.txt"), files=["e", "f"]))
    # each pair names its input file (by index in the build's sorted list) and row
    assert_that(pairs, equal_to([Pair("A red circle", "http://x/0", pack_ids((0, 1)), 1, 0),
                                 Pair("blue sky", "http://x/2", pack_ids((2,)), 1, 2)]))
    counts = run_counted(p, tmp_path).stages
    assert (counts["matched"], counts["unmatched"]) == (2, 2)


def test_a_worker_sees_a_changed_query_file_at_the_same_path(tmp_path):
    from pipelines.match import matcher_for

    path = tmp_path / "q.txt"
    path.write_text("red\n")
    assert matcher_for(str(path)).match("a red circle") == (0,)
    path.write_text("blue\nred circle\n")  # the next job, same path, other queries
    assert matcher_for(str(path)).match("a red circle") == (1,)
