"""wit against the tools its users combine it with, each real and in a venv of its own (run by hand, not in CI).

    python bench/compat.py [--work /tmp/wit-compat] [--steps 300]

The venvs are made once under WORK/venvs (several GB; pip takes torch from this disk where it can):
  img2dataset   img2dataset 1.47.0 (it pins webdataset<0.3)
  openclip      open-clip-torch[training] 3.3.0 (open_clip and open_clip_train), clip-benchmark 1.6.2 and
                transformers (OpenCLIP reads a Hugging Face tokenizer through it). torchvision has no CPU
                build for torch 2.13.0, wit's CPU pin: the nearest working pair here is torch 2.14.1 +
                torchvision 0.29.1. clip-benchmark 1.6.2 needs `requests` and numpy < 2.4.

Round trips, on one synthetic web served on 127.0.0.1:
  1. wit builds shards; img2dataset downloads the URLs wit stored, from the same server. Per URL: image
     sizes and channels equal, mean pixel difference at most 2/255. `wit eval` reads img2dataset's shards.
  2. wit trains a tiny CLIP (the demo's recipe); `wit export openclip` writes it as an OpenCLIP folder.
     OpenCLIP loads it strictly (`create_model_and_transforms('local-dir:...')`); its tokenizer gives wit's
     ids; its features on the same inputs equal wit's.
  3. clip_benchmark scores the folder on wit's zero-shot sets and a retrieval set with two captions per
     image, all in clip_benchmark's layout; its numbers are compared with `wit eval`'s.
  4. open_clip_train fine-tunes the folder on wit's shards with no --train-num-samples (it reads
     shards/sizes.json); its checkpoint, as an OpenCLIP folder, starts `wit train --init-from` (lr 0, so
     the weights stay), and `wit eval` of that run is compared with clip_benchmark's on the folder.
Exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import torch  # noqa: E402

from images import GOAL, compare  # noqa: E402
from pipelines.build import BuildOptions, run_build  # noqa: E402
from pipelines.fetch import FetchOptions  # noqa: E402
from trainer import openclip  # noqa: E402
from trainer.checkpoint import load_model  # noqa: E402
from trainer.evaluate import evaluate, retrieval, write_retrieval_set  # noqa: E402
from trainer.train import TrainConfig, train  # noqa: E402
from wit.demo import train_demo  # noqa: E402
from wit.synthweb import SyntheticServer, SyntheticWeb  # noqa: E402

VENVS = {
    "img2dataset": ["img2dataset==1.47.0"],
    "openclip": ["torch==2.14.1", "torchvision==0.29.1", "open-clip-torch[training]==3.3.0", "clip-benchmark==1.6.2",
                 "transformers", "requests", "numpy<2.4"],
}
RUNNER = ["--runner=FnApiRunner", "--direct_num_workers=2", "--direct_running_mode=multi_threading"]
FEATURE_TOLERANCE = 1e-5  # two builds of torch, two attention kernels

# Run by the openclip venv: argv = folder, inputs .npz, output .npz.
OPENCLIP_SIDE = r"""
import sys, numpy as np, torch, open_clip
folder, inputs, out = sys.argv[1:4]
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)  # strict load
tok = open_clip.get_tokenizer("local-dir:" + folder)
x = np.load(inputs)
texts = [str(t) for t in x["texts"]]
ids = tok(texts)
cfg = open_clip.get_model_preprocess_cfg(model)
mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
images = (torch.from_numpy(x["images"]).float() / 255 - mean) / std
model.eval()
with torch.no_grad():
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(ids, normalize=True)
np.savez(out, ids=ids.numpy(), image=img.numpy(), text=txt.numpy())
print(type(tok).__name__, sum(p.numel() for p in model.parameters()))
"""


def run(cmd: list[str], log: str, **kw) -> str:
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    with open(log, "w") as f:
        f.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}) after {time.monotonic() - started:.0f}s: {' '.join(cmd[:4])} ...; "
                 f"see {log}\n{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


def venv(work: str, name: str) -> str:
    """WORK/venvs/NAME/bin, made and filled once."""
    path = os.path.join(work, "venvs", name)
    done = os.path.join(path, ".installed")
    if not os.path.exists(done):
        print(f"making the {name} venv ({' '.join(VENVS[name])}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", path], check=True)
        run([os.path.join(path, "bin", "pip"), "install", "-q", *VENVS[name]], os.path.join(work, f"pip-{name}.log"))
        open(done, "w").close()
    return os.path.join(path, "bin")


class Checks:
    def __init__(self):
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            self.failed.append(what)


def _tar_members(pattern: str) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for path in sorted(glob.glob(pattern)):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def _stored(folder: str, url_col: str = "url") -> dict[str, bytes]:
    """url -> stored image bytes, from a shard folder's Parquet (key, status) and tars."""
    table = pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(os.path.join(folder, "*.parquet")))])
    rows = table.to_pylist()
    members = _tar_members(os.path.join(folder, "*.tar"))
    return {r[url_col]: members[r["key"]]["jpg"] for r in rows if r["status"] == "success" and r["key"] in members}


