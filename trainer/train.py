"""The training loop: one process per GPU (torchrun) or one on the CPU.

Checkpoints carry everything a resumed run needs to take the very step an
uninterrupted run would have taken: weights, optimizer and scheduler state, the
step, and every rank's loader position.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from trainer import data, openclip
from trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from trainer.loss import distributed_clip_loss
from trainer.model import CLIP, CONFIGS, CLIPConfig, config
from trainer.openclip import Folder
from trainer.tokenizer import Tokenizer, train_tokenizer
from wit.core import fileio
from wit.core.errors import InputError
from wit.core.options import Options, option

log = logging.getLogger(__name__)


PRECISIONS = ("auto", "bf16", "fp32")  # auto: bf16 on CUDA, fp32 on the CPU


@dataclass(frozen=True)
class TrainConfig(Options):
    shards: tuple[str, ...] = option(help="training shards: glob or directory")
    out: str = option(help="directory for checkpoints, tokenizer.json and TensorBoard logs")
    model: str = option("ViT-B-32", help="architecture", choices=tuple(CONFIGS))
    tokenizer: Optional[str] = option(None, help="tokenizer.json (default OUT/tokenizer.json, else the --init-from "
                                                 "folder's, else trained on the shards)")
    init_from: Optional[str] = option(None, help="start from the weights of an OpenCLIP model folder (as `wit export "
                                                 "openclip` writes) of the same architecture")
    vocab_size: int = option(49408, help="vocabulary when training the tokenizer")
    batch_size: int = option(256, help="per rank")
    steps: int = option(10_000, help="optimizer steps of the whole schedule")
    lr: float = option(5e-4, help="peak learning rate")
    weight_decay: float = option(0.2, help="AdamW weight decay of the matrices", flag="wd")
    beta1: float = option(0.9, help="AdamW beta1")
    beta2: float = option(0.98, help="AdamW beta2")
    eps: float = option(1e-6, help="AdamW epsilon")
    warmup: int = option(500, help="steps of linear warmup before the cosine decay")
    precision: str = option("auto", help="auto: bf16 on CUDA, fp32 on the CPU", choices=PRECISIONS)
    grad_checkpointing: bool = option(False, help="recompute activations in the backward pass (less memory)")
    compile: bool = option(False, help="torch.compile the model")
    workers: int = option(4, help="loader processes per rank")
    shuffle_buffer: int = option(2000, help="samples in each stream's shuffle buffer")
    min_crop_scale: float = option(0.9, help="smallest random square crop (of the short side)")
    seed: int = option(0, help="seed of the weights, the shard order and the shuffles")
    save_every: int = option(1000, help="steps between checkpoints")
    log_every: int = option(10, help="steps between logged losses")
    keep_checkpoints: int = option(2, help="checkpoints kept in OUT/checkpoints (0: all)")
    resume: bool = option(True, help="resume from OUT/checkpoints when there are some (else they get overwritten)")
    stop_after: Optional[int] = option(None, help="end this run at this step and checkpoint (rerun to go on)")
    progress: bool = option(True, help="show a progress bar")
    val_shards: tuple[str, ...] = option((), help="held-out shards for retrieval at the end")
    zeroshot: tuple[str, ...] = option((), help="classification set dir for zero-shot at the end")
    device: Optional[str] = option(None, help="default cuda:LOCAL_RANK if available, else cpu")

    def check(self) -> None:
        for name in ("batch_size", "steps", "save_every", "log_every", "vocab_size"):
            if getattr(self, name) < 1:
                self.refuse(name, "must be at least 1")
        for name in ("warmup", "workers", "shuffle_buffer", "keep_checkpoints"):
            if getattr(self, name) < 0:
                self.refuse(name, "must not be negative")
        if not 0 < self.min_crop_scale <= 1:
            self.refuse("min_crop_scale", "must be in (0, 1]")
        if self.stop_after is not None and self.stop_after < 1:
            self.refuse("stop_after", "must be at least 1")


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def setup_distributed(device: Optional[str] = None) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """CLIP decays only matrices: gains, biases, embeddings of rank < 2 and the temperature are exempt."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exempt else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # a device without the fused kernel
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay to zero at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def autocast(device: torch.device, precision: str):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
    return nullcontext()


