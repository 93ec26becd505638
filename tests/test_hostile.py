"""The fetcher against a hostile web on loopback: every case ends as a status in the shard's parquet,
no worker hangs, and the well-behaved samples beside them all arrive."""

from __future__ import annotations

import datetime
import io
import ssl
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from pipelines.download import download_shard
from pipelines.fetch import FetchOptions, fetch
from pipelines.resize import ResizeOptions
from wit.net import robots
from wit.core import shardformat as shards
from wit.net.netguard import NetworkPolicy, refusal, resolve_allowed
from wit.core.errors import ErrorKind as K


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


def _png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A few hundred bytes announcing 2.5 gigapixels: refused before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)  # the decoder would inflate far more; we never let it
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


JPEG = _jpeg()


class Internal(ThreadingHTTPServer):
    """Stands for an intranet service or a metadata endpoint: nothing may reach it."""

    daemon_threads = True

    def __init__(self):
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits += 1
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"secret")

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


class Hostile(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, internal_port: int, robots_status: int = 200):
        self.counts: dict[str, int] = {}
        self.arrivals: list[float] = []
        self.connections = 0
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send(self, code=200, body=b"", ctype="image/jpeg", headers=()):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def redirect(self, to):
                self.send(302, b"", "text/plain", [("Location", to)])

            def do_GET(self):
                path = self.path
                with server.lock:
                    server.counts[path] = server.counts.get(path, 0) + 1
                    server.arrivals.append(time.monotonic())
                    seen = server.counts[path]
                internal = f"127.0.0.1:{internal_port}"
                try:
                    if path == "/robots.txt" and robots_status == 0:  # 0: drip it, like /drip.jpg
                        path = "/drip.jpg"
                    if path == "/robots.txt":
                        self.send(robots_status, b"User-agent: *\nDisallow: /private/\n", "text/plain")
                    elif path.startswith("/ok/") or path.startswith("/private/"):
                        self.send(body=JPEG)
                    elif path == "/drip.jpg":
                        self.send_response(200)
                        self.send_header("Content-Type", "image/jpeg")
                        self.send_header("Content-Length", "100000")
                        self.end_headers()
                        for _ in range(1000):  # one byte every 50 ms: each read is quick, the whole is not
                            if server.stop.is_set():
                                return
                            self.wfile.write(b"\xff")
                            self.wfile.flush()
                            time.sleep(0.05)
                    elif path in ("/drip-status.jpg", "/drip-headers.jpg", "/continue-forever.jpg"):
                        # the exchange before the body, dripped: each read is quick, the whole never ends
                        head = {"/drip-status.jpg": b"HTTP/1.1 200 OK\r\n" * 100,
                                "/drip-headers.jpg": b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Pad: "
                                                     + b"a" * 2000,
                                "/continue-forever.jpg": b"HTTP/1.1 100 Continue\r\n\r\n" * 1000}[path]
                        step = 1 if path != "/continue-forever.jpg" else 25
                        for i in range(0, len(head), step):
                            if server.stop.is_set():
                                return
                            self.wfile.write(head[i:i + step])
                            self.wfile.flush()
                            time.sleep(0.05)
                    elif path.startswith("/slow/"):
                        time.sleep(0.2)
                        self.send(body=JPEG)
                    elif path == "/endless.jpg":
                        self.send_response(200)
                        self.send_header("Content-Type", "image/jpeg")
                        self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        block = b"\xff" * 65536
                        while not server.stop.is_set():
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                    elif path == "/huge.jpg":
                        self.send_response(200)
                        self.send_header("Content-Type", "image/jpeg")
                        self.send_header("Content-Length", str(10 * 1024 ** 3))
                        self.end_headers()
                        self.wfile.write(JPEG)
                    elif path == "/bomb.png":
                        self.send(body=_png_bomb(), ctype="image/png")
                    elif path == "/html-as-jpeg.jpg":
                        self.send(body=b"<html><body>not an image</body></html>")
                    elif path == "/svg.svg":
                        self.send(body=b"<svg xmlns='http://www.w3.org/2000/svg'/>", ctype="image/svg+xml")
                    elif path == "/page.html":
                        self.send(body=b"<html></html>", ctype="text/html")
                    elif path == "/to-loopback":
                        self.redirect(f"http://{internal}/latest")
                    elif path == "/to-localhost":
                        self.redirect(f"http://localhost:{internal_port}/x")
                    elif path == "/to-mapped":
                        self.redirect(f"http://[::ffff:127.0.0.1]:{internal_port}/x")
                    elif path == "/to-decimal":
                        self.redirect(f"http://2130706433:{internal_port}/x")
                    elif path == "/to-metadata":
                        self.redirect("http://169.254.169.254/latest/meta-data/")
                    elif path == "/to-ftp":
                        self.redirect("ftp://example.com/x.jpg")
                    elif path == "/loop":
                        self.redirect("/loop")
                    elif path == "/429-then-ok.jpg":
                        if seen == 1:
                            self.send(429, b"", "text/plain", [("Retry-After", "1")])
                        else:
                            self.send(body=JPEG)
                    elif path == "/429-forever.jpg":
                        self.send(429, b"", "text/plain", [("Retry-After", "3600")])
                    elif path.startswith("/busy/"):
                        with server.lock:
                            server.in_flight += 1
                            server.max_in_flight = max(server.max_in_flight, server.in_flight)
                        time.sleep(0.2)
                        with server.lock:
                            server.in_flight -= 1
                        self.send(body=JPEG)
                    else:
                        self.send(404, b"", "text/plain")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        super().__init__(("127.0.0.1", 0), Handler)

    def process_request(self, request, client_address):
        with self.lock:
            self.connections += 1
        super().process_request(request, client_address)


