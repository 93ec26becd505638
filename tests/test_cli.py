import subprocess
import sys

from wit.cli import main


def test_help_lists_subcommands(capsys):
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for command in ("build", "demo", "synthweb"):
        assert command in out


def test_build_reports_bad_input_clearly(tmp_path, capsys):
    (tmp_path / "q.txt").write_text("red\n")
    code = main(["build", "--candidates", str(tmp_path / "missing*.jsonl"), "--queries", str(tmp_path / "q.txt"),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "no file matches" in capsys.readouterr().err


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "wit.cli", "demo", "--out", str(out), "--count", "300",
                           "--shard-size", "100", "--train-steps", "3"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "samples in the shards" in proc.stdout and "pairs per stage" in proc.stdout
    # then a tiny CLIP trains on all shards but the last and is evaluated on held-out drawings
    assert "retrieval on" in proc.stdout and "zeroshot/colour-shapes: top-1" in proc.stdout
    assert (out / "train" / "checkpoints" / "latest").exists()
    assert (out / "dataset" / "report.html").exists() and "demo finished in" in proc.stdout
    assert (out / "dataset" / "stats.json").exists()
    assert list((out / "dataset" / "shards").glob("*.tar"))
