"""Small inputs in the real formats: a MediaWiki export, pageview dumps, a WordNet 3.0 database."""

from __future__ import annotations

import bz2
from pathlib import Path
from xml.sax.saxutils import escape

EXPORT_HEAD = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" '
               'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="0.10" xml:lang="en">\n'
               '  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <dbname>enwiki</dbname>\n'
               '    <namespaces>\n      <namespace key="0" case="first-letter" />\n'
               '      <namespace key="14" case="first-letter">Category</namespace>\n    </namespaces>\n'
               '  </siteinfo>\n')


def page(title: str, text: str, ns: int = 0, pid: int = 1, redirect: str | None = None) -> str:
    red = f'    <redirect title="{escape(redirect)}" />\n' if redirect else ""
    return (f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>{pid}</id>\n{red}"
            f"    <revision>\n      <id>{pid * 10}</id>\n      <timestamp>2024-01-01T00:00:00Z</timestamp>\n"
            f"      <contributor><username>Bot</username><id>1</id></contributor>\n"
            f'      <model>wikitext</model>\n      <format>text/x-wiki</format>\n'
            f'      <text bytes="{len(text)}" xml:space="preserve">{escape(text)}</text>\n'
            f"    </revision>\n  </page>\n")


def write_dump(path: Path, pages: list[str], compress: bool = True) -> Path:
    xml = EXPORT_HEAD + "".join(pages) + "</mediawiki>\n"
    if compress:
        path.write_bytes(bz2.compress(xml.encode()))
    else:
        path.write_text(xml)
    return path


ARTICLE = (
    "'''New York''' is a city. {{Infobox city|name=New York}} The [[ice cream|ice cream]] "
    "in [[New York]] is famous.<ref>A source</ref>\n"
    "Ice cream and hot dogs. New York has ice cream. The city has a park.\n"
    "== History ==\nThe city of New York grew. Ice cream came later. Zebra crossing.\n"
)


def standard_dump(path: Path, copies: int = 30) -> Path:
    pages = [page(f"Article {i}", ARTICLE, pid=i + 1) for i in range(copies)]
    pages.append(page("Category:Cities", "[[Category:Cities]] city city city city", ns=14, pid=900))
    pages.append(page("NYC", "#REDIRECT [[New York]]", pid=901, redirect="New York"))
    return write_dump(path, pages)


def write_pageviews(directory: Path) -> list[Path]:
    files = []
    hours = [
        ["en New_York 600 0", "en Ice_cream 300 0", "en Category:Cities 5000 0", "en Talk:New_York 900 0",
         "de New_York 9999 0", "en Star_Wars:_Episode_IV 700 0", "en.m Ice_cream 250 0", "en Obscure_page 3 0",
         "en Hot%20dog 1200 0", "garbage line", "en Bad_count x 0"],
        ["en New_York 500 0", "en Ice_cream 100 0", "en Zebra 50 0"],
    ]
    for i, lines in enumerate(hours):
        p = directory / f"pageviews-20240101-0{i}0000"
        p.write_text("\n".join(lines) + "\n")
        files.append(p)
    return files


WORDNET_HEADER = "  1 This software and database is being provided to you, the LICENSEE, by\n  2 Princeton University\n"


def write_wordnet(directory: Path, skip: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        "data.noun": ["00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived",
                      "07609840 13 n 02 ice_cream 0 icecream 0 001 @ 07609660 n 0000 | frozen dessert",
                      "02391049 05 n 01 zebra 0 001 @ 02390101 n 0000 | striped equine",
                      "08679972 15 n 02 city 0 metropolis 0 000 | a large town",
                      "09119277 15 n 01 New_York 0 000 | the largest city"],
        "data.verb": ["01835496 38 v 02 swim 0 float 0 000 01 + 08 00 | travel through water"],
        "data.adj": ["00001740 00 a 01 able(a) 0 000 | having the necessary means"],
        "data.adv": ["00001740 02 r 01 quickly 0 000 | with speed"],
    }
    for name, lines in data.items():
        if name != skip:
            (directory / name).write_text(WORDNET_HEADER + "\n".join(lines) + "\n")
    return directory