@pytest.fixture(scope="module")
def servers():
    internal = Internal()
    hostile = Hostile(internal.server_address[1])
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (internal, hostile)]
    for t in threads:
        t.start()
    yield hostile, internal
    hostile.stop.set()
    for s in (hostile, internal):
        s.shutdown()
        s.server_close()


def _opts(hostile: Hostile, **kw) -> FetchOptions:
    """Private networks refused, except the hostile server itself (standing for a public host)."""
    base = dict(timeout=1.0, retries=1, retry_backoff=0.01, max_bytes=1024 * 1024,
                allowed_addresses=(("127.0.0.1", hostile.server_address[1]),))
    base.update(kw)
    return FetchOptions(**base)


# (path, expected status in the parquet, error kind, start of the error message)
CASES = [
    ("/drip.jpg", "failed_to_download", K.TIMEOUT, "timeout"),
    ("/endless.jpg", "failed_to_download", K.TOO_LARGE, "body over 1048576 bytes"),
    ("/huge.jpg", "failed_to_download", K.TOO_LARGE, "content-length 10737418240 over"),
    ("/bomb.png", "failed_to_resize", K.TOO_LARGE, "image over the cap of 89478485 pixels (decompression bomb)"),
    ("/html-as-jpeg.jpg", "failed_to_resize", K.NOT_AN_IMAGE, "not a JPEG/PNG/WebP/GIF image: magic bytes"),
    ("/svg.svg", "failed_to_resize", K.NOT_AN_IMAGE, "not a JPEG/PNG/WebP/GIF image: magic bytes"),
    ("/page.html", "failed_to_download", K.NOT_AN_IMAGE, "content-type text/html is not an image"),
    ("/to-loopback", "failed_to_download", K.BLOCKED_NETWORK, "blocked: 127.0.0.1 resolves to a loopback address"),
    ("/to-localhost", "failed_to_download", K.BLOCKED_NETWORK, "blocked: localhost resolves to a loopback address"),
    ("/to-mapped", "failed_to_download", K.BLOCKED_NETWORK,
     "blocked: ::ffff:127.0.0.1 resolves to a IPv6-embedded loopback"),
    ("/to-decimal", "failed_to_download", K.BLOCKED_NETWORK, "blocked: 2130706433 resolves to a loopback address"),
    ("/to-metadata", "failed_to_download", K.BLOCKED_NETWORK,
     "blocked: 169.254.169.254 resolves to a link-local address"),
    ("/to-ftp", "failed_to_download", K.INVALID_URL, "unsupported scheme 'ftp'"),
    ("/loop", "failed_to_download", K.REDIRECTS, "more than 5 redirects"),
    ("/429-forever.jpg", "failed_to_download", K.RATE_LIMITED, "http 429"),
    ("/private/a.jpg", "opted_out", K.ROBOTS_TXT, "robots.txt disallows /private/a.jpg"),
    ("/nothing-here.jpg", "failed_to_download", K.HTTP, "http 404"),
]


