"""`wit queries download` against a loopback site with the dump site's layout, then `queries build --from`."""

import json
import time
from dataclasses import asdict

import pytest

from queries.download import DownloadError, DownloadOptions, Problem, download, downloaded_inputs
from queries.errors import QueryInputError
from tests.queries_fixtures import (ARTICLE, DumpSite, page, publish_dump, publish_pageviews, wordnet_tarball,
                                    write_dump)
from wit.net import robots
from wit.cli import main

VIEWS = ["en New_York 600 0", "en Hot%20dog 700 0", "de New_York 9999 0", "en Category:Cities 5000 0"]


def _part(tmp_path, name, first):
    pages = [page(f"Article {i}", ARTICLE, pid=i + 1) for i in range(first, first + 15)]
    return write_dump(tmp_path / name, pages).read_bytes()


@pytest.fixture
def site(tmp_path):
    s = DumpSite()
    parts = [_part(tmp_path, "a.bz2", 0), _part(tmp_path, "b.bz2", 15)]
    publish_dump(s, "enwiki", "20261101", parts)
    publish_dump(s, "enwiki", "20261120", parts, status="in-progress")  # newer, not finished: skipped
    publish_pageviews(s, ["20261030", "20261031"], VIEWS)
    s.files["/wordnet/WordNet-3.0.tar.gz"] = wordnet_tarball(tmp_path / "wn")
    yield s
    s.close()


def _opts(site, out, **kw):
    kw = {"pageview_days": 2, **kw}
    return DownloadOptions(out=str(out), site=site.url, wordnet_url=site.url + "/wordnet/WordNet-3.0.tar.gz",
                           allow_private_networks=True, progress=False, retry_backoff=0.01, **kw)


def test_download_then_build_from_the_folder(site, tmp_path):
    out = tmp_path / "dl"
    manifest = download(_opts(site, out))
    assert manifest.dump_date == "20261101" and manifest.complete
    parts = sorted(f.path for f in manifest.files if f.source == "wikipedia")
    assert parts == ["wikipedia/enwiki-20261101-pages-articles-multistream1.xml-p1p100.bz2",
                     "wikipedia/enwiki-20261101-pages-articles-multistream2.xml-p101p200.bz2"]  # no index files
    assert all(f.verified for f in manifest.files if f.source != "wordnet")
    assert sum(f.source == "pageviews" for f in manifest.files) == 4
    assert sorted(p.name for p in (out / "wordnet" / "dict").iterdir()) == [
        "data.adj", "data.adv", "data.noun", "data.verb"]
    assert json.loads((out / "manifest.json").read_text()) == asdict(manifest)
    code = main(["queries", "build", "--from", str(out), "--out", str(tmp_path / "q"), "--target", "1000",
                 "--min-word-count", "60", "--min-bigram-count", "60", "--min-pmi", "1.0", "--min-views", "1000"])
    assert code == 0
    rows = dict(line.split("\t")[:2] for line in (tmp_path / "q" / "queries.tsv").read_text().splitlines())
    # two days x two hours of 700 views; WordNet from the download, not the shipped list
    assert rows["Hot dog"] == "title" and rows["ice cream"] == "bigram" and rows["new"] == "word"
    assert rows["swim"] == "wordnet" and "dog" not in rows
    composition = json.loads((tmp_path / "q" / "composition.json").read_text())
    assert composition["inputs"]["from"] == str(out)


def test_a_cut_transfer_resumes_with_a_range_request(site, tmp_path):
    path = "/enwiki/20261101/enwiki-20261101-pages-articles-multistream1.xml-p1p100.bz2"
    site.cut.add(path)
    manifest = download(_opts(site, tmp_path / "dl"))
    assert manifest.complete
    ranges = site.requests_for(path)
    half = (len(site.files[path])) // 2
    assert ranges == [None, f"bytes={half}-"]
    assert (tmp_path / "dl" / "wikipedia" / path.rsplit("/", 1)[1]).read_bytes() == site.files[path]


