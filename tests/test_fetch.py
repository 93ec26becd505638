from pipelines.download import download_shard
from pipelines.fetch import FetchOptions, fetch, opt_out_directive
from pipelines.resize import ResizeOptions
from wit.core.shardformat import Sample
from wit.core.errors import ErrorKind

LOCAL = dict(allow_private_networks=True)  # the synthetic web is on 127.0.0.1
FAST = FetchOptions(timeout=0.5, retries=1, retry_backoff=0.01, **LOCAL)


def test_x_robots_tag_directives():
    d = ("noai", "noimageai", "noindex", "noimageindex")
    assert opt_out_directive(["noai, noimageai"], "wit", d) == "noai"
    assert opt_out_directive(["otherbot: noindex"], "wit", d) is None
    assert opt_out_directive(["wit: noimageai"], "wit", d) == "noimageai"
    assert opt_out_directive(["nofollow", "max-image-preview:large"], "wit", d) is None


def test_every_fault_of_the_synthetic_web_ends_as_a_status(web_server):
    web, server = web_server
    rows = {}
    for r in web.rows(server.base_url):
        rows.setdefault(r.fault, r)
    samples = [Sample(key=f, uid=f, url=r.url, caption=r.caption) for f, r in rows.items()]
    got = {s.key: s for s in download_shard(samples, FAST, ResizeOptions(image_size=64), threads=8)}
    expected = {
        "ok": "success", "mirror": "success", "variant": "success", "dup_url": "success", "no_match": "success",
        "redirect": "success", "http_404": "failed_to_download", "http_500": "failed_to_download",
        "slow": "failed_to_download", "truncated": "failed_to_resize", "noai": "opted_out",
    }
    for fault, status in expected.items():
        assert got[fault].status == status, (fault, got[fault])
    assert got["http_404"].error_message.startswith("http 404") and got["http_404"].http_status == 404
    assert got["slow"].error_message.startswith("timeout")
    assert got["noai"].error_message == "X-Robots-Tag: noai" and got["noai"].error_kind is ErrorKind.X_ROBOTS_TAG
    assert got["http_404"].error_kind is ErrorKind.HTTP and got["slow"].error_kind is ErrorKind.TIMEOUT
    assert got["truncated"].error_kind is ErrorKind.DECODE and got["ok"].error_kind is None
    assert got["html"].status in ("failed_to_download", "failed_to_resize")
    ok = got["ok"]
    assert ok.jpg and ok.sha256 and len(ok.phash) == 16 and max(ok.width, ok.height) == 64


def test_html_labelled_or_disguised_is_never_an_image(web_server):
    _, server = web_server
    labelled = fetch(f"{server.base_url}/html/1.jpg", FAST)
    assert labelled.kind is ErrorKind.NOT_AN_IMAGE and "text/html" in labelled.error
    disguised = download_shard([Sample(key="k", uid="u", url=f"{server.base_url}/html/2.jpg", caption="c")],
                               FAST, ResizeOptions())[0]
    assert disguised.status == "failed_to_resize" and "not a JPEG" in disguised.error_message
    assert disguised.error_kind is ErrorKind.NOT_AN_IMAGE


def test_server_errors_are_retried_then_reported(web_server):
    _, server = web_server
    got = fetch(f"{server.base_url}/error/3.jpg", FetchOptions(timeout=1, retries=2, retry_backoff=0.01, **LOCAL))
    assert got.kind is ErrorKind.HTTP and got.http_status == 500 and got.attempts == 3
    missing = fetch(f"{server.base_url}/missing/3.jpg", FetchOptions(retries=2, retry_backoff=0.01, **LOCAL))
    assert missing.attempts == 1  # a 404 is not worth retrying


def test_unreachable_host_and_redirect_limit(web_server):
    _, server = web_server
    closed = fetch("http://127.0.0.1:9/x.jpg", FetchOptions(timeout=0.5, retries=0, **LOCAL))
    assert closed.kind is ErrorKind.CONNECTION and closed.error.startswith("connection error")
    redirected = fetch(f"{server.base_url}/redirect/5.jpg", FetchOptions(max_redirects=0, **LOCAL))
    assert redirected.kind is ErrorKind.REDIRECTS and "redirects" in redirected.error
    assert all(fetch(f"{server.base_url}/redirect/{i}.jpg", FAST).ok for i in range(3))


def test_malformed_urls_are_a_status_and_cost_the_shard_nothing(web_server):
    _, server = web_server
    bad = ["http://[::1/x.jpg", "http://a..b/x.jpg", "http://exa mple.com/x.jpg", "http://example.com:99999/x.jpg"]
    urls = bad + [f"{server.base_url}/img/1.jpg"]
    samples = [Sample(key=str(i), uid=str(i), url=u, caption="c") for i, u in enumerate(urls)]
    got = download_shard(samples, FAST, ResizeOptions(image_size=32), threads=4)
    for s in got[:-1]:
        assert s.status == "failed_to_download" and s.error_kind is ErrorKind.INVALID_URL, s
        assert s.error_message.startswith(("invalid URL", "invalid port '99999'")), s
    assert got[-1].status == "success"


def test_host_limits_are_one_count_for_the_scheduler_and_fetch():
    import threading

    from pipelines.fetch import HostLimits

    limits, freed = HostLimits(), []

    class Listener:
        def heard(self, host):
            freed.append(host)

    listener = Listener()
    limits.on_free(listener.heard)
    assert limits.try_take("a.test", 2) and limits.try_take("a.test", 2) and not limits.try_take("a.test", 2)
    with limits.holds("a.test"), limits.slot("a.test", 2):  # the holder's own fetch takes no second slot
        assert limits.busy("a.test") == 2
    entered, kept = threading.Event(), []

    def wait_for_a_slot():
        kept.append(limits.slot("a.test", 2))  # kept: a collected context manager would give its slot back
        kept[0].__enter__()
        entered.set()

    waiter = threading.Thread(target=wait_for_a_slot)
    waiter.start()
    assert not entered.wait(0.2)  # a fetch on its own waits while the scheduler holds both slots
    limits.give("a.test")
    assert entered.wait(5) and freed == ["a.test"] and limits.busy("a.test") == 2
    waiter.join()
    del listener  # held weakly: a dropped downloader is not called
    limits.give("a.test")
    kept[0].__exit__(None, None, None)  # the waiting fetch ends and gives its slot back
    assert freed == ["a.test"] and limits.busy("a.test") == 0 and not limits._busy
