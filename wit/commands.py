"""What each `wit` subcommand does with its options: run the job, then tell the user what it made."""

from __future__ import annotations

import json
import os
from typing import Sequence


def build(opts, beam_args: Sequence[str]) -> int:
    from pipelines.build import run_build
    from wit.summary import summary

    stats = run_build(opts, beam_args)
    print(summary(stats, opts.out))
    return 0


def demo(opts, beam_args: Sequence[str]) -> int:
    from wit.demo import run_demo

    run_demo(opts, beam_args)
    return 0


def report(opts, beam_args: Sequence[str]) -> int:
    from wit.report import write_report

    print(f"wrote {write_report(opts.dir, opts.out, opts.queries, opts.per_query)}")
    return 0


def queries_build(opts, beam_args: Sequence[str]) -> int:
    from queries.build import build as build_queries, summary, write

    result = build_queries(opts, beam_args)
    paths = write(result, opts.out)
    print(summary(result))
    print(f"wrote {paths['queries.txt']} (one query per line; `wit build --queries` takes it), "
          f"{paths['queries.tsv']} (query, source, count, pmi) and {paths['composition.json']}")
    return 0


def queries_download(opts, beam_args: Sequence[str]) -> int:
    from queries.download import MANIFEST, download

    manifest = download(opts)
    print(manifest.summary())
    print(f"wrote {os.path.join(os.path.abspath(opts.out), MANIFEST)}; next: wit queries build --from {opts.out} "
          f"--out queries/")
    return 0


def tokenizer_train(opts, beam_args: Sequence[str]) -> int:
    from trainer.data import iter_captions, list_shards
    from trainer.tokenizer import train_tokenizer

    shards = list_shards(opts.shards)
    tok = train_tokenizer(iter_captions(shards), vocab_size=opts.vocab_size, min_frequency=opts.min_frequency)
    tok.save(opts.out)
    print(f"trained a byte-level BPE of {tok.vocab_size:,} tokens on the captions of {len(shards)} shard(s); "
          f"wrote {opts.out}")
    return 0


def train(opts, beam_args: Sequence[str]) -> int:
    from trainer.evaluate import format_results
    from trainer.train import train as run_training

    summary = run_training(opts)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 reports
    if summary.eval:
        print(format_results(summary.eval))
    loss = "" if summary.final_loss is None else f" (last loss {summary.final_loss:.4f})"
    print(f"trained {summary.steps} steps{loss}; checkpoint {summary.checkpoint}; "
          f"corrupt samples skipped: {summary.corrupt_samples}")
    return 0


def export_openclip(opts, beam_args: Sequence[str]) -> int:
    from trainer.openclip import export

    paths = export(opts.checkpoint, opts.out, opts.hub_id)
    print(f"wrote {len(paths)} files to {opts.out}; load with "
          f"open_clip.create_model_and_transforms('local-dir:{opts.out}')")
    return 0


def evaluate(opts, beam_args: Sequence[str]) -> int:
    from trainer.evaluate import evaluate as run_eval, format_results, load_for_eval
    from wit.core import fileio
    model, tok, device = load_for_eval(opts.checkpoint, opts.device)
    results = run_eval(model, tok, opts.shards, opts.zeroshot, device, opts.batch_size)
    print(format_results(results))
    if opts.json:
        fileio.write_bytes(opts.json, json.dumps(results, indent=1).encode())
    return 0
