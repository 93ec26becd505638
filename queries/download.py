"""`wit queries download`: what the full query list needs, from the sites that publish it.

- the English Wikipedia `pages-articles` dump in its multistream parts, from the
  Wikimedia dump site: the newest run whose `dumpstatus.json` says the job is
  done (or `--dump-date`), each part checked against the run's published
  `*-sha1sums.txt`;
- `--pageview-days` days of hourly pageview files, the days before the dump's
  date, checked against the month's `md5sums.txt` where the site has one;
- WordNet 3.0's database from Princeton (no checksum is published: its sha256 is
  recorded), of which the four data files are kept.

Files are fetched one at a time (the dump site asks for few connections per
address) with wit's User-Agent, through the network guard the image fetcher
uses, after the host's robots.txt allows it. A cut transfer resumes with an
HTTP Range request, within the run or in a later one (`NAME.part`); a file
only gets its final name once its checksum matched. `manifest.json` lists
every file with its URL, size and checksum, and every failure with its kind,
so `wit queries build --from DIR` takes exactly what was verified.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Optional
from urllib.parse import urljoin, urlsplit

from urllib3 import BaseHTTPResponse, PoolManager, Timeout
from urllib3.exceptions import HTTPError

from queries.errors import QueryInputError
from wit.core.errors import ErrorKind, WitError
from wit.core.options import Options, option
from wit.net import USER_AGENT, robots
from wit.net.netguard import (RETRYABLE_STATUS, NetworkPolicy, backoff_seconds, pool_manager,
                              retry_after_seconds)
from wit.net.responses import redirect_target

WIKIMEDIA = "https://dumps.wikimedia.org"
WORDNET_URL = "https://wordnetcode.princeton.edu/3.0/WordNet-3.0.tar.gz"
MANIFEST = "manifest.json"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
ARTICLES_JOB = "articlesmultistreamdump"
CHUNK = 1 << 20
MAX_REDIRECTS = 5
_DATE = re.compile(r"^\d{8}$")
# Budgets against a broken or hostile mirror: what one listing, status or checksum file may weigh (the real
# ones are well under a megabyte), how many dump runs are tried, and how many files one run may list.
MAX_TEXT_BYTES = 16 << 20
MAX_RUNS = 30
MAX_FILES = 10_000
# A transfer that keeps being cut without the part ever growing past what it held is given up after this
# many cuts, even if each cut brought bytes (a mirror that restarts at byte 0 every time).
MAX_CUTS = 50


@dataclass(frozen=True)
class DownloadOptions(Options):
    out: str = option(help="local folder for the files and manifest.json (a rerun resumes there)")
    wiki: str = option("enwiki", help="the wiki whose dump is fetched")
    dump_date: str = option("latest", help="the dump run, YYYYMMDD, or 'latest': the newest finished one")
    pageview_days: int = option(30, help="days of hourly pageview files, the days before the dump's date "
                                         "(24 files, about 1.5 GB a day); 0 for none")
    parts: int = option(0, help="fetch only the dump's first N parts (a sample to try the job on); 0 for all")
    wordnet: bool = option(True, help="fetch WordNet 3.0")
    site: str = option(WIKIMEDIA, help="the Wikimedia dump site or a mirror with its layout")
    wordnet_url: str = option(WORDNET_URL, help="WordNet 3.0's database tarball")
    timeout: float = option(60.0, help="seconds a connection may stay silent before the transfer is retried")
    retries: int = option(5, help="retries per file after a failure that made no progress")
    retry_backoff: float = option(2.0, help="first backoff in seconds, doubled each retry")
    max_retry_after: float = option(600.0, help="longest Retry-After (429/503) waited for; a longer one ends "
                                                "the file's retries")
    user_agent_token: str = option("wit", help="name matched against robots.txt groups")
    allow_private_networks: bool = option(False, help="fetch from loopback, private and link-local addresses "
                                                      "(a mirror on the intranet, tests)")
    progress: bool = option(True, help="show progress bars")

    def check(self) -> None:
        if self.dump_date != "latest" and not _DATE.match(self.dump_date):
            self.refuse("dump_date", "must be YYYYMMDD or latest")
        for name in ("pageview_days", "parts", "retries"):
            if getattr(self, name) < 0:
                self.refuse(name, "must not be negative")
        if self.timeout <= 0:
            self.refuse("timeout", "must be positive")
        if self.max_retry_after < 0:
            self.refuse("max_retry_after", "must not be negative")
        if urlsplit(self.site).scheme not in ("http", "https"):
            self.refuse("site", "must be an http or https URL")


class Problem(enum.Enum):
    """Why a file could not be fetched."""

    HTTP = "http"  # an answer that is no file (404, 403, ...)
    NETWORK = "network"  # refused, reset or silent, after every retry
    CHECKSUM = "checksum"  # the bytes do not match the published checksum
    ROBOTS = "robots"  # the host's robots.txt disallows it
    LISTING = "listing"  # the site's index, status or checksum file is missing, unreadable or not believable
    URL = "url"  # a URL (or redirect) wit does not fetch: not http or https
    LOCAL = "local"  # the output folder refuses the file (a link in the way, no space, no permission)


class DownloadError(WitError):
    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class Wanted:
    source: str  # wikipedia, pageviews, wordnet
    url: str
    path: str  # relative to the output folder
    size: Optional[int] = None
    checksum: Optional[tuple[str, str]] = None  # (algorithm, hex digest) as the site publishes it


@dataclass
class Record:
    source: str
    url: str
    path: str
    bytes: int = 0
    checksum: dict = field(default_factory=dict)
    verified: bool = False
    problem: Optional[str] = None
    error: Optional[str] = None


class Client:
    """One guarded keep-alive connection per host, retries with backoff, Retry-After honoured."""

    def __init__(self, opts: DownloadOptions, sleep: Callable[[float], None] = time.sleep) -> None:
        self.opts = opts
        self.policy = NetworkPolicy(opts.allow_private_networks)
        self.pool: PoolManager = pool_manager(self.policy, per_host=1, hosts=8)
        self.headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        self.sleep = sleep

    def open(self, url: str, start: int = 0) -> tuple[BaseHTTPResponse, str]:
        """The response to GET `url` (from byte `start`), redirects followed with each hop checked."""
        headers = dict(self.headers, **({"Range": f"bytes={start}-"} if start else {}))
        for _hop in range(MAX_REDIRECTS + 1):
            scheme = urlsplit(url).scheme.lower()
            if scheme not in ("http", "https"):
                raise DownloadError(Problem.URL, f"{url[:200]}: refused: only http and https URLs are fetched")
            self._check_robots(url)
            resp = self.pool.request("GET", url, headers=headers, preload_content=False, redirect=False,
                                     retries=False, timeout=Timeout(connect=self.opts.timeout,
                                                                    read=self.opts.timeout))
            target = redirect_target(resp, url)
            if target:
                resp.release_conn()
                url = target
                continue
            return resp, url
        raise DownloadError(Problem.HTTP, f"{url}: more than {MAX_REDIRECTS} redirects")

    def text(self, url: str, missing_ok: bool = False) -> Optional[str]:
        """A small file (index, status, checksums) as text, retried like a download; None if 404 and allowed."""
        for attempt in self._attempts(url):
            try:
                resp, _ = self.open(url)
                try:
                    if resp.status == 404 and missing_ok:
                        return None
                    if resp.status != 200:
                        attempt.failed_status(resp)
                        continue
                    return _small_body(resp, url).decode("utf-8", errors="replace")
                finally:
                    resp.release_conn()
            except HTTPError as e:
                attempt.failed_network(e)
        raise AssertionError("unreachable: _attempts raises when retries run out")

    def _attempts(self, url: str) -> Iterator["_Attempt"]:
        attempt = _Attempt(url, self.opts, self.sleep)
        while True:
            yield attempt
            attempt.wait()

    def _check_robots(self, url: str) -> None:
        """The image fetcher's robots.txt reader (RFC 9309: redirects, a 500 KiB cap, no rules on a 4xx),
        with its verdict as a DownloadError."""
        refused = robots.verdict(url, self.opts.user_agent_token, self.pool, self.headers, self.opts.timeout,
                                 time.monotonic() + self.opts.timeout, repr(self.policy))
        if refused is None:
            return
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
        if refused.kind is ErrorKind.BLOCKED_NETWORK:
            raise DownloadError(Problem.NETWORK, f"{origin}: {refused.message} (allow it with "
                                                 "--allow-private-networks)")
        if refused.kind is ErrorKind.ROBOTS_TXT:
            raise DownloadError(Problem.ROBOTS, f"{url}: disallowed by {origin}/robots.txt "
                                                f"for {self.opts.user_agent_token!r}")
        raise DownloadError(Problem.ROBOTS, f"{origin}: {refused.message}; RFC 9309 forbids "
                                            "fetching from the host then")


def _small_body(resp: BaseHTTPResponse, url: str) -> bytes:
    """A listing's body as sent (never decompressed), refused past MAX_TEXT_BYTES whatever its Content-Length."""
    length = resp.headers.get("Content-Length")
    if length and length.strip().isdigit() and int(length) > MAX_TEXT_BYTES:
        raise DownloadError(Problem.LISTING, f"{url}: a listing of {int(length):,} bytes, over the "
                                             f"{MAX_TEXT_BYTES:,} wit reads")
    chunks, size = [], 0
    for chunk in resp.stream(CHUNK, decode_content=False):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_TEXT_BYTES:
            raise DownloadError(Problem.LISTING, f"{url}: a listing of over {MAX_TEXT_BYTES:,} bytes")
    return b"".join(chunks)


