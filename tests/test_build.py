"""End to end: `wit build` with Beam's DirectRunner on the synthetic web served on loopback."""

from __future__ import annotations

import glob
import os
import shutil
import tarfile
from collections import Counter
from dataclasses import replace

import pyarrow.parquet as pq
import pytest

from pipelines import balance
from pipelines.build import BuildError, BuildOptions, run_build
from pipelines.fetch import FetchOptions
from pipelines.imagededup import hamming
from pipelines.match import QueryMatcher
from pipelines.resize import ResizeOptions
from pipelines.counters import REGISTRY, unbalanced
from pipelines.urldedup import normalize_url, uid_for
from wit.core.shardformat import STATUSES
from wit.core.text import clean_caption

CAP = 40
SHARD = 100
BEAM = ["--runner=DirectRunner"]


def _opts(inputs, out, seed=0) -> BuildOptions:
    return BuildOptions(candidates=(str(inputs / "*.parquet"),), queries=str(inputs / "queries.txt"), out=str(out),
                        per_query_cap=CAP, shard_size=SHARD, seed=seed, threads=16,
                        resize=ResizeOptions(image_size=64),
                        # 1.2 s: only the server's deliberately slow (2 s) URLs time out, even on a loaded machine
                        fetch=FetchOptions(timeout=1.2, retries=1, retry_backoff=0.01, allow_private_networks=True))


def _samples(out) -> list[dict]:
    return [r for f in sorted(glob.glob(f"{out}/shards/*.parquet")) for r in pq.read_table(f).to_pylist()]


@pytest.fixture(scope="module")
def built(web_server, tmp_path_factory):
    web, server = web_server
    root = tmp_path_factory.mktemp("build")
    inputs = root / "inputs"
    rows = web.write_candidates(str(inputs / "candidates.parquet"), server.base_url)
    queries = web.write_queries(str(inputs / "queries.txt"))
    stats = run_build(_opts(inputs, root / "a"), BEAM)
    return {"root": root, "inputs": inputs, "rows": rows, "queries": queries, "stats": stats}


def _expected_selection(built) -> dict[str, tuple[int, ...]]:
    """What balancing must select, computed independently of Beam from the candidate rows."""
    matcher = QueryMatcher(built["queries"])
    by_url: dict[str, list[tuple[int, ...]]] = {}
    for r in built["rows"]:
        m = matcher.match(clean_caption(r.caption))
        if m:
            by_url.setdefault(normalize_url(r.url), []).append(m)
    matches = {uid_for(u): max(ms, key=len) for u, ms in by_url.items()}
    return balance.select(matches, CAP, seed=0)


def test_balancing_caps_each_query_and_keeps_small_queries_whole(built):
    samples = _samples(built["root"] / "a")
    selected = Counter(q for s in samples for q in s["selected_query_ids"])
    matched = Counter(q for s in samples for q in s["matched_query_ids"])
    assert max(selected.values()) == CAP  # the synthetic Zipf head does exceed the cap
    expected = _expected_selection(built)
    assert {s["uid"]: tuple(s["selected_query_ids"]) for s in samples} == expected
    all_matches = Counter(q for qs in expected.values() for q in qs)
    for q, n in selected.items():
        assert n <= CAP
        if matched[q] < CAP:
            assert n == matched[q]
    stats = built["stats"]
    assert stats.per_query_after_balancing["max"] == CAP
    assert stats.per_query_before_balancing["max"] > CAP
    assert stats.stages["selected"] == len(samples) == len(expected)
    assert all_matches == selected


def test_every_stage_counts_its_own_drops_and_the_counts_add_up(built):
    stages = built["stats"].stages
    assert list(stages) == [c.name for c in REGISTRY]
    assert unbalanced(stages) == []
    rows = built["rows"]
    assert stages["candidates"] == len(rows) and stages["rejected_rows"] == 0
    assert stages["matched"] == sum(1 for r in rows if r.fault != "no_match")
    assert stages["unique_pairs"] == len({normalize_url(r.url) for r in rows if r.fault != "no_match"})
    assert stages["over_cap"] > 0 and stages["downloaded_this_run"] == stages["selected"]
    samples = _samples(built["root"] / "a")
    assert Counter(s["status"] for s in samples) == {k: v for k, v in stages.items() if k in STATUSES and v}


