from pipelines.records import Pair, pack_ids
from pipelines.urldedup import choose_pair, normalize_url, uid_for


def test_normalize_url():
    assert normalize_url("HTTP://Example.COM:80/a/b.jpg#frag") == "http://example.com/a/b.jpg"
    assert normalize_url("https://example.com:443") == "https://example.com/"
    assert normalize_url("http://example.com:8080/x?b=2&a=1") == "http://example.com:8080/x?a=1&b=2"
    assert normalize_url("http://u:p@Example.com/x") == "http://u:p@example.com/x"
    assert uid_for(normalize_url("http://EXAMPLE.com/x")) == uid_for(normalize_url("http://example.com/x#y"))


def test_urls_taken_as_canonical_are_what_the_parse_makes_of_them():
    from itertools import product

    from pipelines.urldedup import _normalized_by_parts

    schemes = ("http", "https", "HTTP")
    hosts = ("example.com", "a-b.example.org", "127.0.0.2", "x")
    ports = ("", ":80", ":443", ":8080", ":0", ":080", ":65535", ":65536", ":99999", ":1")
    paths = ("", "/", "/a/b.jpg", "/a%20b", "/x?b=2&a=1", "/x#f", "/x?")
    for parts in product(schemes, hosts, ports, paths):
        url = "{}://{}{}{}".format(*parts)
        assert normalize_url(url) == _normalized_by_parts(url), url


def test_choose_pair_prefers_most_matches_then_smallest_caption():
    kept, repeats, others = choose_pair([
        Pair("b caption", "http://x/1", pack_ids((1,))),
        Pair("b caption", "http://x/1", pack_ids((1,))),
        Pair("a caption", "http://x/1", pack_ids((1,))),
        Pair("z caption", "http://x/1", pack_ids((1, 2))),
    ])
    assert kept.caption == "z caption" and repeats == 1 and others == 2


def test_the_combine_equals_choose_pair_however_the_pairs_are_split():
    import random

    from pipelines.urldedup import OnePerUrl

    rng = random.Random(3)
    fn = OnePerUrl()
    for _ in range(200):
        captions = [rng.randrange(4) for _ in range(rng.randrange(1, 9))]
        pairs = [Pair(f"caption {c}", "http://x/1", pack_ids(range(1 + c % 3))) for c in captions]  # as matched
        parts = [[]]
        for p in pairs:  # the pairs cut into bundles at random, some empty
            if rng.random() < 0.4:
                parts.append([])
            parts[-1].append(tuple(p))
        accs = []
        for part in parts:
            acc = fn.create_accumulator()
            for p in part:
                acc = fn.add_input(acc, p)
            accs.append(acc)
        best, n, captions = fn.extract_output(fn.merge_accumulators(accs))
        kept, repeats, others = choose_pair(pairs)
        assert (Pair(*best), n, n - captions, captions - 1) == (kept, len(pairs), repeats, others)
