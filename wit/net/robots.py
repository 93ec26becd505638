"""robots.txt, fetched once per host and worker process, read as RFC 9309 says.

Rules are read by protego (Scrapy's parser): lines that do not parse are
ignored and the rest apply, `*` and `$` patterns match, and the longest
matching rule wins (`urllib.robotparser` takes the first match and knows no
wildcards). A 4xx answer means no rules (allow all). An unreachable file (5xx, network
error, timeout) means the host may not be crawled, as the RFC requires; such a
host's samples fail with the reason rather than count as opted out, and the
verdict is kept for a minute only. Redirects are followed up to five hops;
files are cut at 500 KiB.

A worker meets hundreds of thousands of hosts, and a parsed file costs about
fifty times its size, so the cache keeps only what answers for wit's own token:
the groups whose user-agent lines could name it (or `*`), their allow and
disallow rules, at most `MAX_RULES` of them, and at most `MAX_CACHED_RULES`
rules over all hosts. Fetching and parsing robots.txt has its own deadline, not
a share of the first image's.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Optional
from urllib.parse import urlsplit
from protego import Protego
from urllib3 import PoolManager
from urllib3.exceptions import HTTPError

from wit.net.responses import Failure, failure, get, read_body, redirect_target
from wit.core.errors import ErrorKind

MAX_BYTES = 500 * 1024
UNREACHABLE_TTL = 60.0
MAX_HOSTS = 100_000  # per worker process; the least recently used are forgotten
MAX_RULES = 10_000  # allow/disallow rules kept of one host's groups for our token; later ones are ignored
MAX_CACHED_RULES = 500_000  # over all hosts of a worker process (a rule parsed is a few hundred bytes)
ALLOW_ALL = "allow"


class Unreachable(Failure):
    """Why robots.txt could not be read (a verdict that expires)."""


class _Cache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (origin, policy and token) -> (rules, expiry, weight), least recently used first
        self._entries: OrderedDict[tuple[str, str], tuple[object, float, int]] = OrderedDict()
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self.weight = 0  # rules held, over all entries

    def _fresh(self, k: tuple[str, str]) -> object:
        entry = self._entries.get(k)
        if entry is None or entry[1] <= time.monotonic():
            return None
        self._entries.move_to_end(k)
        return entry[0]

    def rules(self, origin: str, key: str, load) -> object:
        k = (origin, key)
        with self._lock:
            found = self._fresh(k)
            if found is not None:
                return found
            lock = self._loading.setdefault(k, threading.Lock())
        with lock:  # one fetch per host, the other threads wait for it
            with self._lock:
                found = self._fresh(k)
                if found is not None:
                    return found
            rules, weight = load()  # the verdict, and how many rules it holds
            ttl = UNREACHABLE_TTL if isinstance(rules, Unreachable) else float("inf")
            with self._lock:
                old = self._entries.pop(k, None)
                if old is not None:
                    self.weight -= old[2]
                self._entries[k] = (rules, time.monotonic() + ttl, weight)
                self.weight += weight
                while len(self._entries) > MAX_HOSTS or (self.weight > MAX_CACHED_RULES and len(self._entries) > 1):
                    self.weight -= self._entries.popitem(last=False)[1][2]
                self._loading.pop(k, None)
            return rules

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.weight = 0


cache = _Cache()


def parse(text: str) -> Protego:
    return Protego.parse(text)


_RULE_FIELDS = ("allow", "disallow")
_AGENT_FIELDS = ("user-agent", "useragent", "user agent")

try:  # the parser's own reading of a line, so that the groups are cut where protego cuts them
    from protego._protego import _extract_directive as _directive
except ImportError:  # another protego: colon-separated directives only
    def _directive(line: str) -> Optional[tuple[str, str]]:
        field, sep, value = line.partition(":")
        return (field.strip().lower(), value.strip()) if sep else None


def relevant(text: str, token: str) -> tuple[str, int]:
    """The groups of `text` that could apply to `token` (a user-agent line of `*` or a part of the token),
    at most MAX_RULES allow and disallow rules of them; and how many rules were kept. Protego picks among
    these as among the whole file: the other groups can never be chosen for `token`."""
    token = token.strip().lower()
    kept: list[str] = []
    agents: list[str] = []
    keep, in_agents, rules = False, False, 0
    for line in text.split("\n"):
        stripped = line.split("#", 1)[0].strip()
        found = _directive(stripped) if stripped else None
        if found is None:  # protego skips it: it neither ends a group nor belongs to one
            continue
        field, value = found
        if field in _AGENT_FIELDS:
            if not in_agents:  # a new group starts
                agents, keep, in_agents = [], False, True
            agents.append(stripped)
            name = value.lower().replace("*", "")
            if value == "*" or (name and name in token):
                keep = True
            continue
        if in_agents and keep:
            kept.extend(agents)
        in_agents = False
        if not keep:
            continue
        if field in _RULE_FIELDS:
            if rules >= MAX_RULES:
                continue
            rules += 1
        kept.append(stripped)
    if in_agents and keep:
        kept.extend(agents)
    return "\n".join(kept), rules


def _load(origin: str, token: str, pool: PoolManager, headers: dict[str, str], timeout: float,
          deadline: float) -> tuple[object, int]:
    url = origin + "/robots.txt"
    try:
        for _hop in range(5):
            with get(pool, url, headers, timeout, deadline) as resp:
                target = redirect_target(resp, url)
                if target:
                    url = target
                    continue
                if 400 <= resp.status < 500:
                    return ALLOW_ALL, 1
                if resp.status != 200:
                    return Unreachable(ErrorKind.ROBOTS_UNREACHABLE, f"robots.txt unreachable: http {resp.status}"), 1
                body, _cut = read_body(resp, MAX_BYTES, deadline)  # a cut file is read as far as it came
                text, rules = relevant(body[:MAX_BYTES].decode("utf-8", errors="replace"), token)
                return parse(text), rules + 1
        return ALLOW_ALL, 1  # too many redirects: RFC 9309 treats it as unavailable (4xx)
    except (HTTPError, ValueError) as e:
        return Unreachable(*failure(e)), 1


def verdict(url: str, token: str, pool: PoolManager, headers: dict[str, str], timeout: float, deadline: float,
            cache_key: str) -> Optional[Failure]:
    """None if `token` may fetch `url`; else (ROBOTS_TXT, why), or why robots.txt could not be read (a 5xx,
    or the host's connection error, which is then the sample's error too). `cache_key` separates verdicts
    reached under different network policies."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    rules = cache.rules(origin, f"{cache_key} {token}", lambda: _load(origin, token, pool, headers, timeout, deadline))
    if isinstance(rules, Unreachable):
        return rules
    if rules == ALLOW_ALL or rules.can_fetch(url, token):
        return None
    return Failure(ErrorKind.ROBOTS_TXT, f"robots.txt disallows {parts.path or '/'}")