def test_every_fault_ends_as_a_recorded_status(built):
    samples = _samples(built["root"] / "a")
    truth = {}
    for r in built["rows"]:
        truth.setdefault(r.url, r)
    assert all(s["status"] in STATUSES for s in samples)
    by_fault: dict[str, Counter] = {}
    for s in samples:
        by_fault.setdefault(truth[s["url"]].fault, Counter())[s["status"]] += 1
    assert set(by_fault["http_404"]) == {"failed_to_download"}
    assert set(by_fault["http_500"]) == {"failed_to_download"}
    assert set(by_fault["slow"]) == {"failed_to_download"}
    assert set(by_fault["truncated"]) == {"failed_to_resize"}
    assert set(by_fault["noai"]) == {"opted_out"}
    assert set(by_fault["html"]) <= {"failed_to_download", "failed_to_resize"}
    assert "no_match" not in by_fault  # dropped before fetching, counted
    assert built["stats"].stages["unmatched"] == sum(1 for r in built["rows"] if r.fault == "no_match")
    for s in samples:
        if s["status"] != "success":
            assert s["error_message"], s


def test_duplicates_and_near_duplicates_are_gone(built):
    samples = _samples(built["root"] / "a")
    truth = {r.url: r for r in built["rows"]}
    ok = [s for s in samples if s["status"] == "success"]
    # by definition: no two kept images share bytes or lie within the pHash threshold
    assert len({s["sha256"] for s in ok}) == len(ok)
    hashes = [int(s["phash"], 16) for s in ok]
    assert all(hamming(a, b) > 4 for i, a in enumerate(hashes) for b in hashes[i + 1:])
    # against the ground truth: byte-identical mirrors always go, re-encoded variants nearly always
    kept_plain = {truth[s["url"]].image_id for s in ok if truth[s["url"]].fault not in ("mirror", "variant")}
    fetched = [s for s in samples if s["status"] in ("success", "duplicate", "near_duplicate")]
    mirrors = [s for s in fetched if truth[s["url"]].fault == "mirror" and truth[s["url"]].image_id in kept_plain]
    variants = [s for s in fetched if truth[s["url"]].fault == "variant" and truth[s["url"]].image_id in kept_plain]
    assert mirrors and all(s["status"] == "duplicate" for s in mirrors)
    assert len(variants) >= 10
    assert sum(s["status"] == "near_duplicate" for s in variants) >= 0.9 * len(variants)
    statuses = Counter(s["status"] for s in samples)
    assert statuses["duplicate"] > 0 and statuses["near_duplicate"] > 0


def test_tar_samples_have_all_parts_and_a_parquet_row(built):
    out = built["root"] / "a"
    for tar_path in sorted(glob.glob(f"{out}/shards/*.tar")):
        rows = {r["key"]: r for r in pq.read_table(tar_path[:-4] + ".parquet").to_pylist()}
        with tarfile.open(tar_path) as tar:
            parts: dict[str, set] = {}
            for name in tar.getnames():
                key, ext = name.split(".", 1)
                parts.setdefault(key, set()).add(ext)
        assert all(p == {"jpg", "txt", "json"} for p in parts.values())
        assert set(parts) == {k for k, r in rows.items() if r["status"] == "success"}
        assert 0 < len(rows) <= SHARD


def test_sizes_json_counts_each_tar_as_open_clip_reads_it(built):
    """open_clip_train's get_dataset_size: sum(sizes[basename(shard)]) over the shards it is given."""
    import json

    out = built["root"] / "a" / "shards"
    sizes = json.loads((out / "sizes.json").read_text())
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert sorted(sizes) == tars
    for name in tars:
        with tarfile.open(out / name) as tar:
            assert sizes[name] == sum(n.endswith(".jpg") for n in tar.getnames()), name
    assert sum(sizes.values()) == built["stats"].stages["success"]