def images_round_trip(work: str, bins: dict[str, str], count: int, check: Checks) -> str:
    print("1. wit build, then img2dataset on the URLs wit stored, from the same server", flush=True)
    web = SyntheticWeb(seed=0, count=count)
    dataset, i2d = os.path.join(work, "wit"), os.path.join(work, "img2dataset")
    shutil.rmtree(i2d, ignore_errors=True)
    with SyntheticServer(web) as server:
        web.write_candidates(os.path.join(work, "candidates.parquet"), server.base_url)
        web.write_queries(os.path.join(work, "queries.txt"))
        if not os.path.exists(os.path.join(dataset, "shards", "sizes.json")):
            run_build(BuildOptions(candidates=(os.path.join(work, "candidates.parquet"),),
                                   queries=os.path.join(work, "queries.txt"), out=dataset, per_query_cap=150,
                                   shard_size=1000, threads=32,
                                   fetch=FetchOptions(timeout=1.5, retries=1, retry_backoff=0.1,
                                                      allow_private_networks=True)), RUNNER)
        ours = _stored(os.path.join(dataset, "shards"))
        captions = {r["url"]: r["caption"] for p in glob.glob(os.path.join(dataset, "shards", "*.parquet"))
                    for r in pq.read_table(p, columns=["url", "caption"]).to_pylist()}
        urls = os.path.join(work, "urls.parquet")
        pq.write_table(pa.table({"url": list(ours), "caption": [captions[u] for u in ours]}), urls)
        run([os.path.join(bins["img2dataset"], "img2dataset"), "--url_list", urls, "--input_format", "parquet",
             "--url_col", "url", "--caption_col", "caption", "--output_folder", i2d, "--output_format", "webdataset",
             "--image_size", "256",
             "--resize_mode", "border", "--processes_count", "1", "--thread_count", "16", "--timeout", "5",
             "--number_sample_per_shard", "1000", "--enable_wandb", "False", "--disallowed_header_directives", "[]"],
            os.path.join(work, "img2dataset.log"))
    theirs = _stored(i2d)
    both = sorted(set(ours) & set(theirs))
    results = [compare(ours[u], theirs[u]) for u in both]
    sizes, modes = sum(r[0] for r in results), sum(r[1] for r in results)
    diffs = np.array([r[2] for r in results])
    print(f"  wit stored {len(ours):,} images; img2dataset {len(theirs):,} of the same URLs; compared {len(both):,}")
    check(len(both) == len(ours), f"img2dataset fetched every URL wit stored ({len(both):,}/{len(ours):,})")
    check(sizes == modes == len(both), f"sizes equal {sizes:,}/{len(both):,}, channels equal {modes:,}/{len(both):,}")
    check(bool(np.nanmax(diffs) <= GOAL), f"mean pixel difference {np.nanmean(diffs) * 255:.2f}/255, "
                                          f"worst {np.nanmax(diffs) * 255:.2f}/255 (goal {GOAL * 255:.0f}/255)")
    return dataset


def _drawings(seed: int) -> list[tuple[bytes, list[str]]]:
    """Held-out drawings, one per concept, with two captions each, put through the build's resize. No two
    images share a caption: tied scores would be ordered by each tool's float noise."""
    from pipelines.resize import ResizeOptions, resize_image
    from wit.synthweb import draw
    from wit.synthweb.vocab import COLOURS, SHAPES, Concept

    out = []
    for i, concept in enumerate(Concept(c, s) for c in COLOURS for s in SHAPES):
        jpg = resize_image(draw.encode(draw.render(draw.make_drawing(seed + 104729, i, concept))),
                           ResizeOptions()).jpeg
        out.append((jpg, [f"a {concept.colour} {concept.shape}",
                          f"a drawing of a {concept.shape} in {concept.colour}"]))
    return out


