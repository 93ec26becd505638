"""Downloading images with urllib3, politely and without hanging.

Every outcome is a `Fetched` value, never an exception: the job records a
status, an error kind and a message per sample, like img2dataset, so one bad
URL never costs the rest of a shard. Retries are decided by the kind.

urllib3 rather than requests on top of it: the fetcher follows redirects
itself (each hop is checked), reads bodies itself (byte cap, deadline) and
wants no cookies, proxies or hooks, so requests added nothing but CPU per
fetch (bench/fetch.py; figures in bench/RESULTS.md).
"""

from __future__ import annotations

import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional
from urllib.parse import urlsplit

from urllib3 import BaseHTTPResponse, PoolManager
from urllib3.exceptions import HTTPError

from wit.net import USER_AGENT, robots
from wit.net.netguard import (RETRYABLE_STATUS, NetworkPolicy, backoff_seconds, pool_manager,
                              retry_after_seconds)
from wit.core.options import Options, option
from wit.net.resolver import name_server
from wit.net.responses import Failure, failure, get, read_body, redirect_target
from wit.core.errors import OPT_OUT_KINDS, ErrorKind

# img2dataset's defaults: the directives by which sites opt out of AI datasets.
DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")


@dataclass(frozen=True)
class FetchOptions(Options):
    timeout: float = option(10.0, help="seconds per request, body included")
    retries: int = option(2, help="retries on timeouts, connection errors, 5xx and 429")
    retry_backoff: float = option(0.5, help="first backoff in seconds, doubled each retry")
    max_redirects: int = option(5, help="redirects followed per request")
    max_bytes: int = option(32 * 1024 * 1024, help="largest image body fetched")
    user_agent: str = option(USER_AGENT, help="User-Agent header", cli=False)
    user_agent_token: str = option("wit", help="name matched against robots.txt groups and X-Robots-Tag "
                                               "user-agent directives")
    disallowed_directives: tuple[str, ...] = option(DISALLOWED_DIRECTIVES, help="X-Robots-Tag opt-outs",
                                                    cli=False)
    allow_private_networks: bool = option(False, help="fetch from loopback, private and link-local addresses "
                                                      "(tests, intranets); refused by default, on every redirect hop")
    allowed_addresses: tuple[tuple[str, int], ...] = option(
        (), help="(ip, port) exceptions to the private-network refusal", cli=False)
    max_per_host: int = option(8, help="concurrent requests to one host per worker")
    max_retry_after: float = option(30.0, help="longest Retry-After (429/503) waited for; longer fails the sample")
    robots_txt: bool = option(True, help="fetch and honour each host's robots.txt")
    dns_servers: tuple[str, ...] = option((), help="a name server asked for host names, IP or IP:PORT (default: "
                                                   "the system's); answers are cached per worker for their TTL",
                                          metavar="ADDR")

    def check(self) -> None:
        for name in ("timeout", "max_per_host"):
            if getattr(self, name) <= 0:
                self.refuse(name, "must be positive")
        for name in ("retries", "retry_backoff", "max_redirects", "max_retry_after"):
            if getattr(self, name) < 0:
                self.refuse(name, "must not be negative")
        if self.max_bytes < 1:
            self.refuse("max_bytes", "must be at least 1")
        for server in self.dns_servers:
            try:
                name_server(server)
            except ValueError as e:
                self.refuse("dns_servers", str(e))

    @property
    def policy(self) -> NetworkPolicy:
        return NetworkPolicy(self.allow_private_networks, frozenset(self.allowed_addresses), self.dns_servers)

    @property
    def headers(self) -> dict[str, str]:
        # identity: bodies are never decoded (see responses.get), so ask for none to decode
        return {"User-Agent": self.user_agent, "Accept": "*/*", "Accept-Encoding": "identity"}


@dataclass(frozen=True)
class Fetched:
    """One download's outcome: the body, or the kind of failure and a message."""

    data: Optional[bytes] = None
    kind: Optional[ErrorKind] = None
    error: Optional[str] = None
    http_status: Optional[int] = None
    final_url: Optional[str] = None
    attempts: int = field(default=1, compare=False)
    retry_after: Optional[float] = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.kind is None

    @property
    def opted_out(self) -> bool:
        return self.kind in OPT_OUT_KINDS


