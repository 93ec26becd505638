"""Refusing to fetch from private networks (SSRF), checked where the socket connects.

A URL list is untrusted input: a candidate (or a redirect from one) may point at
127.0.0.1, the cloud metadata service at 169.254.169.254, or an intranet host.
Checking the URL's host before the request is not enough: DNS can answer
differently the second time (rebinding) and redirects name new hosts. So the
check sits in urllib3's connection: it resolves the name once (through the
process's caching resolver, `wit.net.resolver`, within the exchange's deadline), refuses every
range of IANA's special-purpose registries (private, loopback, link-local,
shared, documentation, ...), multicast and the IPv4-mapped, 6to4 and NAT64
forms of those, and connects to the very address it checked. Every redirect hop opens its own
connection, so every hop is checked. A watchdog holds each exchange to its deadline (`deadline`).

Both of wit's fetchers (images, and the query list's dumps) take their connections from here, and their
retry rules: which answers are worth another try, and how long a server's Retry-After asks to wait.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import random
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Iterator, Optional

import certifi
from urllib3 import PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError
from urllib3.util import connection as u3connection

from wit.net.resolver import LookupFailed, resolver_for


RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


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


def backoff_seconds(first: float, retry: int, retry_after: Optional[float] = None) -> float:
    """The wait before retry number `retry` (0: the first): exponential from `first`, jittered so that many
    clients do not come back at once, or the server's Retry-After when that is longer."""
    return max(first * 2 ** retry * (0.5 + random.random()), retry_after or 0.0)


@dataclass(frozen=True)
class NetworkPolicy:
    allow_private: bool = False
    # (ip, port) pairs allowed even though private: a test server, one intranet mirror
    allowed: frozenset[tuple[str, int]] = field(default_factory=frozenset)
    # name servers asked for host names (ip or ip:port); empty: the system's (resolv.conf)
    dns_servers: tuple[str, ...] = ()


class BlockedAddress(NewConnectionError):
    """The host resolved only to addresses the policy refuses."""


