"""The `wit` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence


class QuietBeamImport(logging.Filter):
    """Beam warns at import about optional GCP clients; irrelevant unless you use them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


def _add_build_args(p: argparse.ArgumentParser) -> None:
    from pipelines.resize import RESIZE_MODES

    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--candidates", required=True, action="append",
                    help="file glob of candidate pairs (Parquet, JSONL, CSV/TSV; local, gs://, s3://); repeatable")
    io.add_argument("--queries", required=True, help="query list: one per line, or the TSV from `wit queries build`")
    io.add_argument("--out", required=True, help="output directory (local or any Beam filesystem)")
    io.add_argument("--input-format", default="auto", choices=["auto", "parquet", "jsonl", "csv", "tsv"])
    io.add_argument("--url-col", default="url")
    io.add_argument("--caption-col", default="caption")
    sel = p.add_argument_group("selection")
    sel.add_argument("--per-query-cap", type=int, default=20_000, help="pairs kept per query (default 20000)")
    sel.add_argument("--seed", type=int, default=0, help="seed of the balancing order (default 0)")
    sel.add_argument("--caption-dup-threshold", type=float, default=0.0,
                     help="drop pairs whose caption's word-3-gram Jaccard similarity (MinHash LSH) to a kept "
                          "caption reaches this, e.g. 0.9; 0 (default) keeps them; drops listed in "
                          "DIR/caption_near_duplicates.tsv")
    sel.add_argument("--near-dup-threshold", type=int, default=4,
                     help="max Hamming distance of 64-bit pHashes counted as near duplicates; -1 disables")
    img = p.add_argument_group("images")
    img.add_argument("--image-size", type=int, default=256)
    img.add_argument("--resize-mode", default="border", choices=RESIZE_MODES)
    img.add_argument("--resize-only-if-bigger", action="store_true")
    img.add_argument("--encode-quality", type=int, default=95)
    img.add_argument("--min-image-size", type=int, default=0)
    img.add_argument("--max-pixels", type=int, default=89_478_485, help="refuse larger images (decompression bombs)")
    net = p.add_argument_group("fetching")
    net.add_argument("--shard-size", type=int, default=10_000, help="samples per shard (default 10000)")
    net.add_argument("--threads", type=int, default=32, help="download threads per shard being fetched")
    net.add_argument("--timeout", type=float, default=10.0, help="seconds per request, body included")
    net.add_argument("--retries", type=int, default=2)
    net.add_argument("--retry-backoff", type=float, default=0.5, help="first backoff in seconds, doubled each retry")
    net.add_argument("--max-redirects", type=int, default=5)
    net.add_argument("--max-bytes", type=int, default=32 * 1024 * 1024)
    net.add_argument("--user-agent-token", default="wit",
                     help="name matched against robots.txt groups and X-Robots-Tag user-agent directives")
    net.add_argument("--allow-private-networks", action="store_true",
                     help="fetch from loopback, private and link-local addresses (tests, intranets); "
                          "refused by default, on every redirect hop")
    net.add_argument("--max-per-host", type=int, default=8, help="concurrent requests to one host per worker")
    net.add_argument("--max-retry-after", type=float, default=30.0,
                     help="longest Retry-After (429/503) waited for; longer fails the sample")
    net.add_argument("--no-robots-txt", action="store_true", help="do not fetch and honour robots.txt")


def _build_options(a: argparse.Namespace):
    from pipelines.build import BuildOptions
    from pipelines.fetch import FetchOptions
    from pipelines.resize import ResizeOptions

    return BuildOptions(
        candidates=tuple(a.candidates), queries=a.queries, out=a.out, per_query_cap=a.per_query_cap,
        shard_size=a.shard_size, seed=a.seed, input_format=a.input_format, url_col=a.url_col,
        caption_col=a.caption_col, threads=a.threads, near_dup_threshold=a.near_dup_threshold,
        caption_dup_threshold=a.caption_dup_threshold,
        resize=ResizeOptions(image_size=a.image_size, resize_mode=a.resize_mode,
                             resize_only_if_bigger=a.resize_only_if_bigger, encode_quality=a.encode_quality,
                             max_pixels=a.max_pixels, min_image_size=a.min_image_size),
        fetch=FetchOptions(timeout=a.timeout, retries=a.retries, retry_backoff=a.retry_backoff,
                           max_redirects=a.max_redirects, max_bytes=a.max_bytes,
                           user_agent_token=a.user_agent_token, allow_private_networks=a.allow_private_networks,
                           max_per_host=a.max_per_host, max_retry_after=a.max_retry_after,
                           robots_txt=not a.no_robots_txt),
    )