def _eval_inputs(sets: list[str], path: str) -> None:
    samples = _tar_members(os.path.join(sets[0], "test", "*.tar"))
    from PIL import Image

    images = [np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB").resize((64, 64), Image.BICUBIC))
              for s in list(samples.values())[:16]]
    texts = ["a red circle", "something blue", "a drawing of a star in green", "clip art: a square thing", "a",
             "a photo of a very very long description " * 6]
    np.savez(path, images=np.stack(images).transpose(0, 3, 1, 2), texts=np.array(texts))


def _clip_benchmark(bins: dict, folder: str, sets: dict[str, str], out: str) -> dict[str, dict]:
    os.makedirs(out, exist_ok=True)
    results = {}
    for name, root in sets.items():
        dest = os.path.join(out, f"{name}.json")
        run([os.path.join(bins["openclip"], "clip_benchmark"), "eval", "--model", f"local-dir:{folder}",
             "--pretrained", "wit", "--dataset", f"wds/{name}", "--dataset_root", root, "--no_amp", "--task",
             "zeroshot_retrieval" if name == "retrieval" else "zeroshot_classification",
             "--num_workers", "0", "--batch_size", "64", "--recall_k", "1", "5", "10", "--output", dest],
            dest + ".log")
        with open(dest) as f:
            results[name] = json.load(f)["metrics"]
    return results


PAIRS = {"acc1": "top1", "acc5": "top5", "mean_per_class_recall": "mean_per_class_recall",
         **{f"image_retrieval_recall@{k}": f"text_to_image_R@{k}" for k in (1, 5, 10)},
         **{f"text_retrieval_recall@{k}": f"image_to_text_R@{k}" for k in (1, 5, 10)}}


def _compare_scores(cb: dict[str, dict], ours: dict, check: Checks) -> None:
    for name, metrics in cb.items():
        mine = ours["retrieval"] if name == "retrieval" else ours[f"zeroshot/{name}"]
        shown = [(k, v, mine[PAIRS[k]]) for k, v in metrics.items() if k in PAIRS]
        same = all(abs(a - b) < 1e-9 for _, a, b in shown)
        check(same, f"{name}: clip_benchmark = wit eval: " + ", ".join(
            f"{k} {a:.4f}" + ("" if abs(a - b) < 1e-9 else f" (wit {b:.4f})") for k, a, b in shown))


