"""robots.txt read as RFC 9309 says: its own examples, wildcards, longest match, tolerance of bad lines."""

import pytest

from wit.net.robots import parse

# RFC 9309, section 5.1 ("Simple Example")
RFC_EXAMPLE = """\
User-Agent: *
Disallow: *.gif$
Disallow: /example/
Allow: /publications/

User-Agent: foobot
Disallow:/
Allow:/example/page.html
Allow:/example/allowed.gif

User-Agent: barbot
User-Agent: bazbot
Disallow: /example/page.html

User-Agent: quxbot

EOF
"""


@pytest.mark.parametrize("agent, path, allowed", [
    # any other crawler: the * group
    ("wit", "/example/page.html", False),
    ("wit", "/publications/paper.html", True),
    ("wit", "/images/logo.gif", False),  # "*.gif$"
    ("wit", "/images/logo.gif?size=2", True),  # "$" anchors the end
    ("wit", "/index.html", True),
    # foobot: longest match wins, whatever the order of the lines
    ("foobot", "/example/page.html", True),
    ("foobot", "/example/allowed.gif", True),
    ("foobot", "/example/other.html", False),
    ("foobot", "/", False),
    # barbot and bazbot share one group
    ("barbot", "/example/page.html", False),
    ("bazbot", "/example/page.html", False),
    ("bazbot", "/example/other.html", True),
    # quxbot: an empty group allows everything
    ("quxbot", "/example/page.html", True),
])
def test_rfc_9309_example(agent, path, allowed):
    assert parse(RFC_EXAMPLE).can_fetch(f"https://example.com{path}", agent) is allowed


@pytest.mark.parametrize("rules, path, allowed", [
    # section 2.2.2: the most specific (longest) match wins; on a tie, allow
    ("Allow: /example/page/\nDisallow: /example/page/disallowed.gif", "/example/page/disallowed.gif", False),
    ("Allow: /example/page/\nDisallow: /example/page/disallowed.gif", "/example/page/ok.gif", True),
    ("Disallow: /\nAllow: /$", "/", True),
    ("Disallow: /\nAllow: /$", "/page", False),
    ("Allow: /folder\nDisallow: /folder", "/folder/page", True),
    ("Disallow: /private*/secret", "/private-area/secret/x", False),
    # percent-encoding is compared decoded (section 2.2.2)
    ("Disallow: /path%2Fto", "/path%2fto", False),
])
def test_matching_rules(rules, path, allowed):
    assert parse(f"User-agent: *\n{rules}\n").can_fetch(f"https://example.com{path}", "wit") is allowed


@pytest.mark.parametrize("junk", [
    "this line means nothing",
    "Disallow /no-colon",
    "Crawl-delay: soon",
    "Sitemap: not a url",
    "\x00\x01\x02 binary",
    "Allow: " + "a" * 10_000,
    "User-agent",
])
def test_a_line_that_does_not_parse_is_ignored_and_the_rest_applies(junk):
    rules = parse(f"User-agent: *\n{junk}\nDisallow: /private/\n")
    assert not rules.can_fetch("https://example.com/private/a.jpg", "wit")
    assert rules.can_fetch("https://example.com/public/a.jpg", "wit")


def test_groups_match_the_product_token_case_insensitively():
    rules = parse("User-agent: WIT\nDisallow: /\n\nUser-agent: *\nAllow: /\n")
    assert not rules.can_fetch("https://example.com/a.jpg", "wit")
    assert rules.can_fetch("https://example.com/a.jpg", "otherbot")


OTHER_AGENTS = "".join(f"User-agent: bot{i}\nDisallow: /only-for-bot{i}/\n\n" for i in range(3))


@pytest.mark.parametrize("agent", ["wit", "foobot", "barbot", "bazbot", "quxbot", "bot1", "nobody"])
def test_the_kept_groups_answer_as_the_whole_file(agent):
    """What the cache keeps of a file (the groups that could apply to the token) gives the same verdicts."""
    from wit.net.robots import relevant

    text = OTHER_AGENTS + RFC_EXAMPLE + "User-agent: wit*\nDisallow: /starred/\n"
    kept, _ = relevant(text, agent)
    for path in ("/example/page.html", "/example/allowed.gif", "/images/logo.gif", "/publications/p.html",
                 "/only-for-bot1/a", "/starred/a", "/"):
        url = f"https://example.com{path}"
        assert parse(kept).can_fetch(url, agent) is parse(text).can_fetch(url, agent), (agent, path)


def test_a_large_file_costs_the_cache_only_what_applies_to_wit():
    from wit.net.robots import MAX_RULES, relevant

    others = "".join(f"User-agent: crawler{i}\nDisallow: /{i}/\n" for i in range(20_000))  # about 500 KiB
    kept, rules = relevant(others + "User-agent: *\nDisallow: /private/\n", "wit")
    assert rules == 1 and len(kept) < 100
    flood = "User-agent: *\n" + "".join(f"Disallow: /p{i}/\n" for i in range(MAX_RULES + 5_000))
    kept, rules = relevant(flood, "wit")
    assert rules == MAX_RULES
    assert not parse(kept).can_fetch("https://example.com/p0/a.jpg", "wit")
    assert parse(kept).can_fetch(f"https://example.com/p{MAX_RULES + 1}/a.jpg", "wit")  # past the bound: ignored


def test_the_cache_holds_a_bounded_number_of_rules(monkeypatch):
    from wit.net import robots
    monkeypatch.setattr(robots, "MAX_CACHED_RULES", 100)
    cache = robots._Cache()
    for i in range(10):
        cache.rules(f"https://h{i}.example", "k", lambda: (parse("User-agent: *\nDisallow: /x\n"), 30))
    assert cache.weight <= 100 and len(cache._entries) == 3
    assert cache.rules("https://h9.example", "k", lambda: pytest.fail("h9 is still cached")) is not None


def test_robots_txt_has_its_own_deadline_not_a_share_of_the_images(web_server):
    """robots.txt answers after 0.7 s and the image after 0.6 s: with a 1 s --timeout each is in time."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pipelines.fetch import FetchOptions, fetch
    from wit.net import robots
    web, _ = web_server
    body = web.image_bytes(1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            import time

            time.sleep(0.7 if self.path == "/robots.txt" else 0.6)
            data = b"User-agent: *\nDisallow: /private/\n" if self.path == "/robots.txt" else body
            self.send_response(200)
            self.send_header("Content-Type", "text/plain" if self.path == "/robots.txt" else "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        robots.cache.clear()
        got = fetch(f"http://127.0.0.1:{server.server_address[1]}/a.jpg",
                    FetchOptions(timeout=1.0, retries=0, allow_private_networks=True))
        assert got.ok and got.data == body, got
    finally:
        server.shutdown()
        server.server_close()
