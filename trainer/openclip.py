"""OpenCLIP's model folder (`open_clip.create_model_and_transforms('local-dir:DIR')`), both ways.

wit's CLIP is OpenAI's CLIP as OpenCLIP builds it, with three differences of
naming only: the text tower's tensors sit under `text.`, the fused attention
projection is a Linear (`attn.in_proj.weight`) where OpenCLIP keeps
`nn.MultiheadAttention`'s `attn.in_proj_weight`, and the text is read at wit's
end-of-text id, which OpenCLIP calls `pool_type: eos`. So a folder is the
renamed state dict (safetensors), `open_clip_config.json` with the model and
preprocessing, and the BPE as a Hugging Face tokenizer, which OpenCLIP loads
through `transformers` for a folder whose config names one.
"""

from __future__ import annotations

import glob
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from trainer.checkpoint import load_model
from trainer.model import CONFIGS, IMAGE_MEAN, IMAGE_STD, CLIP, CLIPConfig, TextConfig, VisionConfig
from trainer.tokenizer import EOT, PAD, SOT, Tokenizer
from wit.core import fileio
from wit.core.errors import InputError
from wit.core.options import Options, option

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
# What OpenCLIP looks for in a folder, in its order of preference.
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth",
                "model.pth")
TOKENIZER = "tokenizer.json"


@dataclass(frozen=True)
class ExportOptions(Options):
    checkpoint: str = option(help="a .pt checkpoint or a `wit train --out` directory (its latest checkpoint)")
    out: str = option(help="folder to write: open_clip_config.json, the weights and the tokenizer")
    hub_id: Optional[str] = option(None, help="the Hugging Face Hub repository the folder will be pushed to, so "
                                              "`hf-hub:ID` finds its tokenizer there (a local folder needs none)")


def _rename(key: str, to_openclip: bool) -> str:
    wit_name, oc_name = ".attn.in_proj.", ".attn.in_proj_"
    if to_openclip:
        key = key.replace(wit_name, oc_name)
        return key[len("text."):] if key.startswith("text.") else key
    key = key.replace(oc_name, wit_name)
    return key if key.startswith("visual.") or key == "logit_scale" else f"text.{key}"


def to_openclip_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """wit's state dict under OpenCLIP's names (CLIP class, built-in text tower)."""
    return {_rename(k, True): v for k, v in state.items()}


def from_openclip_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenCLIP CLIP state dict under wit's names."""
    return {_rename(k, False): v for k, v in state.items()}


def model_cfg(cfg: CLIPConfig, pad_id: int, tokenizer_name: str) -> dict:
    """OpenCLIP's `model_cfg` for a wit model: its built-in config of the same name plus text pooling at EOT."""
    v = cfg.vision
    if v.kind == "vit":
        vision: dict[str, Any] = {"image_size": v.image_size, "layers": v.layers, "width": v.width,
                                  "patch_size": v.patch_size}
    else:
        vision = {"image_size": v.image_size, "layers": list(v.resnet_layers), "width": v.width, "patch_size": None}
    t = cfg.text
    text = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
            "layers": t.layers, "pool_type": "eos", "eos_id": t.eot_id, "pad_id": pad_id,
            "hf_tokenizer_name": tokenizer_name}
    return {"embed_dim": cfg.embed_dim, "quick_gelu": cfg.quick_gelu, "vision_cfg": vision, "text_cfg": text}


