"""Failures: the one base class of the errors a user can fix, and the kinds a sample's failure is recorded as.

The CLI prints a `WitError` as one line naming what is wrong (bad options,
inputs, folders or files); anything else is a bug and keeps its traceback. A
sample that fails to download or decode is not an exception but a value: its
`ErrorKind`, set where the failure happens, travels with it into the shards.
"""

from enum import Enum
from typing import Optional


def cause_of(e: Optional[BaseException], kind: type | tuple[type, ...]) -> Optional[BaseException]:
    """The first exception of `kind` in `e`'s chain (`e` itself, its cause or context, ...): a runner wraps
    a worker's exception in its own, with the original as the context."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, kind):
            return e
        e = e.__cause__ or e.__context__
    return None


class WitError(Exception):
    """Something the user can fix; the message names the file, row, path or flag and the reason."""


class InputError(WitError):
    """An input (file, folder, glob) that cannot be used as given."""


class FolderBusy(WitError):
    """Another process is writing into the same folder."""


def user_error_under(e: Optional[BaseException]) -> Optional[BaseException]:
    """What a user can fix under `e`'s chain: a WitError, or else a file the system refused (an OSError that
    names its file: a permission, a full disk); None for a bug."""
    ours = cause_of(e, WitError)
    if ours is not None:
        return ours
    refused = cause_of(e, OSError)
    return refused if refused is not None and getattr(refused, "filename", None) else None


class ErrorKind(str, Enum):
    """Why a sample is not a success, set where the failure happens; messages add the details."""

    HTTP = "http"  # an HTTP status other than 200
    RATE_LIMITED = "rate_limited"  # 429/503 with a Retry-After over the limit
    TIMEOUT = "timeout"
    CONNECTION = "connection"  # refused, reset, protocol errors
    DNS = "dns"  # the host name has no address (no such name, no records, failing name servers)
    DNS_TIMEOUT = "dns_timeout"  # the name lookup did not finish within the deadline
    TLS = "tls"
    INVALID_URL = "invalid_url"
    BLOCKED_NETWORK = "blocked_network"  # a private, loopback or otherwise non-global address
    REDIRECTS = "too_many_redirects"
    ROBOTS_TXT = "robots_txt"  # robots.txt disallows the path (opted out)
    ROBOTS_UNREACHABLE = "robots_unreachable"  # robots.txt answered 5xx or not at all
    X_ROBOTS_TAG = "x_robots_tag"  # an opt-out directive in the response (opted out)
    NOT_AN_IMAGE = "not_an_image"  # content type or leading bytes of no image format we decode
    TOO_LARGE = "too_large"  # bytes or pixels over the cap
    TOO_SMALL = "too_small"
    DECODE = "decode"  # an image format, but the data does not decode
    TOO_COMPLEX = "too_complex"  # decoding work over a bound set before decoding (a JPEG's scan count)
    DUPLICATE = "duplicate"
    NEAR_DUPLICATE = "near_duplicate"
    EVAL_DUPLICATE = "eval_duplicate"
    OTHER = "other"

    def __str__(self) -> str:
        return self.value


OPT_OUT_KINDS = frozenset({ErrorKind.ROBOTS_TXT, ErrorKind.X_ROBOTS_TAG})
