"""Crash safety: kill `wit build` mid-run (SIGKILL, no cleanup), rerun it, and get exactly the shards an
uninterrupted run writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _build(inputs: Path, out: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "wit.cli", "build", "--candidates", str(inputs / "candidates.parquet"),
            "--queries", str(inputs / "queries.txt"), "--out", str(out), "--per-query-cap", "40",
            "--shard-size", "100", "--image-size", "64", "--threads", "16", "--timeout", "1.2", "--retries", "1",
            "--retry-backoff", "0.01", "--allow-private-networks", "--runner=DirectRunner"]
    # Ctrl-C's default action, whatever this process inherited: a shell starts a background job (`make test &`)
    # with SIGINT ignored, and wit rightly leaves an ignored SIGINT ignored
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}


def test_killed_build_reruns_to_the_same_shards(web_server, tmp_path):
    web, server = web_server
    inputs = tmp_path / "inputs"
    web.write_candidates(str(inputs / "candidates.parquet"), server.base_url)
    web.write_queries(str(inputs / "queries.txt"))

    _finish(_build(inputs, tmp_path / "straight"))
    expected = _files(tmp_path / "straight")
    assert len([n for n in expected if n.endswith(".tar")]) >= 3

    crashed = tmp_path / "crashed"
    proc = _build(inputs, crashed)
    deadline = time.monotonic() + 120
    # kill as soon as the job has written something: a staged shard or a finished one
    while time.monotonic() < deadline and proc.poll() is None:
        staged = list((crashed / "_staging").glob("*")) if (crashed / "_staging").exists() else []
        finished = list((crashed / "shards").glob("*_stats.json")) if (crashed / "shards").exists() else []
        if staged or finished:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _files(crashed) if (crashed / "shards").exists() else {}
    assert partial != expected  # it really was cut short

    _finish(_build(inputs, crashed))
    assert _files(crashed) == expected
    leftovers = [p for p in crashed.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers

    # Ctrl-C: SIGINT to the whole foreground group, decoding processes included
    interrupted = tmp_path / "interrupted"
    proc = _build(inputs, interrupted)
    _wait_for_output(proc, interrupted)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert proc.returncode == 130, err.decode()[-3000:]
    assert lines[-1] == "wit build: interrupted; run the same command again to resume", lines[-5:]
    assert "Traceback" not in err.decode(), err.decode()[-3000:]
    _finish(_build(inputs, interrupted))
    assert _files(interrupted) == expected


def _wait_for_output(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        staged = list((out / "_staging").glob("*")) if (out / "_staging").exists() else []
        if staged:
            return
        time.sleep(0.01)
    assert proc.poll() is None, "the build finished before it could be interrupted"