def preprocess_cfg(cfg: CLIPConfig) -> dict:
    """wit's evaluation preprocessing as OpenCLIP names it: bicubic resize of the short side, centre crop."""
    return {"size": cfg.vision.image_size, "mode": "RGB", "mean": list(IMAGE_MEAN), "std": list(IMAGE_STD),
            "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}


# OpenCLIP settings wit's towers do not have, with the values that leave OpenCLIP's CLIP as wit builds it.
_VISION_DEFAULTS = {"head_width": 64, "mlp_ratio": 4.0, "ls_init_value": None, "attentional_pool": False,
                    "no_ln_pre": False, "pos_embed_type": "learnable", "final_ln_after_pool": False,
                    "pool_type": "tok", "output_tokens": False, "act_kwargs": None, "norm_kwargs": None,
                    "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
                    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "timm_model_name": None}
_TEXT_DEFAULTS = {"mlp_ratio": 4.0, "ls_init_value": None, "embed_cls": False, "no_causal_mask": False,
                  "final_ln_after_pool": False, "proj_bias": False, "proj_type": "linear", "output_tokens": False,
                  "act_kwargs": None, "norm_kwargs": None, "block_type": None, "qk_norm": False,
                  "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
                  "scale_fc": False, "hf_model_name": None}
_TOP_DEFAULTS = {"custom_text": False, "init_logit_bias": None, "nonscalar_logit_scale": False}
# Training-time settings that do not change what the weights mean.
_IGNORED = {"patch_dropout", "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained", "timm_pool",
            "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path", "hf_tokenizer_name", "tokenizer_mode",
            "tokenizer_kwargs", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type", "pad_id", "cast_dtype",
            "init_logit_scale", "multimodal_cfg"}


def _unsupported(section: str, given: dict, defaults: dict, known: set[str]) -> list[str]:
    bad = [f"{section}.{k}={given[k]!r}" for k in given if k in defaults and given[k] != defaults[k]]
    return bad + [f"{section}.{k}" for k in given if k not in defaults and k not in known and k not in _IGNORED]


def config_from_openclip(cfg: dict, where: str) -> CLIPConfig:
    """The wit config of an OpenCLIP `model_cfg`; an InputError naming every setting wit's towers lack."""
    try:
        vision, text = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
        if "multimodal_cfg" in cfg:
            raise InputError(f"{where}: a CoCa model (multimodal_cfg); wit trains CLIP only")
        bad = _unsupported("vision_cfg", vision, _VISION_DEFAULTS, {"image_size", "layers", "width", "patch_size"})
        bad += _unsupported("text_cfg", text, _TEXT_DEFAULTS,
                            {"context_length", "vocab_size", "width", "heads", "layers", "pool_type", "eos_id"})
        bad += _unsupported("model_cfg", cfg, _TOP_DEFAULTS, {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"})
        pool = text.get("pool_type", "argmax")
        if pool not in ("argmax", "eos"):
            bad.append(f"text_cfg.pool_type={pool!r}")
        if bad:
            raise InputError(f"{where}: settings wit's CLIP does not have: {', '.join(bad)}")
        image_size = vision.get("image_size", 224)
        if not isinstance(image_size, int):
            raise InputError(f"{where}: vision_cfg.image_size {image_size!r}: wit's towers take square images")
        layers = vision.get("layers", 12)
        if isinstance(layers, (list, tuple)):
            v = VisionConfig("resnet", image_size, vision.get("width", 64), resnet_layers=tuple(layers))
        else:
            v = VisionConfig("vit", image_size, vision.get("width", 768), layers, vision.get("patch_size", 16))
        vocab = text.get("vocab_size", 49408)
        # argmax pooling reads the highest id, which is the end-of-text where that is the vocabulary's last
        # (OpenAI's BPE)
        eot = text.get("eos_id", 2) if pool == "eos" else vocab - 1
        t = TextConfig(text.get("context_length", 77), vocab, text.get("width", 512), text.get("layers", 12),
                       text.get("heads", 8), eot)
        return CLIPConfig(cfg["embed_dim"], v, t, bool(cfg.get("quick_gelu", False)))
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{where}: not an OpenCLIP model config ({type(e).__name__}: {e})") from None


def same_architecture(a: CLIPConfig, b: CLIPConfig) -> bool:
    """Equal but for vocabulary, end-of-text id and activation, which a folder brings with it."""
    def shape(c: CLIPConfig) -> tuple:
        return c.embed_dim, c.vision, c.text.context_length, c.text.width, c.text.layers, c.text.heads

    return shape(a) == shape(b)


def architecture_name(cfg: CLIPConfig) -> Optional[str]:
    return next((name for name, c in CONFIGS.items() if same_architecture(c, cfg)), None)


def hf_tokenizer_files(tok: Tokenizer) -> dict[str, bytes]:
    """The files `transformers.AutoTokenizer` needs for wit's BPE: the tokenizers JSON and its special tokens."""
    special = {"bos_token": SOT, "eos_token": EOT, "pad_token": PAD, "unk_token": EOT}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": tok.context_length,
              "clean_up_tokenization_spaces": False, **special}
    return {TOKENIZER: tok.to_str().encode(),
            "tokenizer_config.json": json.dumps(config, indent=1).encode(),
            "special_tokens_map.json": json.dumps(special, indent=1).encode()}


def save_weights(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in state.items()})


def export(checkpoint: str, out: str, hub_id: Optional[str] = None) -> list[str]:
    """Writes the folder; each file whole or not at all. Returns the paths written."""
    model, tok = load_model(checkpoint)
    cfg: CLIPConfig = model.config
    tokenizer_name = hub_id or (os.path.abspath(out) if fileio.is_local(out) else out)
    oc_config = {"model_cfg": model_cfg(cfg, tok.pad_id, tokenizer_name), "preprocess_cfg": preprocess_cfg(cfg)}
    files = {WEIGHTS: save_weights(to_openclip_state(model.state_dict())), **hf_tokenizer_files(tok),
             CONFIG: json.dumps(oc_config, indent=1).encode()}  # the config last: it makes the folder a model
    paths = []
    for name, data in files.items():
        path = fileio.join(out, name)
        fileio.write_bytes(path, data)
        paths.append(path)
    return paths


@dataclass
class Folder:
    """An OpenCLIP folder: its config and tokenizer read, its weights found (and read only when asked)."""

    path: str
    config: CLIPConfig
    tokenizer: Optional[Tokenizer]  # None where the folder uses OpenCLIP's own tokenizer
    weights: str

    def state(self) -> dict[str, torch.Tensor]:
        """The weights under wit's names."""
        return from_openclip_state(_load_weights(self.weights))


def _weights_path(folder: str) -> str:
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    found = sorted(glob.glob(os.path.join(folder, "*.safetensors")) + glob.glob(os.path.join(folder, "*.bin")))
    if not found:
        raise InputError(f"{folder}: no weights ({', '.join(WEIGHT_FILES[:3])}, ...)")
    return found[0]


def _load_weights(path: str) -> dict[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load

            return load(fileio.read_bytes(path))
        state = torch.load(io.BytesIO(fileio.read_bytes(path)), map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch.load raise their own types for damaged files
        raise InputError(f"{path}: unreadable weights ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a state dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def read_folder(folder: str) -> Folder:
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: no such folder (an OpenCLIP model folder with {CONFIG})")
    config_path = os.path.join(folder, CONFIG)
    try:
        raw = json.loads(fileio.read_bytes(config_path))
    except FileNotFoundError:
        raise InputError(f"{folder}: no {CONFIG}; not an OpenCLIP model folder") from None
    except ValueError as e:
        raise InputError(f"{config_path}: not JSON ({e})") from None
    cfg = config_from_openclip(raw.get("model_cfg", raw) if isinstance(raw, dict) else raw, config_path)
    tok_path = os.path.join(folder, TOKENIZER)
    tok = Tokenizer.load(tok_path) if os.path.isfile(tok_path) else None
    return Folder(folder, cfg, tok, _weights_path(folder))


def check_tokenizer(folder: Folder, tok: Tokenizer) -> None:
    """The folder's text tower must read ids of this tokenizer: same vocabulary size, read at its end-of-text."""
    text = folder.config.text
    if tok.vocab_size != text.vocab_size:
        raise InputError(f"{folder.path}: a vocabulary of {text.vocab_size:,} tokens, but the tokenizer has "
                         f"{tok.vocab_size:,}; pass the tokenizer the folder was trained with (--tokenizer)")
    if tok.eot_id != text.eot_id:
        raise InputError(f"{folder.path}: reads the text at token {text.eot_id}, but the tokenizer's end-of-text "
                         f"is {tok.eot_id}; pass the tokenizer the folder was trained with (--tokenizer)")


def init_model(folder: Folder, model: CLIP) -> None:
    """Loads the folder's weights into `model`, strictly; an InputError says what differs."""
    state = folder.state()
    missing, unexpected = _differences(model.state_dict(), state)
    if missing or unexpected:
        raise InputError(f"{folder.weights}: does not fit {architecture_name(model.config) or 'the model'}: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_state_dict(state, strict=True)


def _differences(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    unexpected += [f"{k} {tuple(theirs[k].shape)} (wit: {tuple(v.shape)})" for k, v in ours.items()
                   if k in theirs and theirs[k].shape != v.shape]
    return missing, unexpected