def _failed(f: Failure, http_status: Optional[int] = None, **kw) -> Fetched:
    return Fetched(kind=f.kind, error=f.message, http_status=http_status, **kw)


def opt_out_directive(robots_values: list[str], token: str, disallowed: tuple[str, ...]) -> Optional[str]:
    """The X-Robots-Tag directive that forbids use by `token`, if any.

    A value may name a user agent ("otherbot: noindex"); it then only binds that agent.
    """
    for value in robots_values:
        agent, sep, directives = value.partition(":")
        if not sep:
            agent, directives = "", value
        agent = agent.strip().lower()
        if agent and agent not in (token.lower(), "*"):
            continue
        for directive in directives.split(","):
            if directive.strip().lower() in disallowed:
                return directive.strip().lower()
    return None


_pools: dict[tuple[NetworkPolicy, int], PoolManager] = {}
_pools_lock = threading.Lock()


def _pool(opts: FetchOptions) -> PoolManager:
    """One keep-alive pool per worker process, network policy and per-host limit, shared by its threads."""
    key = (opts.policy, max(1, opts.max_per_host))
    pool = _pools.get(key)
    if pool is None:
        with _pools_lock:
            pool = _pools.get(key)
            if pool is None:
                pool = _pools[key] = pool_manager(*key)
    return pool


def host_of(url: str) -> str:
    """The host a URL's exchanges count against (lowercase; "" for a URL without one)."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


class HostLimits:
    """At most `--max-per-host` exchanges at once with one host, per process, whoever asks: a shard full of
    one site's URLs must not open dozens of connections to it. The downloader's scheduler takes a slot
    without waiting (`try_take`), passes over hosts at their limit and hears when one frees (`on_free`);
    `fetch` called on its own waits for a slot, and takes none when its thread already `holds` one. Only
    hosts in use have an entry, so millions of hosts cost nothing."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy: dict[str, int] = {}
        self._listeners: list[weakref.WeakMethod] = []
        self._held = threading.local()

    def on_free(self, listener) -> None:
        """`listener(host)` (a bound method, held weakly) after each slot given back."""
        with self._cond:
            self._listeners = [ref for ref in self._listeners if ref() is not None] + [weakref.WeakMethod(listener)]

    def busy(self, host: str) -> int:
        with self._cond:
            return self._busy.get(host, 0)

    def try_take(self, host: str, limit: int) -> bool:
        with self._cond:
            n = self._busy.get(host, 0)
            if n >= max(1, limit):
                return False
            self._busy[host] = n + 1
            return True

    def give(self, host: str) -> None:
        with self._cond:
            n = self._busy[host] - 1
            if n:
                self._busy[host] = n
            else:
                del self._busy[host]
            self._cond.notify_all()
            listeners = [ref() for ref in self._listeners]
        for listener in listeners:
            if listener is not None:
                listener(host)

    @contextmanager
    def holds(self, host: str) -> Iterator[None]:
        """The calling thread holds a slot of `host` (taken with `try_take`) while it fetches."""
        self._held.host = host
        try:
            yield
        finally:
            self._held.host = None

    @contextmanager
    def slot(self, host: str, limit: int) -> Iterator[None]:
        """One of `host`'s slots for the block, waited for; none taken if the thread holds one already."""
        if getattr(self._held, "host", None) == host:
            yield
            return
        with self._cond:
            while not self.try_take(host, limit):
                self._cond.wait()
        try:
            yield
        finally:
            self.give(host)


host_limits = HostLimits()


def _check_url(url: str) -> Optional[Failure]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return Failure(ErrorKind.INVALID_URL,
                       f"unsupported scheme {parts.scheme or '(none)'!r}: only http and https are fetched")
    if not parts.hostname:
        return Failure(ErrorKind.INVALID_URL, "no host in the URL")
    try:
        parts.port
    except ValueError:  # checked here, or robots.txt's URL would be blamed for the image's port
        return Failure(ErrorKind.INVALID_URL, f"invalid port {parts.netloc.rpartition(':')[2][:20]!r} "
                                              f"(0-65535)")
    return None