def prepare_tokenizer(cfg: TrainConfig, shards: list[str], dist_: Dist, init: Optional[Folder] = None) -> Tokenizer:
    path = cfg.tokenizer or fileio.join(cfg.out, "tokenizer.json")
    if not fileio.exists(path):
        if cfg.tokenizer:
            raise InputError(f"--tokenizer {path}: no such file")
        if init is not None:
            if init.tokenizer is None:
                raise InputError(f"--init-from {init.path}: has no {openclip.TOKENIZER} (it uses OpenCLIP's own BPE); "
                                 f"pass --tokenizer with a tokenizers JSON of the same vocabulary")
            if dist_.main:
                init.tokenizer.save(path)
            dist_.barrier()
        elif dist_.main:
            print(f"no tokenizer at {path}: training a byte-level BPE ({cfg.vocab_size} tokens) on the captions")
            tok = train_tokenizer(data.iter_captions(shards), vocab_size=cfg.vocab_size)
            tok.save(path)
        dist_.barrier()
    tok = Tokenizer.load(path)
    if cfg.tokenizer and dist_.main:
        tok.save(fileio.join(cfg.out, "tokenizer.json"))  # next to the checkpoints, so eval finds it
    return tok


def build_model(cfg: TrainConfig, tok: Tokenizer, init: Optional[Folder] = None) -> tuple[CLIPConfig, CLIP]:
    model_cfg = config(cfg.model).with_vocab(tok.vocab_size, tok.eot_id)
    if init is not None:
        if not openclip.same_architecture(init.config, model_cfg):
            named = openclip.architecture_name(init.config)
            hint = f"pass --model {named}" if named else "wit has no such architecture"
            raise InputError(f"--init-from {init.path}: not a {cfg.model} ({hint})")
        openclip.check_tokenizer(init, tok)
        model_cfg = replace(model_cfg, quick_gelu=init.config.quick_gelu)
    torch.manual_seed(cfg.seed)
    return model_cfg, CLIP(model_cfg)


