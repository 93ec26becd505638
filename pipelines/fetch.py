"""Downloading images with requests, politely and without hanging.

Every outcome is a `Fetched` value, never an exception: the job records a
status and an error message per sample, like img2dataset, so one bad URL
never costs the rest of a shard.
"""

from __future__ import annotations

import random
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Optional
from urllib.parse import urljoin, urlsplit

import requests

from pipelines import robots
from pipelines.netguard import GuardedAdapter, NetworkPolicy
from pipelines.responses import describe, read_body
from wit import USER_AGENT

# img2dataset's defaults: the directives by which sites opt out of AI datasets.
DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class FetchOptions:
    timeout: float = 10.0  # whole request, not one socket read
    retries: int = 2
    retry_backoff: float = 0.5
    max_redirects: int = 5
    max_bytes: int = 32 * 1024 * 1024
    user_agent: str = USER_AGENT
    user_agent_token: str = "wit"
    disallowed_directives: tuple[str, ...] = DISALLOWED_DIRECTIVES
    allow_private_networks: bool = False  # tests and intranets only: see pipelines/netguard.py
    allowed_addresses: tuple[tuple[str, int], ...] = ()  # (ip, port) exceptions to the private-network refusal
    max_per_host: int = 8  # concurrent requests to one host, per worker process
    max_retry_after: float = 30.0  # longest Retry-After honoured; a longer one fails the sample
    robots_txt: bool = True

    @property
    def policy(self) -> NetworkPolicy:
        return NetworkPolicy(self.allow_private_networks, frozenset(self.allowed_addresses))


@dataclass(frozen=True)
class Fetched:
    """One download's outcome. `status` is "ok", "opted_out" or "failed"."""

    status: str
    data: Optional[bytes] = None
    error: Optional[str] = None
    http_status: Optional[int] = None
    final_url: Optional[str] = None
    attempts: int = field(default=1, compare=False)
    retry_after: Optional[float] = field(default=None, compare=False)


def opted_out(robots_values: list[str], token: str, disallowed: tuple[str, ...]) -> Optional[str]:
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


class _Sessions(threading.local):
    sessions: Optional[dict] = None


_sessions = _Sessions()


def _session(opts: FetchOptions) -> requests.Session:
    """One keep-alive session per thread and network policy."""
    if _sessions.sessions is None:
        _sessions.sessions = {}
    s = _sessions.sessions.get(opts.policy)
    if s is None:
        s = requests.Session()
        s.trust_env = False  # no proxies from the environment: the guard must see the real peer
        adapter = GuardedAdapter(opts.policy)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        _sessions.sessions[opts.policy] = s
    s.headers["User-Agent"] = opts.user_agent
    return s


class _HostSlots:
    """Per-host semaphores: a shard full of one site's URLs must not open 32 connections to it.
    Held weakly: a host's semaphore lives while some thread uses it, so millions of hosts cost nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def get(self, host: str, limit: int) -> threading.BoundedSemaphore:
        with self._lock:
            slot = self._slots.get((host, limit))
            if slot is None:
                slot = self._slots[(host, limit)] = threading.BoundedSemaphore(limit)
            return slot


_host_slots = _HostSlots()


def retry_after_seconds(value: Optional[str]) -> Optional[float]:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _get(session: requests.Session, url: str, opts: FetchOptions, deadline: float) -> requests.Response:
    remaining = max(0.01, deadline - time.monotonic())
    return session.get(url, timeout=(min(remaining, opts.timeout), min(remaining, opts.timeout)), stream=True,
                       allow_redirects=False)


def _check_url(url: str) -> Optional[str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return f"unsupported scheme {parts.scheme or '(none)'!r}: only http and https are fetched"
    if not parts.hostname:
        return "no host in the URL"
    return None


def _attempt(url: str, opts: FetchOptions, deadline: float) -> Fetched:
    session = _session(opts)
    try:
        for _hop in range(opts.max_redirects + 1):
            bad = _check_url(url)
            if bad:
                return Fetched("failed", error=bad)
            if opts.robots_txt:
                verdict = robots.verdict(url, opts, session, deadline)
                if verdict == "disallowed":
                    return Fetched("opted_out", error=f"robots.txt disallows {urlsplit(url).path or '/'}")
                if verdict:
                    return Fetched("failed", error=verdict)
            resp = _get(session, url, opts, deadline)
            if resp.is_redirect:
                location = resp.headers.get("Location", "")
                resp.close()
                url = urljoin(url, location)
                continue
            with resp:
                return _read(resp, opts, deadline)
        return Fetched("failed", error=f"more than {opts.max_redirects} redirects")
    except requests.RequestException as e:
        return Fetched("failed", error=describe(e, opts.timeout))


def _read(resp: requests.Response, opts: FetchOptions, deadline: float) -> Fetched:
    code = resp.status_code
    if code != 200:
        return Fetched("failed", error=f"http {code} {resp.reason or ''}".strip(), http_status=code,
                       retry_after=retry_after_seconds(resp.headers.get("Retry-After")))
    directive = opted_out(resp.raw.headers.getlist("X-Robots-Tag"), opts.user_agent_token,
                          opts.disallowed_directives)
    if directive:
        return Fetched("opted_out", error=f"X-Robots-Tag: {directive}", http_status=code)
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
        return Fetched("failed", error=f"content-type {ctype} is not an image", http_status=code)
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > opts.max_bytes:
        return Fetched("failed", error=f"content-length {length} over {opts.max_bytes} bytes", http_status=code)
    body, cut = read_body(resp, opts.max_bytes, deadline)
    if cut == "over":
        return Fetched("failed", error=f"body over {opts.max_bytes} bytes", http_status=code)
    if cut == "timeout":
        return Fetched("failed", error=f"timeout: body not complete after {opts.timeout:g}s", http_status=code)
    return Fetched("ok", data=body, http_status=code, final_url=resp.url)


def _retryable(result: Fetched) -> bool:
    if result.status != "failed":
        return False
    if result.http_status is not None:
        return result.http_status in RETRYABLE_STATUS
    return result.error is not None and result.error.startswith(("timeout", "connection error"))


def fetch(url: str, opts: FetchOptions = FetchOptions()) -> Fetched:
    """GET with a total deadline per attempt, at most `max_per_host` at once per host, and jittered
    exponential backoff between attempts (or the server's Retry-After, up to `max_retry_after`)."""
    slot = _host_slots.get((urlsplit(url).hostname or "").lower(), max(1, opts.max_per_host))
    attempt = 0
    while True:
        with slot:
            result = _attempt(url, opts, time.monotonic() + opts.timeout)
        if attempt >= opts.retries or not _retryable(result):
            return replace(result, attempts=attempt + 1)
        wait = opts.retry_backoff * (2 ** attempt) * (0.5 + random.random())
        if result.retry_after is not None:
            if result.retry_after > opts.max_retry_after:
                return replace(result, attempts=attempt + 1, error=f"{result.error}: rate limited, Retry-After "
                               f"{result.retry_after:.0f}s is over {opts.max_retry_after:g}s")
            wait = max(wait, result.retry_after)
        time.sleep(wait)
        attempt += 1
