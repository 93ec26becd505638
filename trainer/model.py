"""CLIP as in Radford et al. 2021: a ViT or modified-ResNet image tower, a causal
text Transformer read at its end-of-text token, linear projections and a learned
temperature.

Attention goes through `F.scaled_dot_product_attention` with one fused QKV
projection, so the text tower uses the causal flash kernel instead of a
materialised mask; state-dict names follow OpenAI's CLIP where that costs nothing.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from wit.core.errors import InputError

# OpenAI CLIP's image normalisation; the loader hands over uint8 and the model normalises.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


@dataclass(frozen=True)
class VisionConfig:
    kind: str = "vit"  # "vit" or "resnet"
    image_size: int = 224
    width: int = 768
    layers: int = 12
    patch_size: int = 32  # vit only
    resnet_layers: tuple[int, ...] = (3, 4, 6, 3)  # resnet only

    @property
    def heads(self) -> int:
        # ViT: 64-dim heads; ResNet attention pool: width*32 channels / 64.
        return self.width // 64 if self.kind == "vit" else self.width * 32 // 64


@dataclass(frozen=True)
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    eot_id: int = 2


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int
    vision: VisionConfig
    text: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = True  # OpenAI's activation; False: exact GELU, as OpenCLIP's LAION-trained weights use

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "CLIPConfig":
        v = dict(d["vision"])
        v["resnet_layers"] = tuple(v["resnet_layers"])
        return CLIPConfig(embed_dim=d["embed_dim"], vision=VisionConfig(**v), text=TextConfig(**d["text"]),
                          quick_gelu=d.get("quick_gelu", True))

    def with_vocab(self, vocab_size: int, eot_id: int) -> "CLIPConfig":
        return replace(self, text=replace(self.text, vocab_size=vocab_size, eot_id=eot_id))


# The paper's configurations (Table 19/20) and two tiny ones for tests and the CPU demo.
CONFIGS: dict[str, CLIPConfig] = {
    "ViT-B-32": CLIPConfig(512, VisionConfig("vit", 224, 768, 12, 32)),
    "ViT-B-16": CLIPConfig(512, VisionConfig("vit", 224, 768, 12, 16)),
    "ViT-L-14": CLIPConfig(768, VisionConfig("vit", 224, 1024, 24, 14), TextConfig(width=768, heads=12)),
    "RN50": CLIPConfig(1024, VisionConfig("resnet", 224, 64, resnet_layers=(3, 4, 6, 3))),
    "tiny-vit": CLIPConfig(128, VisionConfig("vit", 64, 128, 4, 16), TextConfig(width=128, layers=3, heads=2)),
    "tiny-rn": CLIPConfig(128, VisionConfig("resnet", 64, 8, resnet_layers=(1, 1, 1, 1)),
                          TextConfig(width=128, layers=3, heads=2)),
}


def config(name: str) -> CLIPConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}; choose from {', '.join(CONFIGS)}") from None


class LayerNorm(nn.LayerNorm):
    """Computes in fp32 under autocast, as CLIP does, for stable statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.in_proj(x).view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width))


class ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int, quick_gelu: bool = True):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, causal: bool = False, quick_gelu: bool = True):
        super().__init__()
        self.width, self.layers, self.causal = width, layers, causal
        self.resblocks = nn.ModuleList([ResidualBlock(width, heads, quick_gelu) for _ in range(layers)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, self.causal, use_reentrant=False)
            else:
                x = block(x, self.causal)
        return x

    def init_weights(self) -> None:
        proj_std = (self.width ** -0.5) * ((2 * self.layers) ** -0.5)
        attn_std = self.width ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj.weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj.bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, output_dim: int, quick_gelu: bool = True):
        super().__init__()
        width, grid = cfg.width, cfg.image_size // cfg.patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, cfg.heads, quick_gelu=quick_gelu)
        self.transformer.init_weights()
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # N, grid*grid, width
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class Bottleneck(nn.Module):
    """CLIP's ResNet block: stride by average pooling (anti-aliased) after the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Module] = None
        if stride > 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)), ("0", nn.Conv2d(inplanes, planes * 4, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * 4)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.avgpool(self.relu(self.bn2(self.conv2(out))))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class AttentionPool2d(nn.Module):
    """Replaces global average pooling: one query (the mean) attends over the grid."""

    def __init__(self, spatial: int, embed_dim: int, heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spatial * spatial + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # N, HW, C
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        n, length, c = x.shape
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, -1, h, c // h).transpose(1, 2)

        q = split(self.q_proj(x[:, :1]))
        out = F.scaled_dot_product_attention(q, split(self.k_proj(x)), split(self.v_proj(x)))
        return self.c_proj(out.transpose(1, 2).reshape(n, c))


class ModifiedResNet(nn.Module):
    def __init__(self, cfg: VisionConfig, output_dim: int):
        super().__init__()
        width = cfg.width
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        self._inplanes = width
        self.layer1 = self._layer(width, cfg.resnet_layers[0])
        self.layer2 = self._layer(width * 2, cfg.resnet_layers[1], stride=2)
        self.layer3 = self._layer(width * 4, cfg.resnet_layers[2], stride=2)
        self.layer4 = self._layer(width * 8, cfg.resnet_layers[3], stride=2)
        self.attnpool = AttentionPool2d(cfg.image_size // 32, width * 32, cfg.heads, output_dim)
        self.grad_checkpointing = False
        self._init()

    def _layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * 4
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init(self) -> None:
        std = self.attnpool.c_proj.in_features ** -0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                nn.init.zeros_(block.bn3.weight)  # each block starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu(self.bn3(self.conv3(x))))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = checkpoint(layer, x, use_reentrant=False) if self.grad_checkpointing and self.training else layer(x)
        return self.attnpool(x)


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig, output_dim: int, quick_gelu: bool = True):
        super().__init__()
        self.eot_id = cfg.eot_id
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, causal=True, quick_gelu=quick_gelu)
        self.ln_final = LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, output_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.width ** -0.5)
        self.transformer.init_weights()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.ln_final(self.transformer(x))
        # The causal mask makes the end-of-text position the one that has read the whole caption.
        eot = (tokens == self.eot_id).int().argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        if cfg.vision.kind == "vit":
            self.visual: nn.Module = VisionTransformer(cfg.vision, cfg.embed_dim, cfg.quick_gelu)
        elif cfg.vision.kind == "resnet":
            self.visual = ModifiedResNet(cfg.vision, cfg.embed_dim)
        else:
            raise ValueError(f"unknown vision tower {cfg.vision.kind!r}")
        self.text = TextTransformer(cfg.text, cfg.embed_dim, cfg.quick_gelu)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.register_buffer("image_mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        if isinstance(self.visual, VisionTransformer):
            self.visual.transformer.grad_checkpointing = enabled
        else:
            self.visual.grad_checkpointing = enabled
        self.text.transformer.grad_checkpointing = enabled

    def normalize_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> normalised float, on the model's device (cheaper than in loader workers)."""
        return (images.float() - self.image_mean) / self.image_std

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = self.normalize_images(images)
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), never above 100 even between the optimizer's clamps."""
        return self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.logit_scale.clamp_(0, LOGIT_SCALE_MAX)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(tokens), self.scale()