def test_same_seed_same_bytes_other_seed_other_selection(built):
    root = built["root"]
    run_build(_opts(built["inputs"], root / "b"), BEAM)
    names = sorted(os.listdir(root / "a" / "shards"))
    assert names == sorted(os.listdir(root / "b" / "shards")) and len(names) >= 6
    for name in names:
        assert (root / "a" / "shards" / name).read_bytes() == (root / "b" / "shards" / name).read_bytes(), name
    run_build(_opts(built["inputs"], root / "c", seed=1), BEAM)
    sel_a = {s["uid"] for s in _samples(root / "a")}
    sel_c = {s["uid"] for s in _samples(root / "c")}
    assert sel_a != sel_c


def test_rerun_after_deleting_a_shard_rewrites_only_that_shard(built):
    root = built["root"]
    out = root / "rerun"
    shutil.copytree(root / "a", out)
    shard_dir = out / "shards"
    before = {n: os.stat(shard_dir / n) for n in os.listdir(shard_dir)}
    for ext in (".tar", ".parquet", "_stats.json"):
        os.remove(shard_dir / f"00001{ext}")
    stats = run_build(_opts(built["inputs"], out), BEAM)
    shard_rows = pq.read_table(root / "a" / "shards" / "00001.parquet").num_rows
    assert stats.stages["downloaded_this_run"] == shard_rows
    for name, st in before.items():
        now = os.stat(shard_dir / name)
        assert (shard_dir / name).read_bytes() == (root / "a" / "shards" / name).read_bytes(), name
        if not name.startswith("00001") and name != "sizes.json":  # sizes.json: rewritten, the same bytes
            assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), name
    assert not glob.glob(f"{out}/_staging/*") and not glob.glob(f"{shard_dir}/.*")
    assert stats.stages["success"] == built["stats"].stages["success"]


def test_rerun_with_other_settings_is_refused(built):
    with pytest.raises(BuildError, match="different per_query_cap"):
        opts = _opts(built["inputs"], built["root"] / "a")
        run_build(BuildOptions(**{**opts.__dict__, "per_query_cap": CAP + 1}), BEAM)


def test_missing_inputs_are_clear_errors(built, tmp_path):
    opts = _opts(built["inputs"], tmp_path / "x")
    with pytest.raises(BuildError, match="no file matches"):
        run_build(BuildOptions(**{**opts.__dict__, "candidates": (str(tmp_path / "none*.parquet"),)}), BEAM)
    with pytest.raises(BuildError, match="no such file"):
        run_build(BuildOptions(**{**opts.__dict__, "queries": str(tmp_path / "q.txt")}), BEAM)


def test_caption_near_duplicates_are_dropped_before_balancing(built):
    opts = replace(_opts(built["inputs"], built["root"] / "captions"), caption_dup_threshold=0.9)
    stats = run_build(opts, BEAM)
    rows = _samples(built["root"] / "captions")
    captions = [clean_caption(r["caption"]).lower() for r in rows]
    assert len(captions) == len(set(captions))  # identical captions are Jaccard 1: one of each is left
    parts = sorted((built["root"] / "captions").glob("caption_near_duplicates-*.tsv"))
    report = [line for part in parts for line in part.read_text().splitlines()[1:]]  # each part has the header
    dropped = stats.stages["caption_near_duplicates"]
    assert dropped > 0 and len(report) == dropped
    assert stats.stages["unique_pairs"] - dropped >= stats.stages["selected"]


