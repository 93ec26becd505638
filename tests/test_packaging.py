"""Light installs: a `wit build` worker runs without torch; the extras say who needs what."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # any import of torch now fails
from wit.cli import main
code = main(sys.argv[1:])
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules if sys.modules[m] is not None)
sys.exit(code)
"""


def test_the_dataset_job_and_its_report_run_without_torch(web_server, tmp_path):
    web, server = web_server
    rows = web.write_candidates(str(tmp_path / "in" / "candidates.parquet"), server.base_url)[:60]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"url": [r.url for r in rows], "caption": [r.caption for r in rows]}),
                   tmp_path / "in" / "few.parquet")
    web.write_queries(str(tmp_path / "in" / "queries.txt"))
    out = tmp_path / "out"
    build = ["build", "--candidates", str(tmp_path / "in" / "few.parquet"), "--queries",
             str(tmp_path / "in" / "queries.txt"), "--out", str(out), "--shard-size", "20", "--image-size", "32",
             "--timeout", "1", "--retries", "0", "--allow-private-networks", "--runner", "DirectRunner"]
    for argv in (build, ["report", str(out)]):
        proc = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["candidates"] == 60 and stats["stages"]["success"] > 0
    assert (out / "report.html").exists()


def test_extras_keep_torch_off_the_workers():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = " ".join(project["dependencies"] + project["optional-dependencies"]["pipelines"])
    assert "torch" not in deps
    assert any(d.startswith("torch") for d in project["optional-dependencies"]["train"])
    assert project["optional-dependencies"]["all"] == ["wit[pipelines,queries,train,report]"]