class DumpSite:
    """The Wikimedia dump site's layout on 127.0.0.1, with Range support, a request log and faults.

    `files` maps a URL path to its bytes; `cut` holds paths whose next answer stops halfway (once each);
    `corrupt` paths are served with a byte flipped; `robots` is the robots.txt body; `redirects` maps a path
    to where a 301 sends it; `refuse` maps a path to the (status, headers) of its next answer (once each).
    """

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.corrupt: set[str] = set()
        self.robots = "User-agent: *\nAllow: /\n"
        self.redirects: dict[str, str] = {}
        self.refuse: dict[str, tuple[int, dict[str, str]]] = {}
        self.headers: dict[str, dict[str, str]] = {}  # extra headers of a path's answers
        self.restart: set[str] = set()  # paths answered whole (no Range) and cut halfway, every time
        self.log: list[tuple[str, str | None]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                site.log.append((path, self.headers.get("Range")))
                if path in site.redirects or path in site.refuse:
                    status, headers = site.refuse.pop(path, None) or (301, {"Location": site.redirects[path]})
                    self.send_response(status)
                    for name, value in {"Content-Length": "0", **headers}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    return
                if path == "/robots.txt":
                    body = site.robots.encode()
                elif path in site.files:
                    body = site.files[path]
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path in site.corrupt:
                    body = body[:-1] + bytes([body[-1] ^ 1])
                start = 0
                rng = None if path in site.restart else self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[6:-1])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                for name, value in site.headers.get(path, {}).items():
                    self.send_header(name, value)
                self.end_headers()
                rest = body[start:]
                if path in site.restart:
                    self.wfile.write(rest[: len(rest) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if path in site.cut:
                    site.cut.discard(path)
                    self.wfile.write(rest[: len(rest) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(rest)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests_for(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.log if p == path]


def publish_dump(site: DumpSite, wiki: str, date: str, parts: list[bytes], status: str = "done") -> list[str]:
    """A dump run as the site lays it out: the parts, dumpstatus.json, the sha1sums file and the index."""
    import hashlib
    import json

    names, files = [], {}
    first = 1
    for i, data in enumerate(parts, 1):
        name = f"{wiki}-{date}-pages-articles-multistream{i}.xml-p{first}p{first + 99}.bz2"
        first += 100
        site.files[f"/{wiki}/{date}/{name}"] = data
        names.append(name)
        files[name] = {"size": len(data), "url": f"/{wiki}/{date}/{name}",
                       "sha1": hashlib.sha1(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}
        index = f"{wiki}-{date}-pages-articles-multistream-index{i}.txt-p1p100.bz2"
        files[index] = {"size": 3, "url": f"/{wiki}/{date}/{index}"}
        site.files[f"/{wiki}/{date}/{index}"] = b"idx"
    site.files[f"/{wiki}/{date}/dumpstatus.json"] = json.dumps(
        {"jobs": {"articlesmultistreamdump": {"status": status, "updated": "2026-11-02 10:00:00", "files": files},
                  "xmlstubsdump": {"status": "done", "files": {}}}, "version": "0.8"}).encode()
    site.files[f"/{wiki}/{date}/{wiki}-{date}-sha1sums.txt"] = "".join(
        f"{hashlib.sha1(site.files[f'/{wiki}/{date}/{n}']).hexdigest()}  {n}\n" for n in names).encode()
    dates = sorted({p.split("/")[2] for p in site.files if p.startswith(f"/{wiki}/")})
    site.files[f"/{wiki}/"] = ("<html><body><a href=\"../\">../</a>\n" + "".join(
        f'<a href="{d}/">{d}/</a>\n' for d in dates) + "</body></html>").encode()
    return names


def publish_pageviews(site: DumpSite, days: list[str], lines: list[str], with_md5: bool = True) -> list[str]:
    """Hourly pageview files (two hours a day here) in month folders with an index and md5sums.txt."""
    import gzip
    import hashlib

    names = []
    for day in days:
        for hour in ("000000", "010000"):
            name = f"pageviews-{day}-{hour}.gz"
            month = f"/other/pageviews/{day[:4]}/{day[:4]}-{day[4:6]}/"
            site.files[month + name] = gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)
            names.append(month + name)
    for month in {n.rsplit("/", 1)[0] + "/" for n in names}:
        inside = sorted(p for p in site.files if p.startswith(month) and p.endswith(".gz"))
        site.files[month] = "".join(f'<a href="{p.rsplit("/", 1)[1]}">{p.rsplit("/", 1)[1]}</a>\n'
                                    for p in inside).encode()
        if with_md5:
            site.files[month + "md5sums.txt"] = "".join(
                f"{hashlib.md5(site.files[p]).hexdigest()}  {p.rsplit('/', 1)[1]}\n" for p in inside).encode()
    return names


def wordnet_tarball(directory: Path) -> bytes:
    """WordNet's distribution layout: WordNet-3.0/dict/data.* (and files the builder does not need)."""
    import io
    import tarfile

    write_wordnet(directory / "dict")
    (directory / "dict" / "index.noun").write_text("not needed\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(directory / "dict", arcname="WordNet-3.0/dict")
    return buf.getvalue()
