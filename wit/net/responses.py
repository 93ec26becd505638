"""Sending one GET, reading its response within a byte cap and a deadline, and saying why it failed.

Shared by the image fetcher and the robots.txt reader, so that neither can be
held by a body that drips a byte at a time or never ends.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, NamedTuple, Optional
from urllib.parse import urljoin

from urllib3 import BaseHTTPResponse, PoolManager, Timeout
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError, SSLError, TimeoutError

from wit.net import netguard
from wit.net.netguard import BlockedAddress, NameLookupFailed
from wit.core.errors import ErrorKind


@contextmanager
def get(pool: PoolManager, url: str, headers: dict[str, str], timeout: float,
        deadline: float) -> Iterator[BaseHTTPResponse]:
    """One GET, no redirect followed, no retry, the body not yet read; back to the pool on leaving.

    Errors are urllib3's own (retries=False), so `failure` sees what really happened; past the deadline,
    whatever broke is a `DeadlineExceeded`. The whole exchange (connect, TLS, status line, headers,
    body) is under the deadline (`netguard.deadline`): its watchdog alone bounds the reads, so the socket
    blocks without a timeout of its own (each read one system call, not a poll and then the read), and the
    connect timeout bounds the connect, before there is a socket to shut. Content is never decoded: a gzip
    body could expand past the byte cap inside one read. A connection whose body was read to the end is
    kept alive; any other is closed, so no leftover bytes reach the next request.
    """
    remaining = min(timeout, max(0.01, deadline - time.monotonic()))
    with netguard.deadline(deadline):
        try:
            resp = pool.request("GET", url, headers=headers, timeout=Timeout(connect=remaining, read=None),
                                preload_content=False, decode_content=False, redirect=False, retries=False)
        except HTTPError as e:
            if time.monotonic() >= deadline and not isinstance(e, NameLookupFailed):
                raise DeadlineExceeded(f"no complete response headers within {timeout:g}s") from e
            raise
        try:
            yield resp
        finally:
            resp.close()
            resp.release_conn()


class DeadlineExceeded(TimeoutError):
    """The exchange passed its deadline (the watchdog shut its socket)."""


def redirect_target(resp: BaseHTTPResponse, url: str) -> Optional[str]:
    """Where a redirect sends `url`, or None when `resp` is no redirect."""
    location = resp.get_redirect_location()
    return urljoin(url, location) if location else None


def read_body(resp: BaseHTTPResponse, max_bytes: int, deadline: float) -> tuple[bytes, Optional[str]]:
    """The body, and None; or what was read before it passed `max_bytes` ("over") or `deadline` ("timeout").

    read1 returns after one socket read, so a body dripping a byte at a time meets the deadline
    (read(n) would block until n bytes arrived, each recv well inside the socket timeout).
    """
    chunks, size = [], 0
    try:
        while chunk := resp.read1(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                return b"".join(chunks), "over"
            if time.monotonic() > deadline:
                return b"".join(chunks), "timeout"
    except HTTPError:
        if time.monotonic() < deadline:
            raise
    if time.monotonic() >= deadline:  # the watchdog shut the socket: the body may look complete, it is cut
        return b"".join(chunks), "timeout"
    return b"".join(chunks), None


class Failure(NamedTuple):
    kind: ErrorKind
    message: str


def failure(e: Exception, timeout: Optional[float] = None) -> Failure:
    """What a request that raised `e` failed of."""
    if isinstance(e, ValueError):  # urllib3's LocationParseError, the idna codec's UnicodeError
        return Failure(ErrorKind.INVALID_URL, f"invalid URL: {_reason(e)}")
    if isinstance(e, DeadlineExceeded):
        return Failure(ErrorKind.TIMEOUT, f"timeout: {e}")
    if isinstance(e, NameLookupFailed):  # before NewConnectionError, which it is
        if e.timed_out:
            return Failure(ErrorKind.DNS_TIMEOUT, f"name lookup timeout: {_reason(e).split(': ', 1)[-1]}")
        return Failure(ErrorKind.DNS, f"name lookup failed: {_reason(e).split(': ', 1)[-1]}")
    if isinstance(e, BlockedAddress):
        return Failure(ErrorKind.BLOCKED_NETWORK, str(e).split(": ", 1)[-1])  # urllib3 prefixes the connection
    if isinstance(e, SSLError):
        return Failure(ErrorKind.TLS, f"tls error: {_reason(e)}")
    if isinstance(e, (NewConnectionError, ProtocolError)):  # before TimeoutError: urllib3 derives the first from it
        return Failure(ErrorKind.CONNECTION, f"connection error: {_reason(e)}")
    if isinstance(e, TimeoutError):
        return Failure(ErrorKind.TIMEOUT, f"timeout after {timeout:g}s" if timeout is not None else "timeout")
    return Failure(ErrorKind.OTHER, f"{type(e).__name__}: {_reason(e)}")


def _reason(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 200 else text[:197] + "..."