def _attempt(url: str, opts: FetchOptions) -> Fetched:
    """One try: every hop's robots.txt within its own --timeout, the image's exchanges (all hops) within theirs.
    Time spent on a later hop's robots.txt does not count against the image."""
    pool = _pool(opts)
    deadline: Optional[float] = None
    try:
        for _hop in range(opts.max_redirects + 1):
            bad = _check_url(url)
            if bad:
                return _failed(bad)
            if opts.robots_txt:
                started = time.monotonic()
                refused = robots.verdict(url, opts.user_agent_token, pool, opts.headers, opts.timeout,
                                         started + opts.timeout, repr(opts.policy))
                if refused:
                    return _failed(refused)
                if deadline is not None:
                    deadline += time.monotonic() - started
            if deadline is None:
                deadline = time.monotonic() + opts.timeout
            with get(pool, url, opts.headers, opts.timeout, deadline) as resp:
                target = redirect_target(resp, url)
                if target:
                    url = target
                    continue
                return _read(resp, url, opts, deadline)
        return _failed(Failure(ErrorKind.REDIRECTS, f"more than {opts.max_redirects} redirects"))
    except (HTTPError, ValueError) as e:
        return _failed(failure(e, opts.timeout))


def _read(resp: BaseHTTPResponse, url: str, opts: FetchOptions, deadline: float) -> Fetched:
    code = resp.status
    if code != 200:
        return _failed(Failure(ErrorKind.HTTP, f"http {code} {resp.reason or ''}".strip()), code,
                       retry_after=retry_after_seconds(resp.headers.get("Retry-After")))
    directive = opt_out_directive(resp.headers.getlist("X-Robots-Tag"), opts.user_agent_token,
                                  opts.disallowed_directives)
    if directive:
        return _failed(Failure(ErrorKind.X_ROBOTS_TAG, f"X-Robots-Tag: {directive}"), code)
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
        return _failed(Failure(ErrorKind.NOT_AN_IMAGE, f"content-type {ctype} is not an image"), code)
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > opts.max_bytes:
        return _failed(Failure(ErrorKind.TOO_LARGE, f"content-length {length} over {opts.max_bytes} bytes"), code)
    body, cut = read_body(resp, opts.max_bytes, deadline)
    if cut == "over":
        return _failed(Failure(ErrorKind.TOO_LARGE, f"body over {opts.max_bytes} bytes"), code)
    if cut == "timeout":
        return _failed(Failure(ErrorKind.TIMEOUT, f"timeout: body not complete after {opts.timeout:g}s"), code)
    return Fetched(data=body, http_status=code, final_url=url)


_RETRYABLE_KINDS = frozenset({ErrorKind.TIMEOUT, ErrorKind.CONNECTION, ErrorKind.DNS_TIMEOUT})


def _retryable(result: Fetched) -> bool:
    if result.kind is ErrorKind.HTTP:
        return result.http_status in RETRYABLE_STATUS
    return result.kind in _RETRYABLE_KINDS


def fetch(url: str, opts: FetchOptions = FetchOptions()) -> Fetched:
    """GET with a total deadline per attempt, at most `max_per_host` at once per host, and jittered
    exponential backoff between attempts (or the server's Retry-After, up to `max_retry_after`)."""
    host = host_of(url)  # "" for a URL that does not parse: `_attempt` reports it
    attempt = 0
    while True:
        with host_limits.slot(host, opts.max_per_host):
            result = _attempt(url, opts)
        if attempt >= opts.retries or not _retryable(result):
            return replace(result, attempts=attempt + 1)
        if result.retry_after is not None and result.retry_after > opts.max_retry_after:
            return replace(result, attempts=attempt + 1, kind=ErrorKind.RATE_LIMITED,
                           error=f"{result.error}: rate limited, Retry-After "
                                 f"{result.retry_after:.0f}s is over {opts.max_retry_after:g}s")
        time.sleep(backoff_seconds(opts.retry_backoff, attempt, result.retry_after))
        attempt += 1
