"""The caching resolver against a real DNS server on loopback (dnspython answering UDP queries)."""

import socket
import threading
import time

import dns.message
import dns.rcode
import dns.rrset
import pytest

from pipelines.fetch import FetchOptions, fetch
from wit.net import robots
from wit.net.resolver import LookupTimeout, NameNotFound, Resolver
from wit.core.errors import ErrorKind


class DnsServer:
    """Answers A queries from `names` ({name: (address, ttl)}), NXDOMAIN with an SOA otherwise; names under
    `silent.test.` are never answered, names under `slow.test.` after 0.3 s. Counts the questions."""

    def __init__(self, names: dict[str, tuple[str, int]]):
        self.names = names
        self.questions: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            threading.Thread(target=self._answer, args=(wire, peer), daemon=True).start()

    def _answer(self, wire: bytes, peer) -> None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text()
        self.questions.append(f"{name} {dns.rdatatype.to_text(question.rdtype)}")
        if name.endswith("silent.test."):
            return
        if name.endswith("slow.test."):
            time.sleep(0.3)
        response = dns.message.make_response(query)
        key = name.rstrip(".")
        if key in self.names or name.endswith("slow.test."):
            address, ttl = self.names.get(key, ("127.0.0.1", 300))
            if question.rdtype == dns.rdatatype.A:
                response.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", address))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text("test.", 30, "IN", "SOA",
                                                          "ns.test. admin.test. 1 3600 600 86400 20"))
        self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def dns_server():
    server = DnsServer({"short.test": ("127.0.0.1", 1), "long.test": ("127.0.0.1", 600),
                        "public.test": ("93.184.215.14", 600), **{f"h{i}.test": ("127.0.0.1", 600) for i in range(5)}})
    yield server
    server.close()


def test_an_answer_is_kept_for_its_ttl(dns_server):
    r = Resolver([dns_server.address], hosts_file="/nonexistent")
    soon = time.monotonic() + 5
    assert r.lookup("short.test", soon) == ("127.0.0.1",) == r.lookup("SHORT.test.", soon)
    assert r.lookup("long.test", soon) == ("127.0.0.1",)
    assert dns_server.questions == ["short.test. A", "long.test. A"]
    time.sleep(1.1)  # short.test's TTL of 1 s has passed; long.test's 600 s has not
    r.lookup("short.test", time.monotonic() + 5)
    r.lookup("long.test", time.monotonic() + 5)
    assert dns_server.questions == ["short.test. A", "long.test. A", "short.test. A"]


def test_a_missing_name_is_kept_as_missing(dns_server):
    r = Resolver([dns_server.address], hosts_file="/nonexistent")
    for _ in range(3):
        with pytest.raises(NameNotFound, match="no such name"):
            r.lookup("nowhere.test", time.monotonic() + 5)
    assert dns_server.questions == ["nowhere.test. A"]


def test_the_cache_holds_at_most_its_bound_of_names(dns_server):
    r = Resolver([dns_server.address], hosts_file="/nonexistent", max_hosts=2)
    for name in ("h0.test", "h1.test", "h2.test", "h0.test"):
        r.lookup(name, time.monotonic() + 5)
    assert len(r._cache) == 2
    assert dns_server.questions == ["h0.test. A", "h1.test. A", "h2.test. A", "h0.test. A"]  # h0 was evicted


def test_concurrent_lookups_of_one_name_send_one_question(dns_server):
    r = Resolver([dns_server.address], hosts_file="/nonexistent")
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(r.lookup("a.slow.test", time.monotonic() + 5)))
               for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [("127.0.0.1",)] * 20
    assert dns_server.questions == ["a.slow.test. A"]


def test_a_lookup_is_cut_at_the_deadline(dns_server):
    r = Resolver([dns_server.address], hosts_file="/nonexistent")
    started = time.monotonic()
    with pytest.raises(LookupTimeout):
        r.lookup("x.silent.test", started + 0.5)
    assert time.monotonic() - started < 0.9


def test_names_in_the_hosts_file_are_answered_from_it(tmp_path, dns_server):
    hosts = tmp_path / "hosts"
    hosts.write_text("# comment\n10.1.2.3   intranet.test  alias.test\n::1 localhost6\n")
    r = Resolver([dns_server.address], hosts_file=str(hosts))
    assert r.lookup("alias.test", time.monotonic() + 1) == ("10.1.2.3",)
    assert r.lookup("localhost6", time.monotonic() + 1) == ("::1",)
    assert dns_server.questions == []


def test_addresses_written_as_numbers_need_no_lookup(dns_server):
    r = Resolver([dns_server.address], hosts_file="/nonexistent")
    assert r.lookup("2130706433", time.monotonic() + 1) == ("127.0.0.1",)
    assert r.lookup("[::1]", time.monotonic() + 1) == ("::1",)
    with pytest.raises(ValueError, match="invalid host name"):
        r.lookup("a..b", time.monotonic() + 1)
    assert dns_server.questions == []


def test_a_looked_up_address_still_passes_the_network_guard(dns_server, web_server):
    _, server = web_server
    robots.cache.clear()
    port = server.base_url.rsplit(":", 1)[1]
    guarded = FetchOptions(timeout=2, retries=0, robots_txt=False, dns_servers=(dns_server.address,))
    refused = fetch(f"http://long.test:{port}/img/1.jpg", guarded)
    assert refused.kind is ErrorKind.BLOCKED_NETWORK and "long.test resolves to a loopback address" in refused.error
    allowed = fetch(f"http://long.test:{port}/img/1.jpg", FetchOptions(
        timeout=2, retries=0, robots_txt=False, dns_servers=(dns_server.address,), allow_private_networks=True))
    assert allowed.ok and allowed.data


def test_a_slow_name_server_counts_against_the_timeout(dns_server):
    """The lookup is part of the exchange: a name server that never answers costs --timeout per attempt,
    robots.txt included, and the sample fails as a name lookup timeout."""
    robots.cache.clear()
    opts = FetchOptions(timeout=1.0, retries=1, retry_backoff=0.1, dns_servers=(dns_server.address,))
    started = time.monotonic()
    got = fetch("http://img.silent.test/a.jpg", opts)
    assert time.monotonic() - started < 2 * 1.0 + 0.8
    assert got.kind is ErrorKind.DNS_TIMEOUT and got.attempts == 2, got
    assert got.error.startswith("name lookup timeout")
    missing = fetch("http://nowhere.test/a.jpg", opts)
    assert missing.kind is ErrorKind.DNS and missing.attempts == 1, missing
    assert missing.error == "name lookup failed: no address for nowhere.test: no such name (NXDOMAIN)"