def test_report_command_writes_a_self_contained_page(built, tmp_path):
    import re

    from wit.cli import main

    out = tmp_path / "report.html"
    assert main(["report", str(built["root"] / "a"), "--out", str(out), "--queries", "3", "--per-query", "2"]) == 0
    page = out.read_text()
    assert len(re.findall(r"data:image/png;base64,", page)) == 3  # distribution, statuses, sizes
    assert page.count("<figure>") == 6  # 3 queries x 2 samples, with their captions
    assert "failed_to_download" in page and "http 404 Not Found" in page  # errors grouped by kind, an example each
    assert "<td>http</td>" in page and "<td>timeout</td>" in page
    assert "Largest key per grouping step" in page and "pairs reaching one query&#x27;s bottom-k" in page
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_plan_only_writes_the_plan_and_a_later_build_downloads_it(built):
    root = built["root"]
    out = root / "planned"
    stats = run_build(replace(_opts(built["inputs"], out), plan_only=True), BEAM)
    plans = sorted((out / "plan").glob("*.parquet"))
    assert plans and stats.shards == built["stats"].shards and not (out / "shards").exists()
    rows = [r for f in plans for r in pq.read_table(f).to_pylist()]
    assert set(rows[0]) == {"key", "uid", "url", "caption", "matched_query_ids", "selected_query_ids",
                            "source_file", "source_row"}
    assert len(rows) == stats.stages["selected"] == built["stats"].stages["selected"]
    assert [r["key"] for r in rows] == sorted(r["key"] for r in rows)  # the files in key order, as is each
    assert stats.stages["success"] == 0 and stats.largest_keys["query_topk"]["largest"] > 0
    assert (out / "query_counts.tsv").read_bytes() == (root / "a" / "query_counts.tsv").read_bytes()
    stats = run_build(_opts(built["inputs"], out), BEAM)  # downloads the plan; the plan is not made again
    assert stats.stages == built["stats"].stages
    for name in os.listdir(root / "a" / "shards"):
        assert (out / "shards" / name).read_bytes() == (root / "a" / "shards" / name).read_bytes(), name


def test_every_grouping_step_reports_its_largest_key(built):
    keys = built["stats"].largest_keys
    assert {"url", "url_partition", "query_topk", "order_bucket", "shard", "sha256", "phash_partition",
            "phash_group", "shard_verdicts"} <= set(keys)
    assert keys["shard"]["largest"] == SHARD and keys["url"]["keys"] == built["stats"].stages["unique_pairs"]


