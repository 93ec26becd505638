"""Checkpoints: written whole or not at all, found through OUT/checkpoints/latest, loaded for resuming or eval.

A checkpoint holds the model and its config, the optimizer, scheduler and
loader positions, and the tokenizer, so one file is enough to go on training
or to evaluate.
"""

from __future__ import annotations

import io
import pickle
from typing import Optional

import torch

from trainer.model import CLIP, CLIPConfig
from trainer.tokenizer import Tokenizer
from wit.core import fileio
from wit.core.errors import InputError


def checkpoint_dir(out: str) -> str:
    return fileio.join(out, "checkpoints")


def latest_checkpoint(out: str) -> Optional[str]:
    pointer = fileio.join(checkpoint_dir(out), "latest")
    if not fileio.exists(pointer):
        return None
    return fileio.join(checkpoint_dir(out), fileio.read_bytes(pointer).decode().strip())


def save_checkpoint(out: str, state: dict, keep: int) -> str:
    name = f"step_{state['step']:08d}.pt"
    buf = io.BytesIO()
    torch.save(state, buf)
    path = fileio.join(checkpoint_dir(out), name)
    fileio.write_bytes(path, buf.getvalue())
    fileio.write_bytes(fileio.join(checkpoint_dir(out), "latest"), name.encode())  # only after the file is whole
    pattern = fileio.join(checkpoint_dir(out), "step_*.pt")  # matches at least the one just written
    old = [m.path for m in fileio.match_files([pattern], "checkpoints")][:-keep] if keep > 0 else []
    for p in old:
        fileio.delete_if_exists(p)
    return path


def load_checkpoint(path: str, device: torch.device | str = "cpu") -> dict:
    try:
        return torch.load(io.BytesIO(fileio.read_bytes(path)), map_location=device, weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise InputError(f"{path}: not a readable wit checkpoint ({e})") from e


def load_model(checkpoint: str, device: torch.device | str = "cpu") -> tuple[CLIP, Tokenizer]:
    """A checkpoint path, or a training --out directory (its latest checkpoint), ready for eval."""
    if not checkpoint.endswith(".pt"):
        latest = latest_checkpoint(checkpoint)
        if latest is None:
            raise InputError(f"{checkpoint}: no checkpoints/latest; pass a .pt file or a `wit train --out` directory")
        checkpoint = latest
    state = load_checkpoint(checkpoint, device)
    model = CLIP(CLIPConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), Tokenizer.from_str(state["tokenizer"])
