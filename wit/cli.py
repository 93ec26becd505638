"""The `wit` command line: one entry point, one subcommand per job.

Every subcommand's flags are generated from its options dataclass
(`wit.core.options`), so a default or a help text exists once. Only the chosen
subcommand's module is imported: `wit build` does not load torch, and `wit
train` does not load the Beam job. Flags that are not wit's go to Apache Beam
for the commands that run a Beam job, and only if Beam knows them.
"""

from __future__ import annotations

import argparse
import difflib
import gc
import importlib
import itertools
import logging
import sys
import traceback
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from wit.core.errors import WitError, cause_of, user_error_under
from wit.core.options import OptionError, add_arguments, from_args


class QuietBeamImport(logging.Filter):
    """Beam warns at import about optional GCP clients; irrelevant unless you use them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


class QuietUserErrors(logging.Filter):
    """Beam logs a failed worker's traceback before the job ends; for an error the user can fix, or Ctrl-C,
    wit's own line says it all (`-v` shows the traceback). The filter runs where the record is made, inside the
    handler of the exception, so records without exc_info are judged by the exception being handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        e = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return cause_of(e, KeyboardInterrupt) is None and user_error_under(e) is None


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]  # ("build",) or ("queries", "build")
    help: str
    options: str  # "module:OptionsClass"
    run: str  # "module:function", called with (options, beam_args) and returning the exit code
    beam: bool = False  # runs a Beam job: flags wit does not know go to Beam
    resumes: bool = False  # a rerun after an interruption picks up where it stopped
    description: Optional[str] = None

    def load(self, spec: str):
        module, name = spec.split(":")
        return getattr(importlib.import_module(module), name)


COMMANDS = (
    Command(("build",), "run the Beam job: candidate pairs -> balanced, deduplicated shards",
            "pipelines.build:BuildOptions", "wit.commands:build", beam=True, resumes=True),
    Command(("demo",), "build a small dataset from the bundled synthetic web, then train a tiny CLIP",
            "wit.demo:DemoOptions", "wit.commands:demo", beam=True),
    Command(("synthweb",), "write a synthetic candidate list and serve its images on 127.0.0.1",
            "wit.synthweb:SynthwebOptions", "wit.synthweb:serve_command"),
    Command(("report",), "an HTML page of plots and sample images for a built dataset",
            "wit.report:ReportOptions", "wit.commands:report"),
    Command(("queries", "build"), "words, PMI bigrams, popular titles and WordNet lemmas -> queries.txt",
            "queries.build:QueryBuildOptions", "wit.commands:queries_build", beam=True,
            description="With no input, unigrams come from the wordfreq package (offline default)."),
    Command(("queries", "download"), "the Wikipedia dump, hourly pageviews and WordNet from their official sites",
            "queries.download:DownloadOptions", "wit.commands:queries_download", resumes=True,
            description="Resumes where a previous run stopped; checks the checksums the dump site publishes; "
                        "`wit queries build --from OUT` then takes the folder as it is."),
    Command(("tokenizer", "train"), "shards -> tokenizer.json (byte-level BPE on the captions)",
            "trainer.tokenizer:TokenizerOptions", "wit.commands:tokenizer_train"),
    Command(("train",), "train CLIP on webdataset shards (torchrun for several GPUs)",
            "trainer.train:TrainConfig", "wit.commands:train", resumes=True,
            description="Resumes from OUT/checkpoints when present. Several GPUs: "
                        "torchrun --nproc_per_node N -m wit.cli train ..."),
    Command(("export", "openclip"), "a checkpoint -> an OpenCLIP model folder (open_clip, clip_benchmark)",
            "trainer.openclip:ExportOptions", "wit.commands:export_openclip",
            description="The folder loads with open_clip.create_model_and_transforms('local-dir:OUT') and "
                        "open_clip.get_tokenizer('local-dir:OUT') (the tokenizer needs `transformers`); "
                        "`wit train --init-from OUT` starts from it."),
    Command(("eval",), "zero-shot classification and retrieval R@1/5/10",
            "trainer.evaluate:EvalOptions", "wit.commands:evaluate",
            description="--zeroshot DIR: classnames.txt, zeroshot_classification_templates.txt ({c} = class "
                        "name) and tar shards with an image and cls per sample (clip_benchmark's webdataset "
                        "layout). --shards: held-out image-caption shards for retrieval."),
)
GROUPS = {"queries": "regenerate CLIP's 500,000-query list", "tokenizer": "the text tower's BPE tokenizer",
          "export": "a trained model in another tool's format"}


