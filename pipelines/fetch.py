"""Downloading images with requests, politely and without hanging.

Every outcome is a `Fetched` value, never an exception: the job records a
status and an error message per sample, like img2dataset, so one bad URL
never costs the rest of a shard.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import requests

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


@dataclass(frozen=True)
class Fetched:
    """One download's outcome. `status` is "ok", "opted_out" or "failed"."""

    status: str
    data: Optional[bytes] = None
    error: Optional[str] = None
    http_status: Optional[int] = None
    final_url: Optional[str] = None
    attempts: int = field(default=1, compare=False)


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
    session: Optional[requests.Session] = None


_sessions = _Sessions()


def _session(opts: FetchOptions) -> requests.Session:
    """One keep-alive session per thread, set to the options of the call at hand."""
    if _sessions.session is None:
        _sessions.session = requests.Session()
    s = _sessions.session
    s.headers["User-Agent"] = opts.user_agent
    s.max_redirects = opts.max_redirects
    return s


def _attempt(url: str, opts: FetchOptions, deadline: float) -> Fetched:
    session = _session(opts)
    remaining = max(0.01, deadline - time.monotonic())
    try:
        with session.get(url, timeout=(min(remaining, opts.timeout), min(remaining, opts.timeout)),
                         stream=True, allow_redirects=True) as resp:
            code = resp.status_code
            if code != 200:
                return Fetched("failed", error=f"http {code} {resp.reason or ''}".strip(), http_status=code)
            directive = opted_out(resp.raw.headers.getlist("X-Robots-Tag"), opts.user_agent_token,
                                  opts.disallowed_directives)
            if directive:
                return Fetched("opted_out", error=f"X-Robots-Tag: {directive}", http_status=code)
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
                return Fetched("failed", error=f"content-type {ctype} is not an image", http_status=code)
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > opts.max_bytes:
                return Fetched("failed", error=f"content-length {length} over {opts.max_bytes} bytes",
                               http_status=code)
            chunks, size = [], 0
            for chunk in resp.iter_content(chunk_size=65536):
                size += len(chunk)
                if size > opts.max_bytes:
                    return Fetched("failed", error=f"body over {opts.max_bytes} bytes", http_status=code)
                if time.monotonic() > deadline:
                    return Fetched("failed", error=f"timeout: body not complete after {opts.timeout:g}s",
                                   http_status=code)
                chunks.append(chunk)
            return Fetched("ok", data=b"".join(chunks), http_status=code, final_url=resp.url)
    except requests.TooManyRedirects:
        return Fetched("failed", error=f"more than {opts.max_redirects} redirects")
    except requests.Timeout:
        return Fetched("failed", error=f"timeout after {opts.timeout:g}s")
    except requests.ConnectionError as e:
        return Fetched("failed", error=f"connection error: {_reason(e)}")
    except requests.RequestException as e:
        return Fetched("failed", error=f"{type(e).__name__}: {_reason(e)}")


def _reason(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 200 else text[:197] + "..."


def _retryable(result: Fetched) -> bool:
    if result.status != "failed":
        return False
    if result.http_status is not None:
        return result.http_status in RETRYABLE_STATUS
    return result.error is not None and result.error.startswith(("timeout", "connection error"))


def fetch(url: str, opts: FetchOptions = FetchOptions()) -> Fetched:
    """GET with a total deadline per attempt and jittered exponential backoff between attempts."""
    attempt = 0
    while True:
        result = _attempt(url, opts, time.monotonic() + opts.timeout)
        if attempt >= opts.retries or not _retryable(result):
            return Fetched(result.status, result.data, result.error, result.http_status,
                           result.final_url, attempt + 1)
        time.sleep(opts.retry_backoff * (2 ** attempt) * (0.5 + random.random()))
        attempt += 1
