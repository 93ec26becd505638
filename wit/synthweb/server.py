"""The synthetic web's HTTP server: real sockets on 127.0.0.1, the real web's faults.

    /img/ID.EXT            the drawing (jpg, png or webp)
    /mirror/ID/N.EXT       byte-identical copy of /img/ID.EXT at another URL
    /variant/ID/N.jpg      resized, re-encoded copy (a near duplicate)
    /missing/N.jpg         404
    /error/N.jpg           500 (every time, so retries also fail)
    /slow/ID.jpg           the image after `slow_seconds`
    /truncated/N.jpg       the first half of a JPEG, with a matching Content-Length
    /html/N.jpg            an HTML page (odd N: labelled text/html; even N: labelled image/jpeg)
    /redirect/ID.jpg       302 to /img/ID.jpg
    /noai/ID.jpg           the image with `X-Robots-Tag: noai`
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Sequence

from wit.core import fileio
from wit.core.options import Options, option
from wit.synthweb.site import SyntheticWeb

_ROUTE = re.compile(r"^/(\w+)/(?:(\d+)/)?(\d+)\.(jpg|png|webp)$")
_CTYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - quiet: the job records every outcome
        pass

    def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):  # noqa: N802
        self.do_GET()

    def do_GET(self):  # noqa: N802
        web = self.server.web
        m = _ROUTE.match(self.path.split("?", 1)[0])
        if not m:
            return self._send(404, b"not found", "text/plain")
        kind, first, second, ext = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        if kind == "img":
            return self._send(200, web.image_bytes(second, ext), _CTYPES[ext])
        if kind == "mirror" and first is not None:
            return self._send(200, web.image_bytes(int(first), ext), _CTYPES[ext])
        if kind == "variant" and first is not None:
            return self._send(200, web.variant_bytes(int(first), second), "image/jpeg")
        if kind == "missing":
            return self._send(404, b"<html><body>Not Found</body></html>", "text/html")
        if kind == "error":
            return self._send(500, b"<html><body>Internal Server Error</body></html>", "text/html")
        if kind == "slow":
            time.sleep(self.server.slow_seconds)
            return self._send(200, web.image_bytes(second), "image/jpeg")
        if kind == "truncated":
            data = web.image_bytes(second)
            return self._send(200, data[: len(data) // 2], "image/jpeg")
        if kind == "html":
            page = f"<!doctype html><html><head><title>Photo {second}</title></head><body>hi</body></html>"
            return self._send(200, page.encode(), "text/html; charset=utf-8" if second % 2 else "image/jpeg")
        if kind == "redirect":
            return self._send(302, b"", "text/plain", {"Location": f"/img/{second}.jpg"})
        if kind == "noai":
            return self._send(200, web.image_bytes(second), "image/jpeg", {"X-Robots-Tag": "noai, noimageai"})
        return self._send(404, b"not found", "text/plain")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, web: SyntheticWeb, slow_seconds: float):
        super().__init__(address, _Handler)
        self.web, self.slow_seconds = web, slow_seconds

    def handle_error(self, request, client_address):
        """Clients that give up (timeouts, closed keep-alives) are part of the game, not errors."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class SyntheticServer:
    """Serves a SyntheticWeb on 127.0.0.1 from a background thread; use as a context manager."""

    def __init__(self, web: SyntheticWeb, host: str = "127.0.0.1", port: int = 0, slow_seconds: float = 3.0):
        self.web = web
        self._server = _Server((host, port), web, slow_seconds)
        self._thread = threading.Thread(target=self._server.serve_forever, name="synthweb", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "SyntheticServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "SyntheticServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class SynthwebOptions(Options):
    out: str = option(help="directory for candidates.parquet and queries.txt")
    count: int = option(3000, help="candidate pairs to generate")
    seed: int = option(0, help="seed of the synthetic web")
    port: int = option(8765, help="port on 127.0.0.1")
    slow_seconds: float = option(3.0, help="how long the deliberately slow URLs take")
    serve_seconds: float = option(-1.0, help="stop after this long (-1: until Ctrl-C; 0: write the files only)")

    def check(self) -> None:
        if self.count < 1:
            self.refuse("count", "must be at least 1")
        if not 0 <= self.port <= 65535:
            self.refuse("port", "must be in 0..65535")


def serve_command(opts: SynthwebOptions, beam_args: Sequence[str] = ()) -> int:
    """`wit synthweb`: write the candidates and queries, then serve the images."""
    web = SyntheticWeb(seed=opts.seed, count=opts.count)
    with SyntheticServer(web, port=opts.port, slow_seconds=opts.slow_seconds) as server:
        rows = web.write_candidates(fileio.join(opts.out, "candidates.parquet"), server.base_url)
        web.write_queries(fileio.join(opts.out, "queries.txt"))
        print(f"wrote {len(rows)} candidates to {opts.out}/candidates.parquet and the queries to "
              f"{opts.out}/queries.txt")
        print(f"serving on {server.base_url} (Ctrl-C to stop)")
        if opts.serve_seconds == 0:
            return 0
        try:
            deadline = time.monotonic() + opts.serve_seconds if opts.serve_seconds > 0 else float("inf")
            while time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    return 0
