"""Training-step throughput of wit's trainer against OpenCLIP, and of the shard loader.

Baseline, measured in the same run: OpenCLIP (open-clip-torch) building the same
architecture (same widths, depths, QuickGELU, vocabulary, context), the same
batch and dtype, stepping the way open_clip_train does (autocast, ClipLoss,
AdamW with its gain/bias exclusion, temperature clamp). Both models get their
inputs already on the device; wit takes uint8 images and normalises on the
device, OpenCLIP takes normalised float images, as each one's loader produces.

    pip install open-clip-torch==3.3.0 torchvision   # the baseline (needs torchvision)
    python bench/train_step.py --model ViT-B-32 --batch 1024 --compile

Rows: samples/s for each (implementation, eager|compiled); "text 77" feeds all
77 token columns, "text trimmed" the columns the captions use (what wit's loader
hands over; the text tower is causal and read at EOT, so the result is the
same); the loader alone from real shards; and wit's step fed by that loader.
Ratios are printed against the named baseline.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from trainer.model import CLIP, CLIPConfig, config  # noqa: E402
from trainer.train import TrainConfig, autocast, make_optimizer, train_step  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(step, batch: int, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def wit_step(model: CLIP, compiled: bool, device: torch.device, precision: str, lr: float = 5e-4):
    opt = make_optimizer(model, TrainConfig(shards=(), out="", lr=lr))
    forward = torch.compile(model) if compiled else model

    def step(images: torch.Tensor, tokens: torch.Tensor) -> None:
        train_step(forward, model, opt, images, tokens, device, precision)  # the trainer's own step

    return step


def openclip_model(cfg: CLIPConfig):
    from open_clip.model import CLIP as OpenCLIP
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    v = cfg.vision
    vision = (CLIPVisionCfg(layers=v.layers, width=v.width, patch_size=v.patch_size, image_size=v.image_size,
                            head_width=64) if v.kind == "vit" else
              CLIPVisionCfg(layers=v.resnet_layers, width=v.width, image_size=v.image_size, head_width=64))
    text = CLIPTextCfg(context_length=cfg.text.context_length, vocab_size=cfg.text.vocab_size,
                       width=cfg.text.width, heads=cfg.text.heads, layers=cfg.text.layers)
    return OpenCLIP(cfg.embed_dim, vision, text, quick_gelu=True, output_dict=True)


def openclip_step(model, compiled: bool, device: torch.device, precision: str, lr: float = 5e-4):
    """open_clip_train.train.train_one_epoch's step, without the logging."""
    from open_clip.loss import ClipLoss

    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    opt = torch.optim.AdamW([
        {"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad], "weight_decay": 0.2},
    ], lr=lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    forward = torch.compile(model) if compiled else model

    def step(images: torch.Tensor, tokens: torch.Tensor) -> None:
        with autocast(device, precision):
            out = forward(images, tokens)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    return step


def make_tokens(batch: int, length: int, cfg: CLIPConfig, device: torch.device, eot_at: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, cfg.text.vocab_size, (batch, length), generator=g)
    tokens[:, eot_at] = cfg.text.eot_id
    tokens[:, eot_at + 1:] = 0
    return tokens.to(device)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    p.add_argument("--shards", help="shard dir/glob for the loader rows (default: write synthetic shards)")
    p.add_argument("--loader-batches", type=int, default=30)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()

    device = torch.device(a.device)
    cfg = config(a.model)
    size = cfg.vision.image_size
    torch.manual_seed(0)
    images_u8 = torch.randint(0, 256, (a.batch, 3, size, size), dtype=torch.uint8, device=device)

    from trainer import data
    from trainer.tokenizer import train_tokenizer

    tmp = tempfile.mkdtemp(prefix="wit-bench-")
    if a.shards:
        shards = data.list_shards([a.shards])
    else:
        from tests.synthshards import write_shards  # the tests' shard writer

        per_shard = max(64, a.batch * a.loader_batches // (2 * a.workers) + 1)
        print(f"writing {2 * a.workers} synthetic shards of {per_shard} samples (256 px) to {tmp} ...", flush=True)
        shards = write_shards(tmp, n_shards=2 * a.workers, per_shard=per_shard, image_size=256)
    captions = list(itertools.islice(data.iter_captions(shards), 20000))
    tok = train_tokenizer(captions, vocab_size=min(cfg.text.vocab_size, 8192))
    trimmed = tok(captions[: a.batch], trim_multiple=8).shape[1]  # what the loader hands over for such a batch
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"model {a.model}, batch {a.batch}, precision {a.precision}, torch {torch.__version__}")

    rows: dict[str, float] = {}
    modes = [False, True] if a.compile else [False]
    try:
        import open_clip

        have_openclip = True
        print(f"baseline: open_clip {open_clip.__version__}")
    except ImportError as e:
        have_openclip = False
        print(f"open_clip not importable ({e}): baseline rows skipped; pip install open-clip-torch torchvision")

    images_f = None
    for compiled in modes:
        tag = "compiled" if compiled else "eager"
        if have_openclip:
            torch.manual_seed(0)
            oc = openclip_model(cfg).to(device).train()
            if images_f is None:
                mean = torch.tensor((0.48145466, 0.4578275, 0.40821073), device=device).view(1, 3, 1, 1) * 255
                std = torch.tensor((0.26862954, 0.26130258, 0.27577711), device=device).view(1, 3, 1, 1) * 255
                images_f = (images_u8.float() - mean) / std
            step = openclip_step(oc, compiled, device, a.precision)
            tokens77 = make_tokens(a.batch, 77, cfg, device, trimmed - 1)
            rows[f"openclip {tag}, text 77"] = rate(lambda: step(images_f, tokens77), a.batch, a.steps, a.warmup,
                                                   device)
            del oc, step
        torch.manual_seed(0)
        ours = CLIP(cfg).to(device).train()
        step = wit_step(ours, compiled, device, a.precision)
        for label, length in (("text 77", 77), ("text trimmed", trimmed)):
            tokens = make_tokens(a.batch, length, cfg, device, trimmed - 1)
            rows[f"wit {tag}, {label}"] = rate(lambda: step(images_u8, tokens), a.batch, a.steps, a.warmup, device)
        print("  " + ", ".join(f"{k}: {v:,.0f}/s" for k, v in rows.items() if tag in k), flush=True)

    # the loader alone, then the loader feeding wit's (fastest) step
    loader = data.Loader(data.StreamConfig(tuple(shards), a.batch, size, tok.to_str(), workers=a.workers,
                                           shuffle_buffer=1000))
    next(loader)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(a.loader_batches):
        next(loader)
    rows["loader alone"] = a.batch * a.loader_batches / (time.perf_counter() - start)
    compiled = a.compile

    def fed() -> None:
        batch = next(loader)
        step(batch["images"].to(device, non_blocking=True), batch["tokens"].to(device, non_blocking=True))

    rows[f"wit {'compiled' if compiled else 'eager'}, fed by the loader"] = rate(fed, a.batch, min(a.steps, 20), 2,
                                                                                 device)

    print(f"\n{'row':44s} {'samples/s':>12s}")
    for k, v in rows.items():
        print(f"{k:44s} {v:12,.0f}")
    print()
    best = "compiled" if a.compile else "eager"
    if have_openclip:
        for tag in ("eager", "compiled") if a.compile else ("eager",):
            base = rows[f"openclip {tag}, text 77"]
            print(f"wit {tag} / openclip {tag} (text 77):      {rows[f'wit {tag}, text 77'] / base:.2f}x")
            print(f"wit {tag} / openclip {tag} (text trimmed): {rows[f'wit {tag}, text trimmed'] / base:.2f}x")
    synthetic = rows[f"wit {best}, text trimmed"]
    print(f"loader alone / wit {best} synthetic-input step: {rows['loader alone'] / synthetic:.2f}")
    print(f"wit {best} fed by the loader / synthetic input: {rows[f'wit {best}, fed by the loader'] / synthetic:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
