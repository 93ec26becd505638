"""Name lookups for the fetchers: cached per process for each answer's TTL, bounded, cut at the deadline.

A web-scale download looks up tens of thousands of hosts per worker. The system's getaddrinfo gives no
TTL, caches nothing in most containers and cannot be cut short, so a slow name server holds a request
past its deadline and every image of a host pays the lookup again (img2dataset's docs ask users to run
a caching resolver for this reason). wit asks DNS itself with dnspython: each answer is kept for its own
TTL (at most `MAX_TTL`), negative answers for their SOA's negative TTL, `MAX_HOSTS` names at most, and
concurrent lookups of one name share one query. Names in the hosts file come from it, as the system's
resolver does; without a resolver configuration wit falls back to getaddrinfo, run on a helper thread so
that the deadline still cuts it. Which addresses may be connected to is not decided here (netguard).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Optional, Sequence

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

# A cache entry is a name and a few addresses (about 200 bytes): 65,536 of them hold a shard's worth of
# distinct hosts several times over in about 13 MB.
MAX_HOSTS = 65_536
# Longer TTLs are cut: a worker lives for hours, and a moved host should not fail for a day.
MAX_TTL = 3600.0
# An answer without a TTL (getaddrinfo, the hosts file, a negative answer without SOA) is kept this long.
DEFAULT_TTL = 60.0
HOSTS_FILE = "/etc/hosts"
FALLBACK_THREADS = 32


class LookupFailed(OSError):
    """Base of a failed lookup; `timed_out` says whether a retry may fare better."""

    timed_out = False


class NameNotFound(LookupFailed):
    """The name has no address (no such name, no A/AAAA records, or the name servers failed)."""


class LookupTimeout(LookupFailed):
    """The lookup did not finish before the exchange's deadline."""

    timed_out = True


@dataclass(frozen=True)
class _Entry:
    addresses: tuple[str, ...]  # empty: a negative answer
    expires: float
    why: str = ""


_NUMERIC = re.compile(r"[0-9a-fA-FxX.]+")


def _literal(host: str) -> Optional[str]:
    """The address a host written as an address stands for, in the forms getaddrinfo reads (and browsers):
    also decimal, octal, hex and short IPv4 ("2130706433", "0x7f.1", "127.1")."""
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        pass
    if _NUMERIC.fullmatch(host) and not host.isalpha():
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


def read_hosts_file(path: str = HOSTS_FILE) -> dict[str, tuple[str, ...]]:
    """name -> addresses, as the hosts file lists them (first listed first)."""
    names: dict[str, list[str]] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if len(fields) < 2 or _literal(fields[0]) is None:
                    continue
                for name in fields[1:]:
                    names.setdefault(name.lower().rstrip("."), []).append(fields[0])
    except OSError:
        return {}
    return {name: tuple(dict.fromkeys(ips)) for name, ips in names.items()}