class _Attempt:
    """Counts failures without progress; sleeps between tries; raises when they run out."""

    def __init__(self, url: str, opts: DownloadOptions, sleep: Callable[[float], None]) -> None:
        self.url, self.opts, self.sleep = url, opts, sleep
        self.failures = 0
        self.furthest = 0  # the most bytes the file's part ever held
        self.cuts = 0
        self.retry_after: Optional[float] = None
        self.last: Optional[DownloadError] = None

    def failed_status(self, resp: BaseHTTPResponse) -> None:
        problem = Problem.NETWORK if resp.status in RETRYABLE_STATUS else Problem.HTTP
        error = DownloadError(problem, f"{self.url}: http {resp.status} {resp.reason or ''}".strip())
        self._fail(error, retryable=problem is Problem.NETWORK)
        wait = retry_after_seconds(resp.headers.get("Retry-After"))
        if wait is not None and wait > self.opts.max_retry_after:
            raise DownloadError(problem, f"{error}, Retry-After {wait:.0f}s: over --max-retry-after "
                                         f"{self.opts.max_retry_after:g}s")
        self.retry_after = wait

    def failed_network(self, e: Exception) -> None:
        self._fail(DownloadError(Problem.NETWORK, f"{self.url}: {type(e).__name__}: {e}"), retryable=True)

    def progressed(self, size: int) -> None:
        """The part now holds `size` bytes: progress, unless it held as much before (a restart from zero)."""
        if size > self.furthest:
            self.furthest = size
            self.failures = 0

    def cut(self, e: Exception) -> None:
        self.cuts += 1
        if self.cuts > MAX_CUTS:
            raise DownloadError(Problem.NETWORK, f"{self.url}: cut {self.cuts} times without finishing: {e}")
        self.failed_network(e)

    def _fail(self, error: DownloadError, retryable: bool) -> None:
        self.last = error
        self.failures += 1
        self.retry_after = None
        if not retryable or self.failures > self.opts.retries:
            raise error

    def wait(self) -> None:
        if self.failures:
            self.sleep(backoff_seconds(self.opts.retry_backoff, self.failures - 1, self.retry_after))