def model_round_trips(work: str, bins: dict[str, str], dataset: str, steps: int, check: Checks) -> None:
    print("2. wit train -> wit export openclip -> OpenCLIP", flush=True)
    run_dir, zs = os.path.join(work, "train"), os.path.join(work, "zeroshot")
    if not os.path.exists(os.path.join(run_dir, "checkpoints", "latest")):
        train_demo(dataset, run_dir, zs, steps, "tiny-vit", 0)
    sets = {name: os.path.join(zs, name) for name in ("colours", "shapes", "colour-shapes")}
    sets["retrieval"] = os.path.join(work, "retrieval")
    shutil.rmtree(sets["retrieval"], ignore_errors=True)
    write_retrieval_set(sets["retrieval"], _drawings(0), shard_size=50)
    folder = os.path.join(work, "export")
    shutil.rmtree(folder, ignore_errors=True)
    openclip.export(run_dir, folder)
    inputs, outputs = os.path.join(work, "inputs.npz"), os.path.join(work, "openclip-features.npz")
    _eval_inputs([sets["colours"]], inputs)
    said = run([os.path.join(bins["openclip"], "python"), "-c", OPENCLIP_SIDE, folder, inputs, outputs],
               os.path.join(work, "openclip-load.log"))
    check("HFTokenizer" in said, f"OpenCLIP loaded local-dir:{folder} with strict=True ({said.strip()})")
    model, tok = load_model(run_dir)
    x, y = np.load(inputs), np.load(outputs)
    texts = [str(t) for t in x["texts"]]
    ids = tok(texts)
    check(np.array_equal(y["ids"], ids.numpy()), f"OpenCLIP's tokenizer gives wit's ids ({len(texts)} texts)")
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(x["images"])).numpy()
        txt = model.encode_text(ids).numpy()
    worst = max(float(np.abs(img - y["image"]).max()), float(np.abs(txt - y["text"]).max()))
    check(worst <= FEATURE_TOLERANCE, f"features equal: largest difference {worst:.2e} over "
                                      f"{len(img)} images and {len(texts)} texts (torch {torch.__version__} here)")

    print("3. clip_benchmark on the export, on wit's sets in its layout", flush=True)
    ours = evaluate(model, tok, [sets["retrieval"]], [sets[n] for n in ("colours", "shapes", "colour-shapes")],
                    torch.device("cpu"))
    _compare_scores(_clip_benchmark(bins, folder, sets, os.path.join(work, "clip_benchmark")), ours, check)
    i2d = sorted(glob.glob(os.path.join(work, "img2dataset", "*.tar")))
    r = retrieval(model, tok, i2d, torch.device("cpu"))
    check(r["n"] > 0 and r["skipped"] == 0, f"wit eval read img2dataset's shards: {r['n']:,} images, "
                                            f"image_to_text_R@1 {r['image_to_text_R@1']:.3f}")

    print("4. open_clip_train on wit's shards from the export, then back into wit", flush=True)
    shards = sorted(glob.glob(os.path.join(dataset, "shards", "*.tar")))
    logs = os.path.join(work, "open_clip_train")
    shutil.rmtree(logs, ignore_errors=True)
    said = run([os.path.join(bins["openclip"], "python"), "-m", "open_clip_train.main",
                "--model", f"local-dir:{folder}",
                "--train-data", "::".join(shards), "--dataset-type", "webdataset", "--batch-size", "32",
                "--epochs", "1", "--workers", "1", "--lr", "1e-4", "--warmup", "2", "--precision", "fp32",
                "--device", "cpu", "--logs", logs, "--name", "run", "--save-frequency", "1", "--report-to", ""],
               os.path.join(work, "open_clip_train.log"))
    with open(os.path.join(dataset, "shards", "sizes.json")) as f:
        sized = sum(json.load(f).values())
    epoch = re.findall(r"Train Epoch: 0 \[\s*\d+/(\d+) ", said)  # the samples of an epoch, in whole batches of 32
    check(bool(epoch) and int(epoch[-1]) == -(-sized // 32) * 32,
          f"open_clip_train read sizes.json: {sized:,} samples, an epoch of {epoch[-1] if epoch else '?'} "
          f"(no --train-num-samples)")
    key_warnings = [ln for ln in said.splitlines() if "key" in ln.lower() and "warn" in ln.lower()]
    check(not key_warnings, f"no key warnings from open_clip_train ({len(key_warnings)})")
    back = os.path.join(work, "from-open_clip_train")
    shutil.rmtree(back, ignore_errors=True)
    os.makedirs(back)
    for name in ("open_clip_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(folder, name), back)
    shutil.copy(os.path.join(logs, "run", "checkpoints", "epoch_1.pt"),
                os.path.join(back, "open_clip_pytorch_model.bin"))
    again = os.path.join(work, "train-from-openclip")
    shutil.rmtree(again, ignore_errors=True)
    train(TrainConfig(shards=tuple(shards), out=again, model="tiny-vit", init_from=back, lr=0.0, steps=1, warmup=1,
                      batch_size=8, workers=1, progress=False, device="cpu"))
    model2, tok2 = load_model(again)
    changed = max(float((a - b).abs().max()) for a, b in zip(model.state_dict().values(),
                                                              model2.state_dict().values()))
    check(changed > 0, f"open_clip_train changed the weights (largest change {changed:.2e})")
    ours2 = evaluate(model2, tok2, [sets["retrieval"]], [sets[n] for n in ("colours", "shapes", "colour-shapes")],
                     torch.device("cpu"))
    _compare_scores(_clip_benchmark(bins, back, sets, os.path.join(work, "clip_benchmark-after")), ours2, check)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/wit-compat", help="venvs, data and logs (reused by a rerun)")
    ap.add_argument("--count", type=int, default=3000, help="candidate pairs of the synthetic web")
    ap.add_argument("--steps", type=int, default=300, help="steps of the tiny CLIP wit trains")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    started = time.monotonic()
    bins = {name: venv(args.work, name) for name in VENVS}
    check = Checks()
    dataset = images_round_trip(args.work, bins, args.count, check)
    model_round_trips(args.work, bins, dataset, args.steps, check)
    print(f"{'all checks hold' if not check.failed else f'{len(check.failed)} CHECK(S) FAILED'} "
          f"({time.monotonic() - started:.0f}s; logs in {args.work})")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
