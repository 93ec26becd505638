from pipelines.runstats import distribution


def test_distribution_summarises_pairs_per_query():
    queries = ["a", "b", "c", "d"]
    d = distribution({0: 5, 1: 1, 2: 40, 3: 40}, queries, cap=40)
    assert d["queries"] == 4 and d["pairs"] == 86 and d["max"] == 40 and d["at_cap"] == 2
    assert d["head"][:2] == [["c", 40], ["d", 40]] and d["tail"][-1] == ["b", 1]
    assert d["histogram"] == {"1": 1, "4-7": 1, "32-63": 2}
    assert distribution({}, queries, None) == {"queries": 0, "pairs": 0}
