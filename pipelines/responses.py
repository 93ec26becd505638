"""Reading an HTTP response within a byte cap and a deadline, and naming why a request failed.

Shared by the image fetcher and the robots.txt reader, so that neither can be
held by a body that drips a byte at a time or never ends.
"""

from __future__ import annotations

import time
from typing import Optional

import requests

from pipelines.netguard import BlockedAddress


def read_body(resp: requests.Response, max_bytes: int, deadline: float) -> tuple[bytes, Optional[str]]:
    """The body, and None; or what was read before it passed `max_bytes` ("over") or `deadline` ("timeout").

    read1 returns after one socket read, so a body dripping a byte at a time meets the deadline
    (iter_content would block until 64 KiB arrived, each recv well inside the socket timeout).
    """
    chunks, size = [], 0
    while chunk := resp.raw.read1(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            return b"".join(chunks), "over"
        if time.monotonic() > deadline:
            return b"".join(chunks), "timeout"
    return b"".join(chunks), None


def describe(e: Exception, timeout: Optional[float] = None) -> str:
    """The error message of a failed request; its first word says what kind of failure it was."""
    if isinstance(e, requests.Timeout):
        return f"timeout after {timeout:g}s" if timeout is not None else "timeout"
    if isinstance(e, requests.exceptions.SSLError):
        return f"tls error: {_reason(e)}"
    if isinstance(e, requests.ConnectionError):
        return _blocked(e) or f"connection error: {_reason(e)}"
    return f"{type(e).__name__}: {_reason(e)}"


def _blocked(e: Exception) -> Optional[str]:
    reason = getattr(e.args[0], "reason", None) if e.args else None
    if isinstance(reason, BlockedAddress):
        return str(reason).split(": ", 1)[-1]  # urllib3 prefixes the connection's repr
    return None


def _reason(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 200 else text[:197] + "..."