class Resolver:
    """Thread-safe; one per process and set of name servers (`resolver_for`)."""

    def __init__(self, nameservers: Sequence[str] = (), hosts_file: str = HOSTS_FILE,
                 max_hosts: int = MAX_HOSTS) -> None:
        self.max_hosts = max_hosts
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._hosts_file = hosts_file
        self._hosts_mtime: Optional[float] = None
        self._hosts: dict[str, tuple[str, ...]] = {}
        self._dns: Optional[dns.resolver.Resolver]
        self._fallback: Optional[ThreadPoolExecutor] = None
        try:
            self._dns = dns.resolver.Resolver(configure=not nameservers)
        except dns.resolver.NoResolverConfiguration:
            self._dns = None
            self._fallback = ThreadPoolExecutor(FALLBACK_THREADS, thread_name_prefix="wit-getaddrinfo")
        if nameservers and self._dns is not None:
            servers = [name_server(s) for s in nameservers]
            self._dns.nameservers = [ip for ip, _port in servers]
            self._dns.nameserver_ports = {ip: port for ip, port in servers}
        if self._dns is not None:
            self._dns.cache = None  # ours keeps negative answers and is bounded by names, not by records
            self._dns.retry_servfail = False

    def lookup(self, host: str, deadline: float) -> tuple[str, ...]:
        """The host's addresses (IPv4 first); NameNotFound or LookupTimeout otherwise."""
        literal = _literal(host)
        if literal is not None:
            return (literal,)
        name = host.lower().rstrip(".")
        try:
            dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError) as e:  # bad syntax: the URL's fault, no lookup
            raise ValueError(f"invalid host name {host[:100]!r}: {_short(e)}") from None
        listed = self._hosts_entry(name)
        if listed:
            return listed
        while True:
            with self._lock:
                entry = self._cache.get(name)
                if entry is not None and entry.expires > time.monotonic():
                    self._cache.move_to_end(name)
                    return self._answer(name, entry)
                pending = self._pending.get(name)
                mine = pending is None
                if mine:
                    pending = self._pending[name] = Future()
            if mine:
                break
            try:  # another thread asks for this name: share its answer, within our own deadline
                shared = pending.result(max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                raise LookupTimeout(f"name lookup for {host} not answered in time") from None
            except Exception:  # its query ran out of its own deadline (or broke): ask again ourselves
                continue
            return self._answer(name, shared)
        try:
            entry = self._query(name, deadline)
        except BaseException as e:
            with self._lock:
                del self._pending[name]
            pending.set_exception(e)
            raise
        with self._lock:
            del self._pending[name]
            if entry.expires > time.monotonic():
                self._cache[name] = entry
                self._cache.move_to_end(name)
                while len(self._cache) > self.max_hosts:
                    self._cache.popitem(last=False)
        pending.set_result(entry)
        return self._answer(name, entry)

    @staticmethod
    def _answer(name: str, entry: _Entry) -> tuple[str, ...]:
        if not entry.addresses:
            raise NameNotFound(f"no address for {name}: {entry.why}")
        return entry.addresses

    def _hosts_entry(self, name: str) -> tuple[str, ...]:
        try:
            mtime = os.stat(self._hosts_file).st_mtime
        except OSError:
            mtime = None
        if mtime != self._hosts_mtime:  # read again when it changes, as the system's resolver does
            self._hosts, self._hosts_mtime = read_hosts_file(self._hosts_file), mtime
        return self._hosts.get(name, ())

    def _query(self, name: str, deadline: float) -> _Entry:
        if self._dns is None:
            return self._getaddrinfo(name, deadline)
        now = time.monotonic()
        negative: Optional[_Entry] = None
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):  # AAAA only for a name without IPv4
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LookupTimeout(f"name lookup for {name} not answered in time")
            try:
                answer = self._dns.resolve(name, rdtype, lifetime=remaining, raise_on_no_answer=False,
                                           search=True)
            except dns.resolver.NXDOMAIN as e:
                return _Entry((), now + _negative_ttl(e.response(e.qnames()[0]) if e.qnames() else None),
                              "no such name (NXDOMAIN)")
            except dns.exception.Timeout:
                raise LookupTimeout(f"name lookup for {name} not answered in time") from None
            except dns.resolver.NoNameservers as e:
                return _Entry((), now + 5.0, f"the name servers failed ({_short(e)})")
            except dns.exception.DNSException as e:
                return _Entry((), now + 5.0, f"{type(e).__name__}: {_short(e)}")
            if answer.rrset is not None:
                ips = tuple(dict.fromkeys(r.address for r in answer.rrset))
                return _Entry(ips, now + min(float(answer.rrset.ttl), MAX_TTL))
            negative = _Entry((), now + _negative_ttl(answer.response), "no A or AAAA record")
        assert negative is not None
        return negative

    def _getaddrinfo(self, name: str, deadline: float) -> _Entry:
        assert self._fallback is not None
        future = self._fallback.submit(socket.getaddrinfo, name, None, type=socket.SOCK_STREAM)
        try:
            infos = future.result(max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise LookupTimeout(f"name lookup for {name} not answered in time") from None
        except socket.gaierror as e:
            return _Entry((), time.monotonic() + DEFAULT_TTL, str(e.strerror or e))
        ips = [info[4][0] for info in infos]
        ips.sort(key=lambda ip: ":" in ip)  # IPv4 first, as with DNS above
        return _Entry(tuple(dict.fromkeys(ips)), time.monotonic() + DEFAULT_TTL)


def _negative_ttl(response) -> float:
    """RFC 2308: the SOA record's own TTL, at most its MINIMUM field."""
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                return float(min(rrset.ttl, rrset[0].minimum, MAX_TTL))
    return DEFAULT_TTL


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 200 else text[:197] + "..."


def name_server(spec: str) -> tuple[str, int]:
    """'ip' or 'ip:port' ('[v6]:port' for IPv6) as (ip, port)."""
    literal = _literal(spec)
    if literal is not None:
        return literal, 53
    host, sep, port = spec.rpartition(":")
    if not sep or _literal(host) is None or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{spec!r} is not an IP address or IP:PORT")
    return _literal(host), int(port)  # type: ignore[return-value]


_resolvers: dict[tuple[str, ...], Resolver] = {}
_resolvers_lock = threading.Lock()


def resolver_for(nameservers: Sequence[str] = ()) -> Resolver:
    """The process's resolver for these name servers (the system's when empty)."""
    key = tuple(nameservers)
    with _resolvers_lock:
        found = _resolvers.get(key)
        if found is None:
            found = _resolvers[key] = Resolver(key)
        return found