def _chosen(argv: Sequence[str]) -> tuple[str, ...]:
    """The command words of `argv` (before any flag of the command's own)."""
    words = []
    for token in argv:
        if token.startswith("-"):
            if words:
                break
            continue
        words.append(token)
        if words[0] not in GROUPS or len(words) == 2:
            break
    return tuple(words)


def parser(full: bool = False, chosen: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The whole command line; flags are generated for the chosen command only (all of them if `full`)."""
    p = argparse.ArgumentParser(
        prog="wit", description="Rebuild CLIP's WebImageText dataset construction and train CLIP on it.",
        epilog="Flags wit does not know (for build, demo and queries build) are passed to Apache Beam, "
               "e.g. --runner DataflowRunner --project P --region R --temp_location gs://B/tmp.",
        allow_abbrev=False)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level; tracebacks for every error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for cmd in COMMANDS:
        where = sub
        if len(cmd.path) == 2:
            if cmd.path[0] not in groups:
                g = sub.add_parser(cmd.path[0], help=GROUPS[cmd.path[0]], allow_abbrev=False)
                groups[cmd.path[0]] = g.add_subparsers(dest=f"{cmd.path[0]}_command", required=True,
                                                       metavar="COMMAND")
            where = groups[cmd.path[0]]
        sp = where.add_parser(cmd.path[-1], help=cmd.help, description=cmd.description or cmd.help,
                              allow_abbrev=False)
        sp.set_defaults(cmd=cmd)
        if full or cmd.path == chosen:
            add_arguments(sp, cmd.load(cmd.options))
    return p


def beam_args(extra: Sequence[str], known: Sequence[str]) -> list[str]:
    """`extra` if Apache Beam knows every flag in it; otherwise an OptionError naming the first stranger."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    beam_parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(beam_parser)  # how PipelineOptions.get_all_options learns every flag
    _, unknown = beam_parser.parse_known_args(list(extra))
    strangers = [u.split("=", 1)[0] for u in unknown if u.startswith("-")]
    if unknown and not strangers:
        strangers = unknown
    if strangers:
        beam_flags = [s for a in beam_parser._actions for s in a.option_strings]
        close = difflib.get_close_matches(strangers[0], list(known) + beam_flags, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise OptionError(f"{strangers[0]}: neither a wit flag nor an Apache Beam pipeline option{hint}")
    return list(extra)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    before_command = itertools.takewhile(lambda t: t.startswith("-"), argv)
    verbose = bool({"-v", "--verbose"} & set(before_command))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(QuietBeamImport())
        if not verbose:
            handler.addFilter(QuietUserErrors())
    p = parser(chosen=_chosen(argv))
    args, extra = p.parse_known_args(argv)
    cmd: Command = args.cmd
    name = " ".join(cmd.path)
    try:
        if extra and not cmd.beam:
            raise OptionError(f"{extra[0]}: not a flag of `wit {name}` (see wit {name} --help)")
        if extra:
            extra = beam_args(extra, _flags_of(p, cmd))
        run: Callable = cmd.load(cmd.run)
        return run(from_args(cmd.load(cmd.options), args), extra)
    except (WitError, OSError) as e:
        if args.verbose:
            traceback.print_exc()
        print(f"wit {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        print(f"wit {name}: interrupted{cmd.resumes and '; run the same command again to resume' or ''}",
              file=sys.stderr)
        return 130  # the shell's status for a command ended by SIGINT


def _flags_of(p: argparse.ArgumentParser, cmd: Command) -> list[str]:
    """The flags of the chosen command's parser (for "did you mean")."""
    sp = p
    for word in cmd.path:
        action = next(a for a in sp._actions if isinstance(a, argparse._SubParsersAction))
        sp = action.choices[word]
    return [s for a in sp._actions for s in a.option_strings]


def entry() -> None:
    """The `wit` executable. When the command is done, its objects are frozen out of the collector: the
    interpreter's collection at exit would walk all the job left behind (Beam's graph, the fetching threads'
    state) to free memory the process is about to give back, a measurable part of a short build's wall time
    (bench/download.py). `main` itself does not freeze: tests call it many times in one process."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
