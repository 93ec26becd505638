"""Zero-shot classification and image-text retrieval, from shards.

Classification sets use the clip_benchmark webdataset layout: a directory with
`classnames.txt` (one class per line), `zeroshot_classification_templates.txt`
(one prompt per line, `{c}` where the class name goes) and tar shards (in the
directory or its `test/`) whose samples hold an image and `cls` (the class
index). Retrieval reads held-out shards of the training format, one caption per
image, and reports recall@1/5/10 in both directions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from trainer import data
from trainer.checkpoint import load_model
from trainer.model import CLIP
from trainer.tokenizer import Tokenizer
from wit import fileio
from wit.errors import InputError
from wit.options import Options, option
from wit.shardformat import iter_tar, write_members

CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"


@dataclass(frozen=True)
class EvalOptions(Options):
    checkpoint: str = option(help="a .pt checkpoint or a `wit train --out` directory")
    shards: tuple[str, ...] = option((), help="held-out image-caption shards for retrieval")
    zeroshot: tuple[str, ...] = option((), help="classification set directory (clip_benchmark's layout)")
    batch_size: int = option(256, help="images per forward pass")
    device: Optional[str] = option(None, help="default cuda if available, else cpu")
    json: Optional[str] = option(None, help="also write the results here as JSON")

    def check(self) -> None:
        if not self.shards and not self.zeroshot:
            self.refuse("shards", "nothing to evaluate: pass --shards (retrieval) and/or --zeroshot DIR")
        if self.batch_size < 1:
            self.refuse("batch_size", "must be at least 1")


def _eval_samples(shards: Sequence[str], errors: list) -> Iterator[dict]:
    def on_error(e: Exception) -> bool:
        errors.append(e)
        return True

    for path in shards:
        yield from iter_tar(path, on_error)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _decoded(samples: Iterable[dict], image_size: int, field: str, errors: list) -> Iterator[tuple[np.ndarray, str]]:
    for sample in samples:
        try:
            value = data.caption(sample) if field == "txt" else _label(sample)
            yield data.square_crop(data.open_image(data.image_bytes(sample)), image_size), value
        except data.CorruptSample as e:
            errors.append(e)


def _label(sample: dict) -> int:
    try:
        return int(sample["cls"].decode().strip())
    except (KeyError, ValueError, UnicodeDecodeError) as e:
        raise data.CorruptSample(f"{sample.get('__url__')}: sample {sample.get('__key__')} has no integer cls") from e


@torch.no_grad()
def _image_features(model: CLIP, arrays: list[np.ndarray], device: torch.device) -> torch.Tensor:
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(device)
    return model.encode_image(images).float()


@torch.no_grad()
def retrieval(model: CLIP, tok: Tokenizer, shards: Sequence[str], device: torch.device, batch_size: int = 256) -> dict:
    model.eval()
    errors: list = []
    image_feats, text_feats = [], []
    for batch in _batches(_decoded(_eval_samples(shards, errors), model.config.vision.image_size, "txt", errors),
                          batch_size):
        image_feats.append(_image_features(model, [b[0] for b in batch], device))
        text_feats.append(model.encode_text(tok([b[1] for b in batch]).to(device)).float())
    if not image_feats:
        raise InputError(f"no readable image-caption samples in {', '.join(shards)}")
    metrics = recall_at_k(torch.cat(image_feats), torch.cat(text_feats))
    metrics.update(n=sum(len(f) for f in image_feats), skipped=len(errors))
    return metrics


def recall_at_k(image_feats: torch.Tensor, text_feats: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Pair i is image i with text i; R@k is the share of queries whose match ranks in the top k."""
    sims = image_feats @ text_feats.T
    truth = torch.arange(len(sims), device=sims.device)
    out = {}
    for name, s in (("image_to_text", sims), ("text_to_image", sims.T)):
        # rank of the true match = number of candidates scoring strictly higher
        rank = (s > s[truth, truth][:, None]).sum(dim=1)
        for k in ks:
            out[f"{name}_R@{k}"] = (rank < k).float().mean().item()
    return out