def train_step(forward: nn.Module, model: CLIP, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               tokens: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    """One optimizer step; `forward` is the model as wrapped for running (DDP, compiled), `model` the bare one."""
    with autocast(device, precision):
        image_features, text_features, scale = forward(images, tokens)
    loss = distributed_clip_loss(image_features, text_features, scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.clamp_logit_scale()
    return loss



@dataclass
class TrainSummary:
    """OUT/train_summary.json: how a training run ended."""

    steps: int
    final_loss: Optional[float]
    losses: list  # (step, loss) at every logged step
    corrupt_samples: int
    checkpoint: Optional[str]
    eval: Optional[dict] = None  # `trainer.evaluate.evaluate`'s results, when validation was asked for

    def write(self, out: str) -> None:
        d = asdict(self)
        if self.eval is None:
            del d["eval"]
        fileio.write_bytes(fileio.join(out, "train_summary.json"), json.dumps(d, indent=1).encode())

def train(cfg: TrainConfig) -> dict:
    """Trains to `cfg.steps` (resuming from OUT/checkpoints if there is one) and returns a summary."""
    d = setup_distributed(cfg.device)
    shards = data.list_shards(cfg.shards)
    init = openclip.read_folder(cfg.init_from) if cfg.init_from else None
    tok = prepare_tokenizer(cfg, shards, d, init)
    model_cfg, model = build_model(cfg, tok, init)
    model.to(d.device)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup, cfg.steps))

    step, loader_states = 0, None
    resume_from = latest_checkpoint(cfg.out) if cfg.resume else None
    if resume_from:
        ckpt = load_checkpoint(resume_from, d.device)
        if CLIPConfig.from_dict(ckpt["model_config"]) != model_cfg:
            raise InputError(f"{resume_from} holds a different model than --model {cfg.model}; use another --out")
        if ckpt["shards"] != shards or ckpt["world_size"] != d.world_size:
            raise InputError(f"{resume_from} was trained on other shards or another number of ranks "
                             f"({ckpt['world_size']}); resume with the same ones or use another --out")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, loader_states = ckpt["step"], ckpt["loader"]
        if d.main:
            print(f"resuming from {resume_from} at step {step}")
    elif init is not None:
        openclip.init_model(init, model)
        if d.main:
            print(f"starting from the weights of {init.weights}")

    loader = data.Loader(
        data.StreamConfig(tuple(shards), cfg.batch_size, model_cfg.vision.image_size, tok.to_str(), cfg.seed,
                          cfg.shuffle_buffer, cfg.min_crop_scale, d.rank, d.world_size, cfg.workers),
        data.LoaderState.from_dict(loader_states[d.rank]) if loader_states else None)

    train_model: nn.Module = model
    if d.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    writer = _tensorboard(cfg.out) if d.main else None
    bar = tqdm(total=cfg.steps, initial=step, disable=not (cfg.progress and d.main), unit="step", dynamic_ncols=True)
    losses: list[tuple[int, float]] = []
    window_start, window_samples = time.perf_counter(), 0
    model.train()
    end = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
    try:
        while step < end:
            batch = next(loader)
            images = batch["images"].to(d.device, non_blocking=True)
            tokens = batch["tokens"].to(d.device, non_blocking=True)
            loss = train_step(train_model, model, optimizer, images, tokens, d.device, cfg.precision)
            scheduler.step()
            step += 1
            window_samples += images.shape[0] * d.world_size
            if step % cfg.log_every == 0 or step == end:
                value = loss.item()
                losses.append((step, value))
                rate = window_samples / (time.perf_counter() - window_start)
                window_start, window_samples = time.perf_counter(), 0
                bar.set_postfix(loss=f"{value:.3f}", scale=f"{model.scale().item():.1f}", samples_s=f"{rate:,.0f}")
                if writer:
                    for name, v in (("train/loss", value), ("train/lr", scheduler.get_last_lr()[0]),
                                    ("train/logit_scale", model.scale().item()), ("train/samples_per_s", rate),
                                    ("data/corrupt_samples", loader.state.corrupt)):
                        writer.add_scalar(name, v, step)
            bar.update(1)
            if step % cfg.save_every == 0 or step == end:
                _save(cfg, d, model, model_cfg, optimizer, scheduler, step, loader, shards)
    finally:
        bar.close()
    summary = TrainSummary(steps=step, final_loss=losses[-1][1] if losses else None, losses=losses,
                           corrupt_samples=loader.state.corrupt, checkpoint=latest_checkpoint(cfg.out))
    if d.main and (cfg.val_shards or cfg.zeroshot):
        from trainer.evaluate import evaluate

        summary.eval = evaluate(model, tok, cfg.val_shards, cfg.zeroshot, d.device, cfg.batch_size)
        if writer:
            for name, v in _flatten(summary.eval).items():
                writer.add_scalar(f"eval/{name}", v, step)
    if writer:
        writer.close()
    if d.main:
        summary.write(cfg.out)
    d.barrier()
    return summary


def _flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    flat = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)):
            flat[f"{prefix}{k}"] = v
    return flat


def _save(cfg: TrainConfig, d: Dist, model: CLIP, model_cfg: CLIPConfig, optimizer, scheduler, step: int,
          loader: data.Loader, shards: list[str]) -> None:
    states = [loader.state.to_dict()]
    if d.world_size > 1:
        states = [None] * d.world_size
        dist.all_gather_object(states, loader.state.to_dict())
    if d.main:
        save_checkpoint(cfg.out, {
            "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "loader": states, "model_config": model_cfg.to_dict(),
            "train_config": json.dumps(asdict(cfg)), "shards": shards, "world_size": d.world_size,
            "tokenizer": model_tokenizer_json(cfg),
        }, cfg.keep_checkpoints)
    d.barrier()


def model_tokenizer_json(cfg: TrainConfig) -> str:
    return fileio.read_bytes(fileio.join(cfg.out, "tokenizer.json")).decode()


def _tensorboard(out: str):
    if not fileio.is_local(out):
        log.warning("TensorBoard logs are written for local --out only")
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=os.path.join(out, "tensorboard"))
