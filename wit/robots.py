"""robots.txt, fetched once per host and worker process, read as RFC 9309 says.

Rules are read by protego (Scrapy's parser): lines that do not parse are
ignored and the rest apply, `*` and `$` patterns match, and the longest
matching rule wins (`urllib.robotparser` takes the first match and knows no
wildcards). A 4xx answer means no rules (allow all). An unreachable file (5xx, network
error, timeout) means the host may not be crawled, as the RFC requires; such a
host's samples fail with the reason rather than count as opted out, and the
verdict is kept for a minute only. Redirects are followed up to five hops;
files are cut at 500 KiB.
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

from wit.responses import Failure, failure, get, read_body, redirect_target
from wit.shardformat import ErrorKind

MAX_BYTES = 500 * 1024
UNREACHABLE_TTL = 60.0
MAX_HOSTS = 100_000  # per worker process; the least recently used are forgotten
ALLOW_ALL = "allow"


class Unreachable(Failure):
    """Why robots.txt could not be read (a verdict that expires)."""


class _Cache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (origin, policy) -> (rules, expiry), least recently used first
        self._entries: OrderedDict[tuple[str, str], tuple[object, float]] = OrderedDict()
        self._loading: dict[tuple[str, str], threading.Lock] = {}

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
            rules = load()
            ttl = UNREACHABLE_TTL if isinstance(rules, Unreachable) else float("inf")
            with self._lock:
                self._entries[k] = (rules, time.monotonic() + ttl)
                self._entries.move_to_end(k)
                while len(self._entries) > MAX_HOSTS:
                    self._entries.popitem(last=False)
                self._loading.pop(k, None)
            return rules

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


cache = _Cache()


def parse(text: str) -> Protego:
    return Protego.parse(text)


def _load(origin: str, pool: PoolManager, headers: dict[str, str], timeout: float, deadline: float) -> object:
    url = origin + "/robots.txt"
    try:
        for _hop in range(5):
            with get(pool, url, headers, timeout, deadline) as resp:
                target = redirect_target(resp, url)
                if target:
                    url = target
                    continue
                if 400 <= resp.status < 500:
                    return ALLOW_ALL
                if resp.status != 200:
                    return Unreachable(ErrorKind.ROBOTS_UNREACHABLE, f"robots.txt unreachable: http {resp.status}")
                body, _cut = read_body(resp, MAX_BYTES, deadline)  # a cut file is read as far as it came
                return parse(body[:MAX_BYTES].decode("utf-8", errors="replace"))
        return ALLOW_ALL  # too many redirects: RFC 9309 treats it as unavailable (4xx)
    except (HTTPError, ValueError) as e:
        return Unreachable(*failure(e))


def verdict(url: str, token: str, pool: PoolManager, headers: dict[str, str], timeout: float, deadline: float,
            cache_key: str) -> Optional[Failure]:
    """None if `token` may fetch `url`; else (ROBOTS_TXT, why), or why robots.txt could not be read (a 5xx,
    or the host's connection error, which is then the sample's error too). `cache_key` separates verdicts
    reached under different network policies."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    rules = cache.rules(origin, cache_key, lambda: _load(origin, pool, headers, timeout, deadline))
    if isinstance(rules, Unreachable):
        return rules
    if rules == ALLOW_ALL or rules.can_fetch(url, token):
        return None
    return Failure(ErrorKind.ROBOTS_TXT, f"robots.txt disallows {parts.path or '/'}")
