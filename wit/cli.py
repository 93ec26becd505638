"""The `wit` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import logging
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
                     help="name matched against X-Robots-Tag user-agent-specific directives")


def _build_options(a: argparse.Namespace):
    from pipelines.build import BuildOptions
    from pipelines.fetch import FetchOptions
    from pipelines.resize import ResizeOptions

    return BuildOptions(
        candidates=tuple(a.candidates), queries=a.queries, out=a.out, per_query_cap=a.per_query_cap,
        shard_size=a.shard_size, seed=a.seed, input_format=a.input_format, url_col=a.url_col,
        caption_col=a.caption_col, threads=a.threads, near_dup_threshold=a.near_dup_threshold,
        resize=ResizeOptions(image_size=a.image_size, resize_mode=a.resize_mode,
                             resize_only_if_bigger=a.resize_only_if_bigger, encode_quality=a.encode_quality,
                             max_pixels=a.max_pixels, min_image_size=a.min_image_size),
        fetch=FetchOptions(timeout=a.timeout, retries=a.retries, retry_backoff=a.retry_backoff,
                           max_redirects=a.max_redirects, max_bytes=a.max_bytes,
                           user_agent_token=a.user_agent_token),
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
             beam_args=beam_args)
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

    d = sub.add_parser("demo", help="build a small dataset from the bundled synthetic web, end to end")
    d.add_argument("--out", default="wit-demo", help="demo directory (default ./wit-demo, replaced each run)")
    d.add_argument("--count", type=int, default=3000, help="candidate pairs to generate")
    d.add_argument("--per-query-cap", type=int, default=150)
    d.add_argument("--shard-size", type=int, default=500)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("synthweb", help="write a synthetic candidate list and serve its images on 127.0.0.1")
    s.add_argument("--out", required=True)
    s.add_argument("--count", type=int, default=3000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--slow-seconds", type=float, default=3.0)
    s.add_argument("--serve-seconds", type=float, default=-1, help="stop after this long (-1: until Ctrl-C)")
    s.set_defaults(func=cmd_synthweb)

    _add_queries(sub)
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