def test_whatever_decides_the_content_is_in_the_fingerprint(built, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(built["inputs"], inputs)
    opts = replace(_opts(inputs, tmp_path / "out"), plan_only=True)
    run_build(opts, BEAM)
    run_build(replace(opts, threads=3, max_group_size=7), BEAM)  # how the job runs is not what it makes
    with pytest.raises(BuildError, match="different fetch"):
        run_build(replace(opts, fetch=replace(opts.fetch, robots_txt=False)), BEAM)
    (inputs / "queries.txt").write_text((inputs / "queries.txt").read_text() + "one more query\n")
    with pytest.raises(BuildError, match="different queries"):
        run_build(opts, BEAM)


def test_an_output_folder_named_like_a_glob_is_a_path(built, tmp_path):
    out = tmp_path / "run[1]*?"
    stats = run_build(replace(_opts(built["inputs"], out), plan_only=True), BEAM)
    assert list((out / "plan").glob("*.parquet")) and stats.shards == built["stats"].shards
    assert run_build(replace(_opts(built["inputs"], out), plan_only=True), BEAM).shards == stats.shards


def test_relative_paths_reach_the_workers_as_absolute_ones(built, tmp_path, monkeypatch):
    from pipelines.build import absolute

    shutil.copytree(built["inputs"], tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    opts = replace(_opts(tmp_path / "in", tmp_path / "out"), candidates=("in/*.parquet",), queries="in/queries.txt",
                   out="out", plan_only=True)
    assert absolute(opts).out == str(tmp_path / "out") and absolute(opts).candidates == (f"{tmp_path}/in/*.parquet",)
    stats = run_build(opts, ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert stats.stages["selected"] == built["stats"].stages["selected"]
    assert (tmp_path / "out" / "plan" / "_index.json").exists()


@pytest.mark.parametrize("plan_only, beam_args, started", [
    (False, BEAM, True),
    (True, BEAM, False),  # no download follows
    (False, ["--direct_running_mode=multi_processing", "--direct_num_workers=2"], False),  # workers elsewhere
])
def test_the_decoding_processes_start_before_the_plan_job_when_the_download_runs_here(
        built, tmp_path, monkeypatch, plan_only, beam_args, started):
    """They import while the plan job keeps one core busy, instead of after it, before the first request."""
    from pipelines import build

    seen = []

    class Stop(Exception):
        pass

    def run_job(job, *args):
        seen.append(job.__name__)
        raise Stop

    monkeypatch.setattr(build, "shared_pool", lambda: seen.append("decoding processes"))
    monkeypatch.setattr(build, "_run_job", run_job)
    with pytest.raises(Stop):
        run_build(replace(_opts(built["inputs"], tmp_path / "out"), plan_only=plan_only), beam_args)
    assert seen == (["decoding processes"] if started else []) + ["plan_pipeline"]


def test_a_query_left_unproven_is_balanced_again_whole(built, tmp_path, monkeypatch):
    from pipelines import balance as balance_module

    monkeypatch.setattr(balance_module, "expected_passing", lambda cap: cap / 3)  # far too low, on purpose
    out = tmp_path / "again"
    run_build(replace(_opts(built["inputs"], out), plan_only=True), BEAM)
    rows = [r for f in sorted((out / "plan").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert {r["uid"]: tuple(r["selected_query_ids"]) for r in rows} == _expected_selection(built)


def test_a_plan_whose_counts_do_not_add_up_is_refused_and_made_again(built, tmp_path, monkeypatch):
    from pipelines import build as build_module

    real = build_module.counters.Counts.read

    def lossy(path):  # as if a worker's bundle of pairs had been dropped between dedup and balancing
        counts = real(path)
        return replace(counts, stages={**counts.stages, "selected": counts.stages["selected"] - 5})

    out = tmp_path / "lossy"
    monkeypatch.setattr(build_module.counters.Counts, "read", lossy)
    with pytest.raises(BuildError, match="counts do not add up.*run the build again"):
        run_build(replace(_opts(built["inputs"], out), plan_only=True), BEAM)
    assert not (out / "plan" / "_plan.json").exists()
    monkeypatch.setattr(build_module.counters.Counts, "read", real)
    stats = run_build(replace(_opts(built["inputs"], out), plan_only=True), BEAM)
    assert stats.stages["selected"] == built["stats"].stages["selected"]


class _Reported:
    """A runner's metrics as a cluster may report them: every value twice (a retried task counted by each
    attempt), or none at all (a job server that reports no job metrics)."""

    def __init__(self, real, copies: int):
        self.real, self.copies = real, copies

    def query(self, filter=None):
        return {kind: [r for r in results for _ in range(self.copies)]
                for kind, results in self.real.query(filter).items()}


@pytest.mark.parametrize("copies", [2, 0], ids=["doubled", "missing"])
def test_the_stats_and_decisions_do_not_depend_on_the_runners_metrics(built, tmp_path, monkeypatch, copies):
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    real = fn_runner.RunnerResult.metrics
    monkeypatch.setattr(fn_runner.RunnerResult, "metrics", lambda self: _Reported(real(self), copies))
    out = tmp_path / "metrics"
    stats = run_build(_opts(built["inputs"], out), BEAM)
    clean = built["stats"]
    assert stats.stages == clean.stages and stats.per_query_after_balancing == clean.per_query_after_balancing
    assert stats.largest_keys.keys() == clean.largest_keys.keys()
    assert stats.largest_keys["shard"] == clean.largest_keys["shard"] and stats.largest_keys["shard"]["keys"] > 0
    assert stats.stages["selected"] > 0 and unbalanced(stats.stages) == []
    assert _samples(out) == _samples(built["root"] / "a")


def test_a_damaged_input_file_is_named_and_the_job_goes_on(built, tmp_path):
    import gzip

    from pipelines.candidates import CandidateFileError
    from wit.summary import summary

    lines = "".join(f'{{"url": "http://127.0.0.1:9/d{i}.jpg", "caption": "red circle {i}"}}\n' for i in range(3000))
    data = gzip.compress(lines.encode())
    damaged = tmp_path / "cut.jsonl.gz"
    damaged.write_bytes(data[: len(data) // 2])
    opts = replace(_opts(built["inputs"], tmp_path / "out"), plan_only=True,
                   candidates=(str(built["inputs"] / "*.parquet"), str(damaged)))
    stats = run_build(opts, BEAM)
    read = stats.stages["candidates"] - built["stats"].stages["candidates"]
    assert 0 < read < 3000 and stats.stages["damaged_files"] == 1 and stats.stages["rejected_rows"] == 0
    assert stats.damaged_inputs == [f"{damaged}: damaged at row {read}: the compressed stream ends early "
                                       f"(truncated file); the rows before it were read"]
    assert "damaged input files: 1, each read up to the damage" in summary(stats, str(tmp_path / "out"))
    with pytest.raises(CandidateFileError, match=f"cut.jsonl.gz: damaged at row {read}"):
        run_build(replace(opts, out=str(tmp_path / "strict"), strict=True), BEAM)


def test_one_build_at_a_time_writes_into_a_folder_and_a_killed_one_leaves_no_lock(built, tmp_path):
    import subprocess
    import sys

    from wit.core.errors import FolderBusy

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from wit.core.fileio import folder_lock\n"
                               f"with folder_lock({str(out)!r}, 'wit build'):\n"
                               "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy, match=rf"out is in use by another wit build \(pid {holder.pid} on "):
            run_build(replace(_opts(built["inputs"], out), plan_only=True), BEAM)
    finally:
        holder.kill()  # SIGKILL: no cleanup runs; the system drops the lock
        holder.wait()
    assert run_build(replace(_opts(built["inputs"], out), plan_only=True), BEAM).shards > 0


def test_a_damaged_build_marker_is_named(built, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "_build.json").write_text("")
    with pytest.raises(BuildError, match=r"_build.json: not a build marker \(Expecting value"):
        run_build(replace(_opts(built["inputs"], out), plan_only=True), BEAM)


def test_a_refused_file_in_a_stage_is_one_line_naming_it(built, tmp_path, monkeypatch):
    from pipelines import runstats

    def refused(*_args, **_kw):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out" / "query_counts.tsv"))

    monkeypatch.setattr(runstats, "_write_details", refused)
    with pytest.raises(BuildError) as e:
        run_build(replace(_opts(built["inputs"], tmp_path / "out"), plan_only=True), BEAM)
    assert str(e.value) == f"{tmp_path / 'out' / 'query_counts.tsv'}: Permission denied"


def test_hostile_rows_cost_their_row_and_the_job_runs_on(built, tmp_path):
    import json as _json

    rows = [{"url": "http://[::1/a.jpg", "caption": "red circle"},
            {"url": "http://exa\uff03mple.com/a.jpg", "caption": "red circle"},
            {"url": "http://a.example/b.jpg", "caption": "red \ud800 circle"},
            {"url": 42, "caption": "red circle"}]
    lines = [_json.dumps(r) for r in rows] + ["[" * 100_000 + "]" * 100_000]
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_text("\n".join(lines) + "\n")
    big = tmp_path / "big.csv"
    big.write_text(f'url,caption\nhttp://a.example/c.jpg,"{"z" * 200_000}"\n')
    opts = replace(_opts(built["inputs"], tmp_path / "out"), plan_only=True,
                   candidates=(str(built["inputs"] / "*.parquet"), str(hostile), str(big)))
    stats = run_build(opts, BEAM)
    assert stats.stages["rejected_rows"] == 6
    assert stats.stages["selected"] == built["stats"].stages["selected"]


def test_a_selection_that_is_not_the_bottom_k_is_refused_though_counts_add_up(built, tmp_path, monkeypatch):
    """As the local multi-process runner did once: a cut-off missing from the side input, so a query took
    all its pairs, every count still adding up."""
    from pipelines import balance

    rows = [line.split("\t") for line in (built["root"] / "a" / "query_counts.tsv").read_text().splitlines()[1:]]
    victim = next(int(qid) for qid, _q, matched, _s in rows if int(matched) > CAP)
    real = balance._Select.process

    def forgetful(self, batch, cutoffs):
        return real(self, batch, {q: c for q, c in cutoffs.items() if q != victim})

    monkeypatch.setattr(balance._Select, "process", forgetful)
    with pytest.raises(BuildError, match=rf"selection is not exact \(queries {victim} do not select"):
        run_build(replace(_opts(built["inputs"], tmp_path / "out"), plan_only=True), BEAM)


def test_misbalanced_names_queries_off_their_bottom_k():
    from pipelines.runstats import misbalanced

    matched, cap = {1: 100, 2: 10, 3: 50, 4: 70}, 40
    assert misbalanced(matched, {1: 40, 2: 10, 3: 40, 4: 40}, cap) == []
    assert misbalanced(matched, {1: 100, 2: 9, 3: 40, 4: 40, 5: 1}, cap) == [1, 2, 5]
    assert misbalanced(matched, {1: 100, 2: 10, 3: 40, 4: 40}, cap, unproven=[1]) == []


def test_every_sample_names_its_input_file_and_row(built):
    inputs = {}
    for path in sorted(glob.glob(str(built["inputs"] / "*.parquet"))):
        inputs[path] = pq.read_table(path).to_pylist()
    samples = _samples(built["root"] / "a")
    assert samples and all(s["source_file"] in inputs for s in samples)
    for s in samples:
        row = inputs[s["source_file"]][s["source_row"]]
        assert row["url"].strip() == s["url"] and clean_caption(row["caption"]) == s["caption"], s["key"]
    plan = [r for f in sorted((built["root"] / "a" / "plan").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert {(r["uid"], r["source_file"], r["source_row"]) for r in plan} == {
        (s["uid"], s["source_file"], s["source_row"]) for s in samples}


def test_additional_columns_reach_the_parquet_and_the_json(built, tmp_path):
    import json as _json

    out = tmp_path / "extra"
    stats = run_build(replace(_opts(built["inputs"], out), save_additional_columns=("fault", "image_id")), BEAM)
    assert stats.stages["success"] == built["stats"].stages["success"]
    inputs = {p: pq.read_table(p).to_pylist() for p in glob.glob(str(built["inputs"] / "*.parquet"))}
    table = pq.read_table(sorted(glob.glob(f"{out}/shards/*.parquet"))[0])
    assert str(table.schema.field("fault").type) == "string" and str(table.schema.field("image_id").type) == "int64"
    for row in table.to_pylist():
        source = inputs[row["source_file"]][row["source_row"]]
        assert (row["fault"], row["image_id"]) == (source["fault"], source["image_id"])
    rows = {r["key"]: r for r in table.to_pylist()}
    with tarfile.open(sorted(glob.glob(f"{out}/shards/*.tar"))[0]) as tar:
        records = [_json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    assert records and all((r["fault"], r["image_id"]) == (rows[r["key"]]["fault"], rows[r["key"]]["image_id"])
                           and isinstance(r["image_id"], int) for r in records)
    with pytest.raises(Exception, match="--save-additional-columns url: 'url' is a column wit writes itself"):
        replace(_opts(built["inputs"], out), save_additional_columns=("url",))


def test_a_refused_shard_write_is_one_line_naming_the_file_and_the_rerun_is_byte_identical(built, tmp_path,
                                                                                          monkeypatch, capsys):
    """Shard files fail to write in the processes that write them (a file size limit, as a full disk or a
    quota would refuse them): status 2, one line naming the file, no temporary left; once the processes may
    write again, the rerun gives the same bytes as a build that never failed."""
    import resource
    import signal

    from pipelines import decoders
    from wit import cli

    out = tmp_path / "out"
    argv = ["build", "--candidates", str(built["inputs"] / "*.parquet"),
            "--queries", str(built["inputs"] / "queries.txt"), "--out", str(out), "--per-query-cap", str(CAP),
            "--shard-size", str(SHARD), "--threads", "16",
            "--image-size", "64", "--timeout", "1.2", "--retries", "1", "--retry-backoff", "0.01",
            "--allow-private-networks", "--no-progress", "--runner=DirectRunner"]
    # a pool whose processes may write no file over 4 KiB (a write past it fails with EFBIG, SIGXFSZ ignored);
    # the limit and the ignored signal are inherited at their start, then lifted in this process
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    monkeypatch.setattr(decoders, "_shared", None)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limits[1]))
        limited = decoders.shared_pool()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    try:
        assert cli.main(argv) == 2
    finally:
        limited.close()
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"wit build: error: {out}/shards/") and \
        ".tar: cannot write: File too large" in err[0], err
    assert not glob.glob(f"{out}/**/.*.tmp-*", recursive=True)
    monkeypatch.setattr(decoders, "_shared", None)
    assert cli.main(argv) == 0
    for name in sorted(os.listdir(built["root"] / "a" / "shards")):
        if name.endswith((".tar", ".parquet")):
            assert (out / "shards" / name).read_bytes() == (built["root"] / "a" / "shards" / name).read_bytes(), name