# IANA's IPv4 and IPv6 Special-Purpose Address Registries (as of 2025), every entry, whether or not the
# registry calls it globally reachable (an anycast relay or a DNS sink is no image host), plus the ranges
# outside them that are no unicast web host either: multicast, the deprecated site-local fec0::/10 (RFC 3879),
# the IPv4-compatible ::/96 and the IPv4-translated ::ffff:0:0:0/96. Embedded IPv4 forms (mapped, 6to4,
# NAT64) are judged by their IPv4 address.
SPECIAL_PURPOSE: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.31.196.0/24", "AS112"),
    ("192.52.193.0/24", "AMT"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("192.175.48.0/24", "AS112 direct delegation"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "limited broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("::ffff:0:0:0/96", "IPv4-translated (RFC 2765/6145)"),  # a translator on the path maps it to IPv4
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation"),
    ("100::/64", "discard-only"),
    ("100:0:0:1::/64", "dummy IPv6 prefix"),
    ("2001::/32", "Teredo"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("2620:4f:8000::/48", "AS112 direct delegation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing SIDs"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
_SPECIAL = tuple((ipaddress.ip_network(net), name) for net, name in SPECIAL_PURPOSE)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def refusal(ip: str) -> Optional[str]:
    """Why `ip` is not a public unicast address, or None if it is."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if addr.version == 6:
        embedded = addr.ipv4_mapped or addr.sixtofour
        if embedded is None and addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            why = refusal(str(embedded))
            return f"IPv6-embedded {why}" if why else None
    for net, name in _SPECIAL:
        if addr.version == net.version and addr in net:
            return f"{name} address {addr}"
    if not addr.is_global:  # Python's own tables, should IANA's grow before ours
        return f"non-global address {addr}"
    return None


class NameLookupFailed(NewConnectionError):
    """The host's name did not resolve (`timed_out`: not within the exchange's deadline)."""

    def __init__(self, conn, message: str, timed_out: bool) -> None:
        super().__init__(conn, message)
        self.timed_out = timed_out


def resolve_allowed(host: str, port: int, policy: NetworkPolicy, deadline: Optional[float] = None) -> list[tuple]:
    """Socket addresses (getaddrinfo's form) the policy allows, looked up through the process's caching
    resolver by `deadline` (`resolver.LookupFailed` past it); raises OSError naming the refusal if none."""
    when = deadline if deadline is not None else time.monotonic() + 30.0
    infos = [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 0, "",
              (ip, port, 0, 0) if ":" in ip else (ip, port))
             for ip in resolver_for(policy.dns_servers).lookup(host, when)]
    allowed, reasons = [], []
    for info in infos:
        ip = info[4][0]
        why = None if policy.allow_private or (ip, port) in policy.allowed else refusal(ip)
        if why:
            reasons.append(why)
        else:
            allowed.append(info)
    if not allowed:
        raise OSError(f"blocked: {host} resolves to a {reasons[0]}" if reasons else f"blocked: {host} resolves "
                      f"to no address")
    return allowed


class _Watchdog:
    """Shuts the socket of an exchange that passed its deadline.

    A socket timeout would bound each read, not the exchange: a server that drips its status line, its
    headers or endless `100 Continue` lines a byte at a time, or stalls a TLS handshake, would hold a request
    as long as it likes. One thread per process keeps the deadlines in a heap; a shut socket makes the
    blocked read return at once, and the caller, past its deadline, reports a timeout. The thread wakes
    `SLACK` after the earliest deadline and shuts every exchange due by then: a wake per exchange would cost
    the fetching process a thread switch and a turn at the GIL per request (bench/download.py).
    """

    SLACK = 0.05

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, object]] = []
        self._ids = itertools.count(1)
        self._thread: Optional[threading.Thread] = None

    def watch(self, conn, deadline: float) -> None:
        token = next(self._ids)
        conn._wit_watch = token
        with self._cond:
            heapq.heappush(self._heap, (deadline, token, conn))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="wit-deadlines", daemon=True)
                self._thread.start()
            if self._heap[0][1] == token:  # the earliest deadline now: the thread sleeps until a later one
                self._cond.notify()

    @staticmethod
    def release(conn) -> None:
        conn._wit_watch = None

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _deadline, token, conn = heapq.heappop(self._heap)
                    if getattr(conn, "_wit_watch", None) == token:  # still in the exchange it was watched for
                        sock = getattr(conn, "sock", None)
                        if sock is not None:
                            try:
                                sock.shutdown(socket.SHUT_RDWR)
                            except OSError:
                                pass
                self._cond.wait(self._heap[0][0] + self.SLACK - now if self._heap else None)


_watchdog = _Watchdog()
_exchange = threading.local()


@contextmanager
def deadline(when: float) -> Iterator[None]:
    """Every connection this thread connects or sends on inside the block is shut at `when` (monotonic)."""
    _exchange.deadline, _exchange.conns = when, []
    try:
        yield
    finally:
        for conn in _exchange.conns:
            _watchdog.release(conn)
        _exchange.deadline, _exchange.conns = None, []


def _watch(conn) -> None:
    when = getattr(_exchange, "deadline", None)
    if when is not None:
        _watchdog.watch(conn, when)
        _exchange.conns.append(conn)


class _Socket(socket.socket):
    """A socket whose `settimeout` makes no system call when the timeout does not change. urllib3 sets the
    timeout twice an exchange; each call is an ioctl made with the GIL released, which in the fetching process
    hands the GIL to another of its hundreds of threads and back (bench/download.py)."""

    def settimeout(self, value: Optional[float]) -> None:
        if value != self.gettimeout():
            super().settimeout(value)


class _Guarded:
    policy: NetworkPolicy = NetworkPolicy()

    def connect(self) -> None:  # TCP and TLS: under the exchange's deadline
        _watch(self)
        super().connect()

    def request(self, *args, **kwargs):  # a kept-alive connection starts its exchange here
        _watch(self)
        if self.sock is not None:  # kept alive: the watchdog bounds the exchange, the socket stays blocking
            self.timeout = None
        return super().request(*args, **kwargs)

    def _new_conn(self) -> socket.socket:  # urllib3 2.x hook: one call per new connection
        try:
            infos = resolve_allowed(self._dns_host, self.port, self.policy, getattr(_exchange, "deadline", None))
        except LookupFailed as e:
            raise NameLookupFailed(self, str(e), e.timed_out) from None
        except OSError as e:
            raise BlockedAddress(self, str(e)) from None
        last: Optional[Exception] = None
        for family, _type, _proto, _name, sockaddr in infos:
            try:
                sock = u3connection.create_connection(sockaddr[:2], self.timeout, source_address=self.source_address,
                                                      socket_options=self.socket_options)
            except OSError as e:
                last = e
                continue
            timeout = sock.gettimeout()
            quiet = _Socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
            quiet.settimeout(timeout)
            return quiet
        raise NewConnectionError(self, f"failed to connect to {self.host}: {last}")


@lru_cache(maxsize=None)
def _pool_classes(policy: NetworkPolicy) -> dict[str, type]:
    http_conn = type("GuardedHTTPConnection", (_Guarded, HTTPConnection), {"policy": policy})
    https_conn = type("GuardedHTTPSConnection", (_Guarded, HTTPSConnection), {"policy": policy})
    return {
        "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }


def pool_manager(policy: NetworkPolicy, per_host: int, hosts: int = 256) -> PoolManager:
    """A thread-safe keep-alive pool whose every new connection passes the policy.

    `per_host` idle connections are kept per host, for the `hosts` most recently used hosts.
    Proxies are never used: the guard must see the real peer.
    """
    manager = PoolManager(num_pools=hosts, maxsize=per_host, block=False, ca_certs=certifi.where())
    manager.pool_classes_by_scheme = _pool_classes(policy)
    return manager
