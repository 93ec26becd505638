"""Zero-shot classification and image-text retrieval, from shards, scored as clip_benchmark scores them.

Sets use clip_benchmark's webdataset layout, which `write_classification_set`
writes too: a directory with `classnames.txt` (one class per line),
`zeroshot_classification_templates.txt` (one prompt per line, `{c}` where the
class name goes) and `test/0.tar, 1.tar, ...` with `test/nshards.txt`, whose
samples hold an image and `cls` (the class index); wit's own flat layout (tars
in the directory) is read as well. Retrieval reads held-out shards of the
training format or a clip_benchmark retrieval set (`dataset_type.txt` says
`retrieval`), whose `txt` holds one caption per line: every caption is a text
query for its image, and an image is found when any of its captions ranks in
the top k, as clip_benchmark's `zeroshot_retrieval` counts it.
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
from wit.core import fileio
from wit.core.errors import InputError
from wit.core.options import Options, option
from wit.core.shardformat import iter_tar, write_members

CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"


@dataclass(frozen=True)
class EvalOptions(Options):
    checkpoint: str = option(help="a .pt checkpoint or a `wit train --out` directory")
    shards: tuple[str, ...] = option((), help="held-out image-caption shards for retrieval (glob or folder), or a "
                                              "clip_benchmark retrieval set folder (several captions per image)")
    zeroshot: tuple[str, ...] = option((), help="classification set folder (clip_benchmark's layout); results are "
                                                "named by folder, by path where two folders share a name")
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


def _decoded(samples: Iterable[dict], image_size: int, field: str, errors: list) -> Iterator[tuple[np.ndarray, object]]:
    for sample in samples:
        try:
            value = _captions(sample) if field == "txt" else _label(sample)
            yield data.square_crop(data.open_image(data.image_bytes(sample)), image_size), value
        except data.CorruptSample as e:
            errors.append(e)


def _captions(sample: dict) -> list[str]:
    """An image's captions: one per line of its txt (clip_benchmark's retrieval sets hold several)."""
    found = [line.strip() for line in data.caption(sample).splitlines() if line.strip()]
    if not found:
        raise data.CorruptSample(f"{sample.get('__url__')}: sample {sample.get('__key__')} has an empty caption")
    return found


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
    image_feats, text_feats, owner = [], [], []
    images = 0
    for batch in _batches(_decoded(_eval_samples(shards, errors), model.config.vision.image_size, "txt", errors),
                          batch_size):
        image_feats.append(_image_features(model, [b[0] for b in batch], device))
        texts = [(images + i, caption) for i, b in enumerate(batch) for caption in b[1]]
        for part in _batches(texts, batch_size):
            text_feats.append(model.encode_text(tok([t for _, t in part]).to(device)).float())
            owner += [i for i, _ in part]
        images += len(batch)
    if not image_feats:
        raise InputError(f"no readable image-caption samples in {', '.join(shards)}")
    metrics = recall_at_k(torch.cat(image_feats), torch.cat(text_feats),
                          owner=torch.tensor(owner, device=device))
    metrics.update(n=images, texts=len(owner), skipped=len(errors))
    return metrics


def recall_at_k(image_feats: torch.Tensor, text_feats: torch.Tensor, ks: Sequence[int] = (1, 5, 10),
                owner: Optional[torch.Tensor] = None) -> dict:
    """Text t describes image owner[t] (default: text i describes image i). text_to_image R@k: the share of
    texts whose image is among the k images scoring highest; image_to_text R@k: the share of images with
    any of their texts among the k texts scoring highest (clip_benchmark's image_retrieval_recall@k and
    text_retrieval_recall@k). Ties, as identical captions of two images make, are broken by torch.topk
    over the same score matrix and its transpose, as clip_benchmark breaks them."""
    owner = torch.arange(len(text_feats), device=text_feats.device) if owner is None else owner
    sims = text_feats @ image_feats.T  # texts x images
    kmax = max(ks)
    text_hits = sims.topk(min(kmax, sims.shape[1]), dim=1).indices == owner[:, None]
    image_top = sims.T.topk(min(kmax, sims.shape[0]), dim=1).indices
    image_hits = owner[image_top] == torch.arange(len(image_feats), device=sims.device)[:, None]
    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = image_hits[:, :k].any(dim=1).float().mean().item()
    for k in ks:
        out[f"text_to_image_R@{k}"] = text_hits[:, :k].any(dim=1).float().mean().item()
    return out


def _set_shards(directory: str) -> list[str]:
    """clip_benchmark's `test/0.tar .. test/{nshards-1}.tar`, or the tars of the directory or its test/."""
    nshards = fileio.join(directory, "test", "nshards.txt")
    if fileio.exists(nshards):
        text = fileio.read_bytes(nshards).decode().strip()
        if not text.isdigit():
            raise InputError(f"{nshards}: not a number of shards ({text[:40]!r})")
        return [fileio.join(directory, "test", f"{i}.tar") for i in range(int(text))]
    try:
        return data.list_shards([fileio.join(directory, "*.tar")])
    except InputError:
        return data.list_shards([fileio.join(directory, "test", "*.tar")])


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
    return classnames, templates, _set_shards(directory)