def cmd_build(a: argparse.Namespace, beam_args: list[str]) -> int:
    from pipelines.build import run_build
    from wit.report import summary

    stats = run_build(_build_options(a), beam_args)
    print(summary(stats, a.out))
    return 0


def cmd_demo(a: argparse.Namespace, beam_args: list[str]) -> int:
    from wit.demo import run_demo

    run_demo(out=a.out, count=a.count, per_query_cap=a.per_query_cap, shard_size=a.shard_size, seed=a.seed,
             beam_args=beam_args, train_steps=a.train_steps, model=a.model)
    return 0


def cmd_synthweb(a: argparse.Namespace, beam_args: list[str]) -> int:
    import time

    from wit import fileio
    from wit.synthweb import SyntheticServer, SyntheticWeb

    web = SyntheticWeb(seed=a.seed, count=a.count)
    with SyntheticServer(web, port=a.port, slow_seconds=a.slow_seconds) as server:
        rows = web.write_candidates(fileio.join(a.out, "candidates.parquet"), server.base_url)
        web.write_queries(fileio.join(a.out, "queries.txt"))
        print(f"wrote {len(rows)} candidates to {a.out}/candidates.parquet and the queries to {a.out}/queries.txt")
        print(f"serving on {server.base_url} (Ctrl-C to stop)")
        if a.serve_seconds == 0:
            return 0
        try:
            deadline = time.monotonic() + a.serve_seconds if a.serve_seconds > 0 else float("inf")
            while time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_queries_build(a: argparse.Namespace, beam_args: list[str]) -> int:
    from queries.assemble import Thresholds
    from queries.build import QueryInputs, build, summary, write

    inputs = QueryInputs(wikipedia=tuple(a.wikipedia), unigrams=tuple(a.unigrams), bigrams=tuple(a.bigrams),
                         pageviews=tuple(a.pageviews), wordnet=a.wordnet, work=a.work or f"{a.out}/counts")
    thresholds = Thresholds(target=a.target, min_word_count=a.min_word_count, min_bigram_count=a.min_bigram_count,
                            min_pmi=a.min_pmi, min_views=a.min_views)
    result = build(inputs, thresholds, beam_args)
    paths = write(result, a.out)
    print(summary(result))
    print(f"wrote {paths['queries.txt']} (one query per line; `wit build --queries` takes it), "
          f"{paths['queries.tsv']} (query, source, count, pmi) and {paths['composition.json']}")
    return 0


def _add_queries(sub) -> None:
    from queries.assemble import DEFAULT_MIN_PMI

    q = sub.add_parser("queries", help="regenerate CLIP's 500,000-query list")
    qsub = q.add_subparsers(dest="queries_command", required=True, metavar="COMMAND")
    b = qsub.add_parser("build", help="words, PMI bigrams, popular titles and WordNet lemmas -> queries.txt",
                        description="With no input, unigrams come from the wordfreq package (offline default).")
    b.add_argument("--out", required=True, help="directory for queries.txt, queries.tsv and composition.json")
    b.add_argument("--wikipedia", action="append", default=[],
                   help="pages-articles dump(s), .xml or .xml.bz2 (glob; repeatable); counted with Beam")
    b.add_argument("--unigrams", action="append", default=[], help="precomputed 'word<TAB>count' file(s)")
    b.add_argument("--bigrams", action="append", default=[], help="precomputed 'w1 w2<TAB>count' file(s)")
    b.add_argument("--pageviews", action="append", default=[],
                   help="pageview dump file(s) ('en Title views bytes' lines), summed (glob; repeatable)")
    b.add_argument("--wordnet", help="WordNet 3.0 database directory or WN-LMF XML (default /usr/share/wordnet "
                                     "if present)")
    b.add_argument("--work", help="directory for the counting job's output (default OUT/counts)")
    b.add_argument("--target", type=int, default=500_000)
    b.add_argument("--min-word-count", type=int, default=100)
    b.add_argument("--min-bigram-count", type=int, default=100)
    b.add_argument("--min-pmi", type=float, default=DEFAULT_MIN_PMI,
                   help="log2 PMI threshold (default log2(30): co-occurring 30x more often than by chance)")
    b.add_argument("--min-views", type=int, default=1_000, help="page views summed over --pageviews files")
    b.set_defaults(func=cmd_queries_build)