def read_classification_set(directory: str) -> tuple[list[str], list[str], list[str]]:
    def lines(name: str) -> list[str]:
        path = fileio.join(directory, name)
        if not fileio.exists(path):
            raise InputError(f"{directory}: no {name} (see `wit eval --help` for the layout)")
        return [ln.strip() for ln in fileio.read_bytes(path).decode().splitlines() if ln.strip()]

    classnames, templates = lines(CLASSNAMES), lines(TEMPLATES)
    for t in templates:
        if "{c}" not in t and "{}" not in t:
            raise InputError(f"{directory}/{TEMPLATES}: template {t!r} has no {{c}} for the class name")
    try:
        shards = data.list_shards([fileio.join(directory, "*.tar")])
    except InputError:
        shards = data.list_shards([fileio.join(directory, "test", "*.tar")])
    return classnames, templates, shards


@torch.no_grad()
def zeroshot_weights(model: CLIP, tok: Tokenizer, classnames: Sequence[str], templates: Sequence[str],
                     device: torch.device) -> torch.Tensor:
    """One embedding per class: the renormalised mean over the prompt templates (CLIP's ensembling)."""
    weights = []
    for name in classnames:
        prompts = [t.replace("{c}", name).replace("{}", name) for t in templates]
        emb = model.encode_text(tok(prompts).to(device)).float().mean(dim=0)
        weights.append(F.normalize(emb, dim=-1))
    return torch.stack(weights, dim=1)


@torch.no_grad()
def zeroshot(model: CLIP, tok: Tokenizer, directory: str, device: torch.device, batch_size: int = 256) -> dict:
    model.eval()
    classnames, templates, shards = read_classification_set(directory)
    weights = zeroshot_weights(model, tok, classnames, templates, device)
    errors: list = []
    correct1 = correct5 = total = 0
    for batch in _batches(_decoded(_eval_samples(shards, errors), model.config.vision.image_size, "cls", errors),
                          batch_size):
        logits = _image_features(model, [b[0] for b in batch], device) @ weights
        labels = torch.tensor([b[1] for b in batch], device=device)
        if labels.max() >= len(classnames) or labels.min() < 0:
            raise InputError(f"{directory}: a cls value is outside 0..{len(classnames) - 1}")
        top = logits.topk(min(5, len(classnames)), dim=1).indices
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(dim=1).sum().item()
        total += len(batch)
    if total == 0:
        raise InputError(f"{directory}: no readable labelled images")
    return {"top1": correct1 / total, "top5": correct5 / total, "n": total, "classes": len(classnames),
            "chance": 1 / len(classnames), "skipped": len(errors)}


def evaluate(model: CLIP, tok: Tokenizer, val_shards: Sequence[str], zeroshot_dirs: Sequence[str],
             device: torch.device, batch_size: int = 256) -> dict:
    results: dict = {}
    if val_shards:
        results["retrieval"] = retrieval(model, tok, data.list_shards(val_shards), device, batch_size)
    for directory in zeroshot_dirs:
        results[f"zeroshot/{os.path.basename(directory.rstrip('/'))}"] = zeroshot(model, tok, directory, device,
                                                                                 batch_size)
    return results


def write_classification_set(directory: str, classnames: Sequence[str], templates: Sequence[str],
                             samples: Iterable[tuple[bytes, int]], shard_size: int = 1000,
                             image_ext: str = "jpg") -> int:
    """Writes a clip_benchmark-style set (used by the demo; handy for any labelled images)."""
    fileio.write_bytes(fileio.join(directory, CLASSNAMES), ("\n".join(classnames) + "\n").encode())
    fileio.write_bytes(fileio.join(directory, TEMPLATES), ("\n".join(templates) + "\n").encode())
    count = 0
    for shard, batch in enumerate(_batches(samples, shard_size)):
        members = []
        for image, label in batch:
            members += [(f"{count:08d}.{image_ext}", image), (f"{count:08d}.cls", str(label).encode())]
            count += 1
        with fileio.atomic_open(fileio.join(directory, f"{shard:05d}.tar")) as f:
            write_members(f, members)
    return count


def format_results(results: dict) -> str:
    lines = []
    for name, m in results.items():
        if name == "retrieval":
            lines.append(f"retrieval on {m['n']:,} held-out pairs: "
                         + ", ".join(f"{k} {v:.1%}" for k, v in m.items() if "_R@" in k))
        else:
            lines.append(f"{name}: top-1 {m['top1']:.1%}, top-5 {m['top5']:.1%} over {m['n']:,} images, "
                         f"{m['classes']} classes (chance {m['chance']:.1%})")
    return "\n".join(lines)


def load_for_eval(checkpoint: str, device: Optional[str] = None) -> tuple[CLIP, Tokenizer, torch.device]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tok = load_model(checkpoint, dev)
    return model, tok, dev
