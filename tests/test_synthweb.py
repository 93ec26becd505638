from collections import Counter

import urllib3

from wit.synthweb import FAULTS, SyntheticWeb
from wit.synthweb.vocab import query_list


def test_rows_are_deterministic_and_have_every_fault():
    a, b = SyntheticWeb(seed=4, count=1500), SyntheticWeb(seed=4, count=1500)
    rows = a.rows("http://h")
    assert rows == b.rows("http://h")
    assert rows != SyntheticWeb(seed=5, count=1500).rows("http://h")
    faults = Counter(r.fault for r in rows)
    assert set(FAULTS) <= set(faults)


def test_concepts_are_zipf_distributed():
    web = SyntheticWeb(seed=0, count=0)
    counts = Counter(web.concept(i) for i in range(4000)).most_common()
    assert counts[0][1] > 8 * counts[len(counts) // 2][1]


def test_queries_cover_colours_shapes_and_phrases():
    q = query_list()
    assert "red" in q and "circle" in q and "red circle" in q and "giraffe" in q
    assert len(q) == len(set(q))


def test_server_serves_stable_bytes(web_server):
    web, server = web_server
    url = f"{server.base_url}/img/7.jpg"
    first, second = urllib3.request("GET", url, timeout=5), urllib3.request("GET", url, timeout=5)
    assert first.status == 200 and first.data == second.data == web.image_bytes(7)
    mirror = urllib3.request("GET", f"{server.base_url}/mirror/7/99.jpg", timeout=5)
    assert mirror.data == first.data
    variant = urllib3.request("GET", f"{server.base_url}/variant/7/99.jpg", timeout=5)
    assert variant.status == 200 and variant.data != first.data
