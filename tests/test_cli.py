import dataclasses
import subprocess
import sys

import pytest

from wit.cli import COMMANDS, _flags_of, main, parser
from wit.core.options import flag, from_args

# The fewest arguments each command accepts, and the options they must give.
REQUIRED = {
    ("build",): (["--candidates", "c", "--queries", "q", "--out", "o"], dict(candidates=("c",), queries="q", out="o")),
    ("demo",): ([], {}),
    ("synthweb",): (["--out", "o"], dict(out="o")),
    ("report",): (["d"], dict(dir="d")),
    ("queries", "build"): (["--out", "o"], dict(out="o")),
    ("queries", "download"): (["--out", "o"], dict(out="o")),
    ("tokenizer", "train"): (["--shards", "s", "--out", "t"], dict(shards=("s",), out="t")),
    ("train",): (["--shards", "s", "--out", "o"], dict(shards=("s",), out="o")),
    ("eval",): (["--checkpoint", "c", "--shards", "s"], dict(checkpoint="c", shards=("s",))),
    ("export", "openclip"): (["--checkpoint", "c", "--out", "o"], dict(checkpoint="c", out="o")),
}


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("build", "demo", "synthweb", "report", "queries", "tokenizer", "train", "eval", "export"):
        assert command in out


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c.path))
def test_command_line_defaults_are_the_options_defaults(cmd):
    argv, given = REQUIRED[cmd.path]
    args = parser(full=True).parse_args(list(cmd.path) + argv)
    cls = cmd.load(cmd.options)
    assert from_args(cls, args) == cls(**given)
    assert args.cmd is cmd


def _fields(cls):
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            yield from _fields(f.default_factory)
        else:
            yield cls, f


def test_every_option_field_is_a_flag_or_deliberately_hidden():
    p = parser(full=True)
    for cmd in COMMANDS:
        flags = set(_flags_of(p, cmd))
        for cls, f in _fields(cmd.load(cmd.options)):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            if f.metadata.get("positional"):
                continue
            assert (flag(cls, f.name) in flags) == f.metadata.get("cli", True), (cmd.path, f.name)


def test_build_reports_bad_input_clearly(tmp_path, capsys):
    (tmp_path / "q.txt").write_text("red\n")
    code = main(["build", "--candidates", str(tmp_path / "missing*.jsonl"), "--queries", str(tmp_path / "q.txt"),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no file matches" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_wrong_value_or_a_typo_is_one_line_naming_the_flag(tmp_path, capsys):
    base = ["build", "--candidates", "c", "--queries", "q", "--out", str(tmp_path)]
    assert main(base + ["--per-query-cap", "0"]) == 2
    assert capsys.readouterr().err.strip() == "wit build: error: --per-query-cap 0: must be at least 1"
    assert main(base + ["--per-query-capp", "5"]) == 2
    err = capsys.readouterr().err
    assert "--per-query-capp: neither a wit flag nor an Apache Beam pipeline option" in err
    assert "did you mean --per-query-cap?" in err
    assert main(base + ["--runer", "DirectRunner"]) == 2
    assert "did you mean --runner?" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", "c", "--bogus", "1"]) == 2
    assert "--bogus: not a flag of `wit eval`" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", "c"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def test_beam_options_pass_through(tmp_path, monkeypatch):
    seen = {}

    def fake_build(opts, beam_args):
        seen.update(opts=opts, beam_args=beam_args)
        return 0

    monkeypatch.setattr("wit.commands.build", fake_build)
    argv = ["build", "--candidates", "c", "--queries", "q", "--out", "o", "--runner", "DirectRunner",
            "--direct_num_workers=2", "--seed", "3"]
    assert main(argv) == 0
    assert seen["beam_args"] == ["--runner", "DirectRunner", "--direct_num_workers=2"] and seen["opts"].seed == 3


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(opts, beam_args):
        raise KeyError("a bug")

    monkeypatch.setattr("wit.commands.report", broken)
    with pytest.raises(KeyError):
        main(["report", "somewhere"])


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


def test_a_workers_log_of_a_user_error_or_ctrl_c_is_left_to_wits_one_line():
    """Beam logs a failed DoFn's traceback wrapped in its own error; the CLI drops that record when a user error
    or Ctrl-C lies under it (the one line follows), and keeps every other error's."""
    import logging
    import sys

    from wit.cli import QuietUserErrors
    from wit.core.errors import InputError

    def logged(inner: BaseException) -> bool:
        try:
            try:
                raise inner
            except BaseException:
                raise RuntimeError("wrapped [while running 'Stage']")
        except RuntimeError:
            record = logging.LogRecord("apache_beam", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
            return QuietUserErrors().filter(record)

    assert not logged(InputError("x.parquet: row 3: bad"))
    assert not logged(KeyboardInterrupt())
    assert logged(ZeroDivisionError("a bug"))
    warning = logging.LogRecord("apache_beam", logging.WARNING, __file__, 1, "a warning", None, None)
    assert QuietUserErrors().filter(warning)


def test_entry_exits_with_the_commands_status_and_freezes_what_it_left(monkeypatch):
    import gc

    from wit import cli

    monkeypatch.setattr(cli, "main", lambda: 3)
    try:
        with pytest.raises(SystemExit) as e:
            cli.entry()
        assert e.value.code == 3
        assert gc.get_freeze_count() > 0  # the collection at exit has nothing left to walk
    finally:
        gc.unfreeze()