def test_every_hostile_case_ends_as_a_status_and_the_good_samples_survive(servers, tmp_path):
    hostile, internal = servers
    robots.cache.clear()
    base = f"http://127.0.0.1:{hostile.server_address[1]}"
    urls = [base + path for path, *_ in CASES] + [f"{base}/ok/{i}.jpg" for i in range(6)]
    samples = [shards.Sample(key=shards.key_for(0, i, len(urls)), uid=f"u{i}", url=u, caption="c")
               for i, u in enumerate(urls)]
    started = time.monotonic()
    results = download_shard(samples, _opts(hostile), ResizeOptions(image_size=32), threads=16)
    elapsed = time.monotonic() - started
    assert elapsed < 20, f"a worker hung: {elapsed:.1f}s"  # every request has a 1 s deadline (+1 retry)
    shards.write_shard(str(tmp_path), 0, results)
    rows = {s.url: s for s in shards.read_samples(shards.paths(str(tmp_path), 0).parquet)}
    for path, status, kind, message in CASES:
        row = rows[base + path]
        assert row.status == status and row.error_kind is kind, (path, row)
        assert (row.error_message or "").startswith(message), (path, row)
    for i in range(6):
        assert rows[f"{base}/ok/{i}.jpg"].status == "success"
    assert internal.hits == 0  # no redirect ever reached the internal service


def test_retry_after_is_honoured(servers):
    hostile, _ = servers
    base = f"http://127.0.0.1:{hostile.server_address[1]}"
    started = time.monotonic()
    got = fetch(f"{base}/429-then-ok.jpg", _opts(hostile, retries=2, robots_txt=False))
    assert got.ok and got.attempts == 2
    assert time.monotonic() - started >= 1.0  # waited the server's Retry-After, not the 10 ms backoff
    refused = fetch(f"{base}/429-forever.jpg", _opts(hostile, robots_txt=False))
    assert refused.kind is K.RATE_LIMITED and "Retry-After 3600s is over 30s" in refused.error
    assert refused.attempts == 1


def test_per_host_concurrency_is_capped(servers):
    from concurrent.futures import ThreadPoolExecutor

    hostile, _ = servers
    base = f"http://127.0.0.1:{hostile.server_address[1]}"
    opts = _opts(hostile, max_per_host=3, robots_txt=False)
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: fetch(f"{base}/busy/{i}.jpg", opts), range(12)))
    assert all(r.ok for r in results)
    assert hostile.max_in_flight == 3


def test_the_guard_refuses_private_addresses_directly():
    for ip, word in [("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.1", "private"),
                     ("169.254.169.254", "link-local"), ("::1", "loopback"), ("fe80::1", "link-local"),
                     ("::ffff:10.0.0.1", "IPv6-embedded private"), ("0.0.0.0", "this-network"),
                     ("224.0.0.1", "multicast"), ("100.64.0.1", "shared")]:
        assert word in (refusal(ip) or ""), ip
    assert refusal("93.184.216.34") is None and refusal("2606:4700::1111") is None
    with pytest.raises(OSError, match="blocked: localhost"):
        resolve_allowed("localhost", 80, NetworkPolicy())
    assert resolve_allowed("127.0.0.1", 80, NetworkPolicy(allow_private=True))


def test_direct_private_urls_are_refused_unless_allowed(servers):
    hostile, internal = servers
    url = f"http://127.0.0.1:{internal.server_address[1]}/latest"
    refused = fetch(url, FetchOptions(timeout=1, retries=0))
    assert refused.kind is K.BLOCKED_NETWORK and refused.error.startswith("blocked: 127.0.0.1")
    assert internal.hits == 0
    allowed = fetch(url, FetchOptions(timeout=1, retries=0, allow_private_networks=True, robots_txt=False))
    assert allowed.ok and allowed.data == b"secret"
    assert internal.hits == 1


def _self_signed(tmp_path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_errors_are_a_status_not_a_crash(tmp_path):
    hostile = Hostile(9)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_self_signed(tmp_path))
    hostile.socket = context.wrap_socket(hostile.socket, server_side=True)
    thread = threading.Thread(target=hostile.serve_forever, daemon=True)
    thread.start()
    try:
        port = hostile.server_address[1]
        got = fetch(f"https://127.0.0.1:{port}/ok/1.jpg", _opts(hostile, robots_txt=False))
        assert got.kind is K.TLS and got.error.startswith("tls error") and "CERTIFICATE_VERIFY_FAILED" in got.error
        plain = fetch(f"http://127.0.0.1:{port}/ok/1.jpg", _opts(hostile, robots_txt=False))  # http to a TLS port
        assert plain.kind is K.CONNECTION and plain.error.startswith("connection error")
    finally:
        hostile.shutdown()
        hostile.server_close()


