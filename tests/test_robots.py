"""robots.txt read as RFC 9309 says: its own examples, wildcards, longest match, tolerance of bad lines."""

import pytest

from wit.robots import parse

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
