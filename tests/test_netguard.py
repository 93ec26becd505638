"""The network guard against IANA's special-purpose registries (every range refused, public addresses not), and
the sockets and deadlines of the connections it makes."""

import ipaddress
import socket
import time

import pytest

from wit.net.netguard import SPECIAL_PURPOSE, NetworkPolicy, _Watchdog, pool_manager, refusal
from wit.net.responses import get, read_body


def _inside(net: str) -> list[str]:
    n = ipaddress.ip_network(net)
    return [str(n.network_address), str(n.network_address + n.num_addresses // 2), str(n.broadcast_address)]


@pytest.mark.parametrize("net, name", SPECIAL_PURPOSE)
def test_every_special_purpose_range_is_refused(net, name):
    for ip in _inside(net):
        addr = ipaddress.ip_address(ip)
        names = [n for r, n in SPECIAL_PURPOSE if ipaddress.ip_network(r).version == addr.version
                 and addr in ipaddress.ip_network(r)]  # nested ranges: the first listed names it
        why = refusal(ip)
        assert why is not None and (why.startswith("IPv6-embedded") or any(why.startswith(n) for n in names)), \
            (ip, why)


@pytest.mark.parametrize("ip, why", [
    ("fec0::1", "site-local (deprecated) address fec0::1"),
    ("fec0:1:2:3::4", "site-local (deprecated)"),
    ("64:ff9b::a9fe:a9fe", "IPv6-embedded link-local address 169.254.169.254"),  # NAT64 to the metadata service
    ("::ffff:127.0.0.1", "IPv6-embedded loopback"),
    ("2002:c0a8:0101::1", "IPv6-embedded private address 192.168.1.1"),  # 6to4
    ("::127.0.0.1", "IPv4-compatible"),
    ("::ffff:0:7f00:1", "IPv4-translated"),
    ("::ffff:0:808:808", "IPv4-translated"),  # even a public IPv4 address: the path decides where it goes
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("fe80::1%eth0", "link-local"),
])
def test_embedded_and_deprecated_forms(ip, why):
    assert why in (refusal(ip) or ""), ip


@pytest.mark.parametrize("ip", ["8.8.8.8", "93.184.216.34", "1.1.1.1", "192.0.3.1", "100.128.0.1",
                                "2606:4700::1111", "2a00:1450:4001:80b::200e", "64:ff9b::808:808"])
def test_public_addresses_pass(ip):
    assert refusal(ip) is None


def test_a_kept_alive_exchange_makes_no_socket_timeout_call(web_server, monkeypatch):
    """settimeout is a system call, and each hands the fetching process's GIL to another of its threads; the
    watchdog bounds a kept-alive exchange, so its socket stays blocking."""
    web, server = web_server
    pool = pool_manager(NetworkPolicy(allow_private=True), 1)
    urls = [r.url for r in web.rows(server.base_url) if r.fault == "ok"][:4]

    def fetched(url: str) -> bytes:
        with get(pool, url, {}, 10.0, time.monotonic() + 10.0) as resp:
            body, cut = read_body(resp, 1 << 24, time.monotonic() + 10.0)
        assert resp.status == 200 and cut is None
        return body

    assert fetched(urls[0])  # opens the connection
    calls = []
    settimeout = socket.socket.settimeout
    monkeypatch.setattr(socket.socket, "settimeout", lambda s, value: calls.append(value) or settimeout(s, value))
    assert all(fetched(url) for url in urls[1:])
    assert calls == []


def test_deadlines_due_within_the_slack_are_met_in_one_wake():
    class Conn:  # what the watchdog touches of a connection: its socket's shutdown
        def __init__(self) -> None:
            self.sock, self.shut = self, None

        def shutdown(self, how) -> None:
            self.shut = time.monotonic()

    dog = _Watchdog()
    waits = []
    wait = dog._cond.wait
    dog._cond.wait = lambda timeout=None: waits.append(timeout) or wait(timeout)
    start = time.monotonic()
    due = [start + 0.3 + i * 0.002 for i in range(20)]
    conns = [Conn() for _ in due]
    for conn, when in zip(conns, due):
        dog.watch(conn, when)
    time.sleep(0.3 + _Watchdog.SLACK + 0.5)
    assert all(c.shut is not None and when <= c.shut for c, when in zip(conns, due))
    assert len(waits) <= 4  # one wake for all twenty, not one each