def retrieval_shards(path: str) -> list[str]:
    """A clip_benchmark retrieval set's shards (a directory whose dataset_type.txt says retrieval), or the
    shards a glob or directory names."""
    kind = fileio.join(path, "dataset_type.txt")
    if fileio.exists(kind) and fileio.read_bytes(kind).decode().strip().lower() == "retrieval":
        return _set_shards(path)
    return data.list_shards([path])


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
    per_class = np.zeros((len(classnames), 2), np.int64)  # (right at top-1, images) per class
    for batch in _batches(_decoded(_eval_samples(shards, errors), model.config.vision.image_size, "cls", errors),
                          batch_size):
        logits = _image_features(model, [b[0] for b in batch], device) @ weights
        labels = torch.tensor([b[1] for b in batch], device=device)
        if labels.max() >= len(classnames) or labels.min() < 0:
            raise InputError(f"{directory}: a cls value is outside 0..{len(classnames) - 1}")
        top = logits.topk(min(5, len(classnames)), dim=1).indices
        right = top[:, 0] == labels
        correct1 += right.sum().item()
        correct5 += (top == labels[:, None]).any(dim=1).sum().item()
        np.add.at(per_class, labels.cpu().numpy(), np.stack([right.cpu().numpy(), np.ones(len(batch), bool)], 1))
        total += len(batch)
    if total == 0:
        raise InputError(f"{directory}: no readable labelled images")
    seen = per_class[:, 1] > 0
    return {"top1": correct1 / total, "top5": correct5 / total,
            "mean_per_class_recall": float((per_class[seen, 0] / per_class[seen, 1]).mean()),
            "n": total, "classes": len(classnames), "chance": 1 / len(classnames), "skipped": len(errors)}


def set_names(directories: Sequence[str]) -> list[str]:
    """Each set's name in the results: its folder's name, or its path where two folders share a name."""
    names = [os.path.basename(d.rstrip("/")) for d in directories]
    return [d.rstrip("/") if names.count(n) > 1 else n for d, n in zip(directories, names)]


def evaluate(model: CLIP, tok: Tokenizer, val_shards: Sequence[str], zeroshot_dirs: Sequence[str],
             device: torch.device, batch_size: int = 256) -> dict:
    results: dict = {}
    if val_shards:
        shards = [s for path in val_shards for s in retrieval_shards(path)]
        results["retrieval"] = retrieval(model, tok, shards, device, batch_size)
    for name, directory in zip(set_names(zeroshot_dirs), zeroshot_dirs):
        results[f"zeroshot/{name}"] = zeroshot(model, tok, directory, device, batch_size)
    return results


def write_classification_set(directory: str, classnames: Sequence[str], templates: Sequence[str],
                             samples: Iterable[tuple[bytes, int]], shard_size: int = 10_000,
                             image_ext: str = "jpg") -> int:
    """A set in clip_benchmark's webdataset layout (`wds_NAME`): classnames.txt, the templates,
    test/0.tar .. and test/nshards.txt, keys `s0000000`. The demo writes its colour set this way."""
    fileio.write_bytes(fileio.join(directory, CLASSNAMES), ("\n".join(classnames) + "\n").encode())
    fileio.write_bytes(fileio.join(directory, TEMPLATES), ("\n".join(templates) + "\n").encode())
    return _write_test_split(directory, ({image_ext: image, "cls": str(label).encode()} for image, label in samples),
                             shard_size)


def write_retrieval_set(directory: str, samples: Iterable[tuple[bytes, Sequence[str]]], shard_size: int = 10_000,
                        image_ext: str = "jpg") -> int:
    """A retrieval set in clip_benchmark's layout: dataset_type.txt says `retrieval`, and each sample's txt
    holds its image's captions, one per line."""
    fileio.write_bytes(fileio.join(directory, "dataset_type.txt"), b"retrieval\n")
    return _write_test_split(
        directory, ({image_ext: image, "txt": "\n".join(captions).encode()} for image, captions in samples),
        shard_size)


def _write_test_split(directory: str, samples: Iterable[dict[str, bytes]], shard_size: int) -> int:
    count = shards = 0
    for shard, batch in enumerate(_batches(samples, shard_size)):
        members = []
        for sample in batch:
            members += [(f"s{count:07d}.{ext}", value) for ext, value in sample.items()]
            count += 1
        with fileio.atomic_open(fileio.join(directory, "test", f"{shard}.tar")) as f:
            write_members(f, members)
        shards = shard + 1
    fileio.write_bytes(fileio.join(directory, "test", "nshards.txt"), f"{shards}\n".encode())
    return count


def format_results(results: dict) -> str:
    lines = []
    for name, m in results.items():
        if name == "retrieval":
            texts = f" ({m['texts']:,} captions)" if m.get("texts", m["n"]) != m["n"] else ""
            lines.append(f"retrieval on {m['n']:,} held-out images{texts}: "
                         + ", ".join(f"{k} {v:.1%}" for k, v in m.items() if "_R@" in k))
        else:
            lines.append(f"{name}: top-1 {m['top1']:.1%}, top-5 {m['top5']:.1%}, mean per-class recall "
                         f"{m['mean_per_class_recall']:.1%} over {m['n']:,} images, {m['classes']} classes "
                         f"(chance {m['chance']:.1%})")
    return "\n".join(lines)


def load_for_eval(checkpoint: str, device: Optional[str] = None) -> tuple[CLIP, Tokenizer, torch.device]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tok = load_model(checkpoint, dev)
    return model, tok, dev