def cmd_tokenizer_train(a: argparse.Namespace, beam_args: list[str]) -> int:
    from trainer.data import list_shards
    from trainer.tokenizer import train_tokenizer
    from trainer.train import iter_captions

    shards = list_shards(a.shards)
    tok = train_tokenizer(iter_captions(shards), vocab_size=a.vocab_size, min_frequency=a.min_frequency)
    tok.save(a.out)
    print(f"trained a byte-level BPE of {tok.vocab_size:,} tokens on the captions of {len(shards)} shard(s); "
          f"wrote {a.out}")
    return 0


def cmd_train(a: argparse.Namespace, beam_args: list[str]) -> int:
    from trainer.train import TrainConfig, train

    cfg = TrainConfig(
        shards=tuple(a.shards), out=a.out, model=a.model, tokenizer=a.tokenizer, vocab_size=a.vocab_size,
        batch_size=a.batch_size, steps=a.steps, lr=a.lr, weight_decay=a.wd, warmup=a.warmup, precision=a.precision,
        grad_checkpointing=a.grad_checkpointing, compile=a.compile, workers=a.workers,
        shuffle_buffer=a.shuffle_buffer, min_crop_scale=a.min_crop_scale, seed=a.seed, save_every=a.save_every,
        log_every=a.log_every, resume=not a.no_resume, stop_after=a.stop_after, val_shards=tuple(a.val_shards),
        zeroshot=tuple(a.zeroshot),
        device=a.device, progress=not a.no_progress)
    summary = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 reports
    if summary.get("eval"):
        from trainer.evaluate import format_results

        print(format_results(summary["eval"]))
    loss = "" if summary["final_loss"] is None else f" (last loss {summary['final_loss']:.4f})"
    print(f"trained {summary['steps']} steps{loss}; checkpoint {summary['checkpoint']}; "
          f"corrupt samples skipped: {summary['corrupt_samples']}")
    return 0


def cmd_eval(a: argparse.Namespace, beam_args: list[str]) -> int:
    import json

    from trainer.evaluate import evaluate, format_results, load_for_eval

    if not a.shards and not a.zeroshot:
        raise ValueError("nothing to evaluate: pass --shards (retrieval) and/or --zeroshot DIR")
    model, tok, device = load_for_eval(a.checkpoint, a.device)
    results = evaluate(model, tok, a.shards, a.zeroshot, device, a.batch_size)
    print(format_results(results))
    if a.json:
        from wit import fileio

        fileio.write_bytes(a.json, json.dumps(results, indent=1).encode())
    return 0


def cmd_report(a: argparse.Namespace, beam_args: list[str]) -> int:
    from wit.html_report import write_report

    path = write_report(a.dir, a.out, a.queries, a.per_query)
    print(f"wrote {path}")
    return 0