def test_a_part_left_by_a_killed_run_is_resumed_and_done_files_are_not_fetched_again(site, tmp_path):
    out = tmp_path / "dl"
    download(_opts(site, out))
    path = "/enwiki/20261101/enwiki-20261101-pages-articles-multistream2.xml-p101p200.bz2"
    dest = out / "wikipedia" / path.rsplit("/", 1)[1]
    data = dest.read_bytes()
    assert len(data) > 300
    dest.unlink()
    (out / "wikipedia" / (dest.name + ".part")).write_bytes(data[:300])
    site.log.clear()
    assert download(_opts(site, out)).complete
    assert dest.read_bytes() == data and not (out / "wikipedia" / (dest.name + ".part")).exists()
    fetched = [p for p, _ in site.log if p.endswith(".bz2") or p.endswith(".gz")]
    assert fetched == [path] and site.requests_for(path) == ["bytes=300-"]


def test_a_corrupt_part_is_named_removed_and_refetched_on_the_next_run(site, tmp_path, capsys):
    out = tmp_path / "dl"
    path = "/enwiki/20261101/enwiki-20261101-pages-articles-multistream1.xml-p1p100.bz2"
    site.corrupt.add(path)
    code = main(["queries", "download", "--out", str(out), "--site", site.url, "--pageview-days", "2",
                 "--wordnet-url", site.url + "/wordnet/WordNet-3.0.tar.gz", "--allow-private-networks",
                 "--no-progress", "--retry-backoff", "0.01"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "multistream1.xml-p1p100.bz2: sha1 " in err[0] and "does not match the published" in err[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["problem"] for f in manifest["failed"]] == ["checksum"] and not manifest["complete"]
    assert len(manifest["files"]) == 1 + 4 + 1  # everything else is in place
    assert not (out / "wikipedia" / path.rsplit("/", 1)[1]).exists()
    with pytest.raises(QueryInputError, match="the download is incomplete"):
        downloaded_inputs(str(out))
    site.corrupt.clear()
    site.log.clear()
    assert download(_opts(site, out)).complete
    assert [p for p, _ in site.log if p.endswith((".bz2", ".gz"))] == [path]


def test_pageviews_without_published_md5_are_kept_unverified(tmp_path):
    s = DumpSite()
    try:
        publish_dump(s, "enwiki", "20261101", [_part(tmp_path, "a.bz2", 0)])
        publish_pageviews(s, ["20261031"], VIEWS, with_md5=False)
        manifest = download(_opts(s, tmp_path / "dl", pageview_days=1, wordnet=False))
        views = [f for f in manifest.files if f.source == "pageviews"]
        assert len(views) == 2 and not any(f.verified for f in views) and "sha256" in views[0].checksum
        assert manifest.wordnet is None
    finally:
        s.close()


def test_refusals_name_the_reason(site, tmp_path):
    with pytest.raises(DownloadError, match=r"blocked: 127\.0\.0\.1 resolves to a loopback") as e:
        download(DownloadOptions(out=str(tmp_path / "a"), site=site.url, progress=False, retries=0))
    assert e.value.problem is Problem.NETWORK
    with pytest.raises(DownloadError, match="the articlesmultistreamdump job is 'in-progress', not done"):
        download(_opts(site, tmp_path / "b", dump_date="20261120"))
    with pytest.raises(DownloadError, match="enwiki/20261231/dumpstatus.json|no run among 20261231"):
        download(_opts(site, tmp_path / "c", dump_date="20261231"))
    robots.cache.clear()  # the verdict on this host is kept for the process
    site.robots = "User-agent: wit\nDisallow: /enwiki/\n"
    with pytest.raises(DownloadError, match="disallowed by .*/robots.txt for 'wit'") as e:
        download(_opts(site, tmp_path / "d"))
    assert e.value.problem is Problem.ROBOTS
    robots.cache.clear()
    site.robots = "User-agent: *\nAllow: /\n"
    site.refuse["/robots.txt"] = (503, {})
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1:\d+: robots.txt unreachable: http 503; RFC 9309") as e:
        download(_opts(site, tmp_path / "e"))
    assert e.value.problem is Problem.ROBOTS


def test_robots_txt_is_read_through_redirects_and_only_its_first_500_kib(site, tmp_path):
    site.redirects["/robots.txt"] = "/moved/robots.txt"
    site.files["/moved/robots.txt"] = b"User-agent: wit\nDisallow: /enwiki/\n"
    with pytest.raises(DownloadError, match="disallowed by") as e:
        download(_opts(site, tmp_path / "a"))
    assert e.value.problem is Problem.ROBOTS
    robots.cache.clear()
    site.files["/moved/robots.txt"] = b"# padding\n" * 60_000 + b"User-agent: wit\nDisallow: /\n"  # past 500 KiB
    assert download(_opts(site, tmp_path / "b")).complete


def test_a_retry_after_is_waited_for_up_to_its_limit(site, tmp_path):
    from queries.download import _Attempt

    wanted = "/wordnet/WordNet-3.0.tar.gz"
    site.refuse[wanted] = (503, {"Retry-After": "86400"})  # a day
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"http 503.*Retry-After 86400s: over --max-retry-after 600s") as e:
        download(_opts(site, tmp_path / "a"))
    assert e.value.problem is Problem.NETWORK and time.monotonic() - started < 30

    slept = []
    attempt = _Attempt(site.url + wanted, _opts(site, tmp_path / "b"), slept.append)

    class Busy:
        status, reason, headers = 429, "Too Many Requests", {"Retry-After": "42"}

    attempt.failed_status(Busy())
    attempt.wait()
    assert slept == [42.0]


def test_build_from_refuses_other_inputs_and_a_missing_manifest(tmp_path, capsys):
    assert main(["queries", "build", "--from", str(tmp_path), "--out", str(tmp_path / "q")]) == 2
    assert "manifest.json: no manifest" in capsys.readouterr().err
    assert main(["queries", "build", "--from", str(tmp_path), "--wordnet", "x", "--out", str(tmp_path / "q")]) == 2
    assert "--from" in capsys.readouterr().err


# ---- a hostile or broken mirror --------------------------------------------------------------------------------

RUN = "/enwiki/20261101/"
PART1 = "enwiki-20261101-pages-articles-multistream1.xml-p1p100.bz2"


def _status(site) -> dict:
    return json.loads(site.files[RUN + "dumpstatus.json"])


def _set_status(site, status: dict) -> None:
    site.files[RUN + "dumpstatus.json"] = json.dumps(status).encode()


@pytest.mark.parametrize("name", [f"../../../escape-{PART1}", f"sub/{PART1}", f"enwiki-20261101\x00{PART1}",
                                  "enwiki-20261101-x/../../y-pages-articles-multistream9.xml.bz2",
                                  "other-20261101-pages-articles-multistream1.xml-p1p100.bz2"])
def test_a_part_name_that_is_not_a_plain_file_name_of_the_expected_shape_is_refused(site, tmp_path, name):
    status = _status(site)
    files = status["jobs"]["articlesmultistreamdump"]["files"]
    files[name] = dict(files[PART1], url=RUN + PART1)
    _set_status(site, status)
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(DownloadError) as e:
        download(_opts(site, tmp_path / "deep" / "er" / "dl"))
    assert e.value.problem is Problem.LISTING and "is not a plain file name of the shape" in str(e.value)
    assert "\n" not in str(e.value)
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert not written, written


def test_a_link_planted_in_the_folder_is_not_followed(site, tmp_path):
    out = tmp_path / "dl"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (out / "wikipedia").mkdir(parents=True)
    (out / "wikipedia" / (PART1 + ".part")).symlink_to(victim)
    with pytest.raises(DownloadError) as e:
        download(_opts(site, out))
    assert victim.read_text() == "keep me\n"
    failed = json.loads((out / "manifest.json").read_text())["failed"]
    assert [f["problem"] for f in failed] == ["local"]
    assert failed[0]["error"].endswith(f"{PART1}.part: a link is in the way; wit writes only plain files in --out")
    assert "1 more" not in str(e.value)


def test_listings_are_capped_and_never_decompressed(site, tmp_path, monkeypatch):
    import gzip

    from queries import download as dl

    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in 64 KiB, served as dumpstatus.json
    site.files[RUN + "dumpstatus.json"] = bomb
    site.headers[RUN + "dumpstatus.json"] = {"Content-Encoding": "gzip"}
    with pytest.raises(DownloadError) as e:
        download(_opts(site, tmp_path / "a", dump_date="20261101"))
    assert e.value.problem is Problem.LISTING and "dumpstatus.json: not JSON (" in str(e.value)
    site.files[RUN + "dumpstatus.json"] = b"{}"
    site.refuse[RUN + "dumpstatus.json"] = (200, {"Content-Length": str(10 ** 15)})
    with pytest.raises(DownloadError, match="a listing of 1,000,000,000,000,000 bytes, over the"):
        download(_opts(site, tmp_path / "b", dump_date="20261101"))
    monkeypatch.setattr(dl, "MAX_TEXT_BYTES", 100)
    with pytest.raises(DownloadError, match=r"enwiki/: a listing of 134 bytes, over the 100 wit reads"):
        download(_opts(site, tmp_path / "c"))


def test_a_listing_of_countless_runs_is_tried_only_for_the_newest(site, tmp_path):
    from queries.download import MAX_RUNS

    site.files["/enwiki/"] = "".join(f'<a href="2027{i:04d}/">x</a>\n' for i in range(5000)).encode()
    with pytest.raises(DownloadError, match="no run among"):
        download(_opts(site, tmp_path / "dl"))
    asked = [p for p, _ in site.log if p.endswith("/dumpstatus.json")]
    assert len(asked) == MAX_RUNS


def test_only_hourly_pageview_files_are_taken(site, tmp_path):
    month = "/other/pageviews/2026/2026-10/"
    listing = site.files[month].decode() + "".join(
        f'<a href="pageviews-20261030-00{m:02d}{s:02d}.gz">x</a>\n' for m in range(60) for s in range(1, 60))
    site.files[month] = listing.encode()
    manifest = download(_opts(site, tmp_path / "dl"))
    assert sum(f.source == "pageviews" for f in manifest.files) == 4


def test_a_transfer_cut_again_and_again_from_byte_zero_runs_out_of_retries(site, tmp_path):
    site.restart.add(RUN + PART1)
    with pytest.raises(DownloadError) as e:
        download(_opts(site, tmp_path / "dl", retries=3))
    assert e.value.problem is Problem.NETWORK
    assert len(site.requests_for(RUN + PART1)) == 3 + 1


def test_a_file_listed_twice_with_two_checksums_is_refused(site, tmp_path):
    sums = RUN + "enwiki-20261101-sha1sums.txt"
    site.files[sums] += f"{'0' * 40}  {PART1}\n".encode()
    with pytest.raises(DownloadError) as e:
        download(_opts(site, tmp_path / "dl"))
    assert e.value.problem is Problem.LISTING
    assert str(e.value) == (f"{site.url}{sums}: lists {PART1!r} twice with different checksums; neither is "
                            "trusted")


def test_a_redirect_to_a_file_url_is_a_refused_url(site, tmp_path):
    site.redirects[RUN + PART1] = "file:///etc/passwd"
    with pytest.raises(DownloadError) as e:
        download(_opts(site, tmp_path / "dl"))
    failed = json.loads((tmp_path / "dl" / "manifest.json").read_text())["failed"]
    assert [(f["problem"], f["error"]) for f in failed] == [
        ("url", "file:///etc/passwd: refused: only http and https URLs are fetched")]
    assert e.value.problem is Problem.URL