def digest(path: str, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download_file(client: Client, want: Wanted, out: str, bar=None) -> Record:
    """`want` at OUT/path, resumed from OUT/path.part; its checksum verified before it takes its name."""
    dest = os.path.join(out, want.path)
    part = dest + ".part"
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    record = Record(want.source, want.url, want.path)
    algorithm = want.checksum[0] if want.checksum else "sha256"
    _refuse_links(dest, part)
    if os.path.exists(dest):
        record.checksum = {algorithm: digest(dest, algorithm)}
        if not want.checksum or record.checksum[algorithm] == want.checksum[1]:
            record.bytes, record.verified = os.path.getsize(dest), bool(want.checksum)
            if bar is not None:
                bar.update(record.bytes)
            return record
        os.remove(dest)  # a stale file from another run: fetch it again
    fresh_retry = True
    attempt = _Attempt(want.url, client.opts, client.sleep)
    while True:
        offset = os.path.getsize(part) if os.path.exists(part) else 0
        if want.size is not None and offset > want.size:
            os.remove(part)
            offset = 0
        if want.size is None or offset < want.size:
            try:
                _transfer(client, want.url, part, offset, attempt, bar)
            except HTTPError as e:
                attempt.failed_network(e)
                attempt.wait()
                continue
        got = digest(part, algorithm)
        if want.checksum and got != want.checksum[1]:
            os.remove(part)
            if fresh_retry and offset > 0:  # the kept part may have been the bad half: once more from zero
                fresh_retry = False
                continue
            raise DownloadError(Problem.CHECKSUM, f"{want.url}: {algorithm} {got} does not match the published "
                                                  f"{want.checksum[1]}; the file was removed")
        os.replace(part, dest)
        record.bytes = os.path.getsize(dest)
        record.checksum = {algorithm: got}
        record.verified = bool(want.checksum)
        return record


def _transfer(client: Client, url: str, part: str, offset: int, attempt: _Attempt, bar) -> None:
    """Appends the rest of `url` to `part`; returns when the body ended (complete or not: the caller checks)."""
    while True:
        resp, _ = client.open(url, offset)
        try:
            if resp.status == 206:
                start = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                if not start or int(start.group(1)) != offset:
                    raise DownloadError(Problem.HTTP, f"{url}: the server answered a range from "
                                                      f"{resp.headers.get('Content-Range')!r}, not byte {offset}")
                mode = "ab"
            elif resp.status == 200:
                if bar is not None and offset:
                    bar.update(-offset)
                offset, mode = 0, "wb"  # no range support: start over
            elif resp.status == 416:
                return  # nothing after `offset`: the part is whole (or wrong, which the checksum says)
            else:
                attempt.failed_status(resp)
                attempt.wait()
                continue
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            written = 0
            with _open_for_writing(part, append=mode == "ab") as f:
                for block in resp.stream(CHUNK, decode_content=False):
                    f.write(block)
                    written += len(block)
                    if bar is not None:
                        bar.update(len(block))
                    attempt.progressed(offset + written)
            if expected is not None and written < expected:
                raise _Cut(f"{url}: the connection closed after {written:,} of {expected:,} bytes")
            return
        except _Cut as e:
            attempt.cut(e)
            attempt.wait()
            offset = os.path.getsize(part)
        finally:
            resp.release_conn()


def _open_for_writing(path: str, append: bool):
    """`path` opened without following a link planted there: the file is written where it is named, or not at
    all."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        raise DownloadError(Problem.LOCAL, f"{path}: cannot write: "
                                           f"{'a link is in the way' if os.path.islink(path) else e.strerror}") \
            from None
    return os.fdopen(fd, "ab" if append else "wb")


def _refuse_links(*paths: str) -> None:
    for path in paths:
        if os.path.islink(path):
            raise DownloadError(Problem.LOCAL, f"{path}: a link is in the way; wit writes only plain files in --out")


class _Cut(HTTPError):
    """A body that ended before its Content-Length."""


# ---- what to fetch ----------------------------------------------------------------------------------------

_PART = re.compile(r"-pages-articles-multistream(\d*)\.xml(?:-p(\d+)p\d+)?\.bz2$")


def dump_run(client: Client, opts: DownloadOptions) -> tuple[str, dict]:
    """(date, dumpstatus.json) of the chosen run: `--dump-date`, or the newest whose articles job is done."""
    base = f"{opts.site.rstrip('/')}/{opts.wiki}/"
    if opts.dump_date != "latest":
        dates = [opts.dump_date]
    else:
        index = client.text(base) or ""
        dates = sorted(set(re.findall(r'href="(\d{8})/?"', index)), reverse=True)[:MAX_RUNS]  # newest first
        if not dates:
            raise DownloadError(Problem.LISTING, f"{base}: no dump runs listed (no YYYYMMDD/ links)")
    for date in dates:
        raw = client.text(f"{base}{date}/dumpstatus.json", missing_ok=True)
        if raw is None:
            continue
        try:
            status = json.loads(raw)
        except ValueError as e:
            raise DownloadError(Problem.LISTING, f"{base}{date}/dumpstatus.json: not JSON ({e})") from None
        try:
            job = status["jobs"][ARTICLES_JOB]
        except (KeyError, TypeError):
            raise DownloadError(Problem.LISTING, f"{base}{date}/dumpstatus.json: no {ARTICLES_JOB} job in it") \
                from None
        if job.get("status") == "done":
            return date, status
        if opts.dump_date != "latest":
            raise DownloadError(Problem.LISTING, f"{base}{date}: the {ARTICLES_JOB} job is "
                                                 f"{job.get('status')!r}, not done; try another --dump-date")
    raise DownloadError(Problem.LISTING, f"{base}: no run among {', '.join(dates[:5])} has a finished "
                                         f"{ARTICLES_JOB} job")


def _checksums(text: str, url: str) -> dict[str, str]:
    """`digest  name` lines (sha1sum/md5sum output); a name listed twice with two digests is refused."""
    out: dict[str, str] = {}
    for line in text.split("\n"):
        fields = line.split()
        if len(fields) == 2 and re.fullmatch(r"[0-9a-f]{32,64}", fields[0]):
            name = fields[1].lstrip("*")
            if out.get(name, fields[0]) != fields[0]:
                raise DownloadError(Problem.LISTING, f"{url}: lists {name[:200]!r} twice with different "
                                                     f"checksums; neither is trusted")
            out[name] = fields[0]
    return out


def dump_parts(client: Client, opts: DownloadOptions, date: str, status: dict) -> list[Wanted]:
    base = f"{opts.site.rstrip('/')}/{opts.wiki}/{date}/"
    sums_url = f"{base}{opts.wiki}-{date}-sha1sums.txt"
    sums = _checksums(client.text(sums_url, missing_ok=True) or "", sums_url)
    files = status["jobs"][ARTICLES_JOB].get("files", {})
    if not isinstance(files, dict) or len(files) > MAX_FILES:
        raise DownloadError(Problem.LISTING, f"{base}dumpstatus.json: the {ARTICLES_JOB} job's file list is "
                                             f"not a mapping of at most {MAX_FILES:,} files")
    shape = re.compile(re.escape(f"{opts.wiki}-{date}") + r"-pages-articles-multistream\d*\.xml(?:-p\d+p\d+)?\.bz2")
    names = []
    for n in files:
        if _PART.search(n) is None:
            continue  # another job's file (the index parts)
        if not shape.fullmatch(n) or not isinstance(files[n], dict):
            raise DownloadError(Problem.LISTING, f"{base}dumpstatus.json: part name {n[:200]!r} is not a plain "
                                                 f"file name of the shape {opts.wiki}-{date}-pages-articles-"
                                                 f"multistreamN.xml-pNpN.bz2; nothing was written")
        names.append(n)
    names.sort(key=lambda n: (int(_PART.search(n).group(1) or 0), int(_PART.search(n).group(2) or 0)))
    if not names:
        raise DownloadError(Problem.LISTING, f"{base}dumpstatus.json: the {ARTICLES_JOB} job lists no "
                                             f"pages-articles-multistream .xml.bz2 part")
    if opts.parts:
        names = names[:opts.parts]
    wanted = []
    for name in names:
        sha1 = sums.get(name) or files[name].get("sha1")
        if not sha1:
            raise DownloadError(Problem.LISTING, f"{sums_url}: no sha1 published for {name}")
        url = urljoin(opts.site.rstrip("/") + "/", files[name]["url"].lstrip("/")) if files[name].get("url") \
            else base + name
        wanted.append(Wanted("wikipedia", url, f"wikipedia/{name}", files[name].get("size"), ("sha1", sha1)))
    return wanted


def pageview_files(client: Client, opts: DownloadOptions, date: str) -> list[Wanted]:
    """Every hourly file of the `pageview_days` days before `date`, as the month folders list them."""
    end = dt.datetime.strptime(date, "%Y%m%d").date()
    days = [end - dt.timedelta(days=n) for n in range(opts.pageview_days, 0, -1)]
    wanted = []
    for month in sorted({(d.year, d.month) for d in days}):
        base = f"{opts.site.rstrip('/')}/other/pageviews/{month[0]}/{month[0]}-{month[1]:02d}/"
        listed = set(re.findall(r'href="(pageviews-\d{8}-(?:[01]\d|2[0-3])0000\.gz)"', client.text(base) or ""))
        sums = _checksums(client.text(base + "md5sums.txt", missing_ok=True) or "", base + "md5sums.txt")
        for day in (d for d in days if (d.year, d.month) == month):
            names = sorted(n for n in listed if n[10:18] == day.strftime("%Y%m%d"))
            if not names:
                raise DownloadError(Problem.LISTING, f"{base}: no pageview files for {day.isoformat()}")
            for name in names:
                wanted.append(Wanted("pageviews", base + name, f"pageviews/{name}",
                                     checksum=("md5", sums[name]) if name in sums else None))
    return wanted


def unpack_wordnet(tarball: str, folder: str) -> None:
    """The four data files of a WordNet database tarball into `folder`; nothing else is written."""
    os.makedirs(folder, exist_ok=True)
    found = {}
    try:
        with tarfile.open(tarball) as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in WORDNET_FILES and "/dict/" in f"/{member.name}":
                    found[name] = member
                    with tar.extractfile(member) as src, \
                            tempfile.NamedTemporaryFile(dir=folder, delete=False) as dst:
                        shutil.copyfileobj(src, dst)
                    os.replace(dst.name, os.path.join(folder, name))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DownloadError(Problem.CHECKSUM, f"{tarball}: not a readable WordNet tarball: {e}") from None
    missing = [n for n in WORDNET_FILES if n not in found]
    if missing:
        raise DownloadError(Problem.LISTING, f"{tarball}: no dict/{missing[0]} in the tarball")


# ---- the command --------------------------------------------------------------------------------------------

@dataclass
class Manifest:
    """DIR/manifest.json: what `download` fetched into DIR and what failed, rewritten after every file so an
    interrupted download says how far it got; `wit queries build --from DIR` reads its inputs from it."""

    site: str
    wiki: str
    dump_date: str
    pageview_days: int
    files: list[Record] = field(default_factory=list)
    failed: list[Record] = field(default_factory=list)
    wordnet: Optional[str] = None  # the unpacked WordNet dict folder, relative to DIR
    complete: bool = False

    def write(self, out: str) -> None:
        tmp = os.path.join(out, f".{MANIFEST}.tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=1)
            f.write("\n")
        os.replace(tmp, os.path.join(out, MANIFEST))

    @classmethod
    def read(cls, folder: str) -> "Manifest":
        path = os.path.join(folder, MANIFEST)
        try:
            with open(path) as f:
                found = json.load(f)
            manifest = cls(**found)
            manifest.files = [Record(**r) for r in manifest.files]
            manifest.failed = [Record(**r) for r in manifest.failed]
            return manifest
        except FileNotFoundError:
            raise QueryInputError(f"{path}: no manifest; fill the folder with `wit queries download --out "
                                  f"{folder}` first") from None
        except (ValueError, KeyError, TypeError) as e:
            raise QueryInputError(f"{path}: not a download manifest ({e})") from None

    def summary(self) -> str:
        files = self.files
        return (f"{self.wiki} dump of {self.dump_date}: "
                f"{sum(f.source == 'wikipedia' for f in files)} part(s); "
                f"{sum(f.source == 'pageviews' for f in files)} pageview file(s); "
                f"WordNet {'yes' if self.wordnet else 'no'}; "
                f"{sum(f.bytes for f in files) / 2 ** 30:.2f} GiB, "
                f"{sum(f.verified for f in files)} of {len(files)} checked against a published checksum")


def _bar(opts: DownloadOptions, what: str, total: Optional[int]):
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="B", unit_scale=True, unit_divisor=1024,
                disable=None if opts.progress else True)


def download(opts: DownloadOptions, sleep: Callable[[float], None] = time.sleep) -> Manifest:
    """Fetches everything, then raises a DownloadError naming what failed (the rest is kept and listed)."""
    out = os.path.abspath(opts.out)
    os.makedirs(out, exist_ok=True)
    client = Client(opts, sleep)
    date, status = dump_run(client, opts)
    groups = {"wikipedia": dump_parts(client, opts, date, status),
              "pageviews": pageview_files(client, opts, date) if opts.pageview_days else []}
    if opts.wordnet:
        name = opts.wordnet_url.rsplit("/", 1)[-1] or "wordnet.tar.gz"
        groups["wordnet"] = [Wanted("wordnet", opts.wordnet_url, f"wordnet/{name}")]
    manifest = Manifest(opts.site, opts.wiki, date, opts.pageview_days)
    for source, wanted in groups.items():
        sizes = [w.size for w in wanted]
        with _bar(opts, source, sum(sizes) if wanted and None not in sizes else None) as bar:
            for i, want in enumerate(wanted):
                try:
                    record = download_file(client, want, out, bar)
                except DownloadError as e:
                    record = Record(want.source, want.url, want.path, problem=e.problem.value, error=str(e))
                (manifest.failed if record.problem else manifest.files).append(record)
                if None in sizes and bar.n:  # sizes unknown until fetched: extrapolate for the ETA
                    bar.total = int(bar.n / (i + 1) * len(wanted))
                manifest.write(out)
        if source == "wordnet" and not any(f.source == "wordnet" for f in manifest.failed):
            try:
                unpack_wordnet(os.path.join(out, wanted[0].path), os.path.join(out, "wordnet", "dict"))
                manifest.wordnet = "wordnet/dict"
            except DownloadError as e:
                manifest.failed.append(Record("wordnet", wanted[0].url, wanted[0].path, problem=e.problem.value,
                                              error=str(e)))
    manifest.complete = not manifest.failed
    manifest.write(out)
    if manifest.failed:
        first = manifest.failed[0]
        more = f" (and {len(manifest.failed) - 1} more)" if len(manifest.failed) > 1 else ""
        raise DownloadError(Problem(first.problem),
                            f"{first.error}{more}; {len(manifest.files)} file(s) are in place and listed "
                            f"in {os.path.join(out, MANIFEST)}; run the command again to fetch the rest")
    return manifest


@dataclass(frozen=True)
class Downloaded:
    wikipedia: tuple[str, ...]
    pageviews: tuple[str, ...]
    wordnet: Optional[str]


def downloaded_inputs(folder: str) -> Downloaded:
    """The inputs `download` left in `folder`, as its manifest lists them; refused while it is incomplete."""
    path = os.path.join(folder, MANIFEST)
    manifest = Manifest.read(folder)
    if manifest.failed or not manifest.complete:
        raise QueryInputError(f"{path}: the download is incomplete ({len(manifest.failed)} file(s) "
                              f"failed or were not fetched yet); run `wit queries download` again")
    paths = {source: tuple(os.path.join(folder, f.path) for f in manifest.files if f.source == source)
             for source in ("wikipedia", "pageviews")}
    for p in paths["wikipedia"] + paths["pageviews"]:
        if not os.path.exists(p):
            raise QueryInputError(f"{path}: lists {p}, which is not there")
    wordnet = os.path.join(folder, manifest.wordnet) if manifest.wordnet else None
    return Downloaded(paths["wikipedia"], paths["pageviews"], wordnet)