def _add_trainer(sub) -> None:
    from trainer.model import CONFIGS

    t = sub.add_parser("tokenizer", help="train the byte-level BPE tokenizer on the dataset's captions")
    tsub = t.add_subparsers(dest="tokenizer_command", required=True, metavar="COMMAND")
    tt = tsub.add_parser("train", help="shards -> tokenizer.json")
    tt.add_argument("--shards", required=True, action="append", help="tar shards: glob or directory; repeatable")
    tt.add_argument("--out", required=True, help="tokenizer.json to write")
    tt.add_argument("--vocab-size", type=int, default=49408)
    tt.add_argument("--min-frequency", type=int, default=2)
    tt.set_defaults(func=cmd_tokenizer_train)

    tr = sub.add_parser("train", help="train CLIP on webdataset shards (torchrun for several GPUs)",
                        description="Resumes from OUT/checkpoints when present. Several GPUs: "
                                    "torchrun --nproc_per_node N -m wit.cli train ...")
    tr.add_argument("--shards", required=True, action="append", help="training shards: glob or directory; repeatable")
    tr.add_argument("--out", required=True, help="directory for checkpoints, tokenizer.json and TensorBoard logs")
    tr.add_argument("--model", default="ViT-B-32", choices=list(CONFIGS))
    tr.add_argument("--tokenizer", help="tokenizer.json (default OUT/tokenizer.json, trained on the shards if absent)")
    tr.add_argument("--vocab-size", type=int, default=49408, help="when training the tokenizer")
    tr.add_argument("--batch-size", type=int, default=256, help="per GPU")
    tr.add_argument("--steps", type=int, default=10_000)
    tr.add_argument("--lr", type=float, default=5e-4)
    tr.add_argument("--wd", type=float, default=0.2)
    tr.add_argument("--warmup", type=int, default=500)
    tr.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="auto: bf16 on CUDA")
    tr.add_argument("--grad-checkpointing", action="store_true")
    tr.add_argument("--compile", action="store_true", help="torch.compile the model")
    tr.add_argument("--workers", type=int, default=4, help="loader processes per GPU")
    tr.add_argument("--shuffle-buffer", type=int, default=2000)
    tr.add_argument("--min-crop-scale", type=float, default=0.9, help="smallest random square crop (of the short side)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--save-every", type=int, default=1000)
    tr.add_argument("--log-every", type=int, default=10)
    tr.add_argument("--no-resume", action="store_true", help="ignore checkpoints in OUT (they get overwritten)")
    tr.add_argument("--stop-after", type=int, help="end this run at this step and checkpoint (rerun to go on)")
    tr.add_argument("--val-shards", action="append", default=[], help="held-out shards for retrieval at the end")
    tr.add_argument("--zeroshot", action="append", default=[],
                    help="classification set dir(s) for zero-shot at the end")
    tr.add_argument("--device", help="default cuda:LOCAL_RANK if available, else cpu")
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="zero-shot classification and retrieval R@1/5/10",
                       description="--zeroshot DIR: classnames.txt, zeroshot_classification_templates.txt ({c} = "
                                   "class name) and tar shards with an image and cls per sample (clip_benchmark's "
                                   "webdataset layout). --shards: held-out image-caption shards for retrieval.")
    e.add_argument("--checkpoint", required=True, help="a .pt checkpoint or a `wit train --out` directory")
    e.add_argument("--shards", action="append", default=[])
    e.add_argument("--zeroshot", action="append", default=[])
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--device")
    e.add_argument("--json", help="also write the results here as JSON")
    e.set_defaults(func=cmd_eval)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wit", description="Rebuild CLIP's WebImageText dataset construction and train CLIP on it.",
        epilog="Options wit does not know (for `build` and `demo`) are passed to Apache Beam, "
               "e.g. --runner DataflowRunner --project P --region R --temp_location gs://B/tmp.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("build", help="run the Beam job: candidate pairs -> balanced, deduplicated shards")
    _add_build_args(b)
    b.set_defaults(func=cmd_build)

    d = sub.add_parser("demo", help="build a small dataset from the bundled synthetic web, then train a tiny CLIP")
    d.add_argument("--out", default="wit-demo", help="demo directory (default ./wit-demo, replaced each run)")
    d.add_argument("--count", type=int, default=6000, help="candidate pairs to generate")
    d.add_argument("--per-query-cap", type=int, default=150)
    d.add_argument("--shard-size", type=int, default=1000)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--train-steps", type=int, default=400, help="steps of the tiny CLIP trained afterwards (0: skip)")
    d.add_argument("--model", default="tiny-vit", help="model the demo trains (default tiny-vit)")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("synthweb", help="write a synthetic candidate list and serve its images on 127.0.0.1")
    s.add_argument("--out", required=True)
    s.add_argument("--count", type=int, default=3000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--slow-seconds", type=float, default=3.0)
    s.add_argument("--serve-seconds", type=float, default=-1, help="stop after this long (-1: until Ctrl-C)")
    s.set_defaults(func=cmd_synthweb)

    r = sub.add_parser("report", help="an HTML page of plots and sample images for a built dataset")
    r.add_argument("dir", help="the --out directory of `wit build`")
    r.add_argument("--out", help="HTML file to write (default DIR/report.html)")
    r.add_argument("--queries", type=int, default=8, help="largest queries shown with sample images")
    r.add_argument("--per-query", type=int, default=6, help="sample images per query")
    r.set_defaults(func=cmd_report)

    _add_queries(sub)
    _add_trainer(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra and args.command not in ("build", "demo", "queries"):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(QuietBeamImport())
    try:
        return args.func(args, extra)
    except (ValueError, OSError) as e:
        print(f"wit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