@pytest.mark.parametrize("status,expected", [(404, (None, None)),
                                             (503, (K.ROBOTS_UNREACHABLE, "robots.txt unreachable: http 503"))])
def test_robots_txt_answers_follow_rfc_9309(status, expected):
    """4xx: no rules, everything may be fetched; 5xx: the host may not be crawled (and the sample says why)."""
    server = Hostile(9, robots_status=status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        robots.cache.clear()
        got = fetch(f"http://127.0.0.1:{server.server_address[1]}/private/a.jpg", _opts(server))
        assert (got.kind, got.error) == expected
    finally:
        server.shutdown()
        server.server_close()


def test_retry_after_takes_seconds_or_an_http_date():
    from email.utils import format_datetime

    from wit.net.netguard import retry_after_seconds

    assert retry_after_seconds("120") == 120.0
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30)
    assert 25 <= retry_after_seconds(format_datetime(soon, usegmt=True)) <= 31
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_a_dripping_robots_txt_cannot_hold_the_fetch_past_its_deadline():
    server = Hostile(9, robots_status=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        robots.cache.clear()
        started = time.monotonic()
        fetch(f"http://127.0.0.1:{server.server_address[1]}/ok/1.jpg", _opts(server, retries=0))
        assert time.monotonic() - started < 3  # the 1 s deadline, not the 50 s the drip would take
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()


def test_keep_alive_reuses_only_connections_read_to_the_end(servers):
    """A kept-alive connection saves a handshake per image; one left mid-body must never serve the next."""
    hostile, _ = servers
    robots.cache.clear()
    base, opts = f"http://127.0.0.1:{hostile.server_address[1]}", _opts(hostile, retries=0)
    before = hostile.connections
    assert all(fetch(f"{base}/ok/alive{i}.jpg", opts).data == JPEG for i in range(5))
    assert hostile.connections - before <= 1  # robots.txt and five images, one after another, on one connection
    assert fetch(f"{base}/endless.jpg", opts).error.startswith("body over")
    assert fetch(f"{base}/page.html", opts).error.startswith("content-type text/html")  # its body never read
    after = fetch(f"{base}/ok/after.jpg", opts)
    assert after.ok and after.data == JPEG


@pytest.mark.parametrize("path", ["/drip-status.jpg", "/drip-headers.jpg", "/continue-forever.jpg"])
def test_the_deadline_covers_the_status_line_and_headers(servers, path):
    hostile, _ = servers
    robots.cache.clear()
    started = time.monotonic()
    got = fetch(f"http://127.0.0.1:{hostile.server_address[1]}{path}", _opts(hostile, retries=0, timeout=1.0,
                                                                             robots_txt=False))
    assert time.monotonic() - started < 2.5  # the 1 s deadline, not the minute the drip would take
    assert got.kind is K.TIMEOUT and got.error.startswith("timeout"), got


def test_a_bad_port_is_blamed_on_the_url_not_robots_txt(servers):
    hostile, _ = servers
    got = fetch("http://127.0.0.1:99999/a.jpg", _opts(hostile))
    assert got.kind is K.INVALID_URL and got.error == "invalid port '99999' (0-65535)"


def test_a_slow_host_costs_its_own_urls_time_not_the_other_hosts(servers):
    from pipelines.download import download_shard
    from pipelines.resize import ResizeOptions
    from wit.core.shardformat import Sample

    hostile, _ = servers
    other = Hostile(9)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        robots.cache.clear()
        slow = [Sample(f"{i:09d}", f"{i:016x}", f"http://127.0.0.1:{hostile.server_address[1]}/slow/{i}.jpg", "c")
                for i in range(20)]
        fast = [Sample(f"{i:09d}", f"{i:016x}", f"http://localhost:{other.server_address[1]}/ok/{i}.jpg", "c")
                for i in range(20, 28)]
        started = time.monotonic()
        out = download_shard(slow + fast, _opts(hostile, max_per_host=2, robots_txt=False,
                                                allow_private_networks=True), ResizeOptions(image_size=16), threads=8)
        assert [s.status.value for s in out] == ["success"] * 28
        # 20 slow images, 2 at a time, take 2 s; the other host's 8 were all asked for at the start
        assert len(other.arrivals) == 8 and max(other.arrivals) - started < 1.0
        assert time.monotonic() - started > 1.8
    finally:
        other.shutdown()
        other.server_close()
