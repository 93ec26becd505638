"""Symmetric InfoNCE over the global batch, computed locally on each rank.

Each rank scores its own images against every rank's texts (and its texts
against every image), so the logits are (local x global) rather than global x
global; the gather keeps its gradient, which is what makes this equal to the
single-device loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice."""

    @staticmethod
    def forward(ctx, features: torch.Tensor) -> torch.Tensor:
        features = features.contiguous()
        parts = [torch.empty_like(features) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, features)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # features are small (batch x embed): a plain all-reduce works on every backend
        return grad.chunk(dist.get_world_size(), dim=0)[dist.get_rank()]


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """All ranks' features in rank order; gradients flow back to each rank's share."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    return _GatherWithGrad.apply(features)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              rank: int = 0, all_image_features: torch.Tensor | None = None,
              all_text_features: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy; the positives sit on the diagonal
    offset by this rank's position in the gathered batch."""
    all_images = image_features if all_image_features is None else all_image_features
    all_texts = text_features if all_text_features is None else all_text_features
    logits_per_image = logit_scale * image_features.float() @ all_texts.float().T
    logits_per_text = logit_scale * text_features.float() @ all_images.float().T
    n = image_features.shape[0]
    labels = torch.arange(n, device=image_features.device) + rank * n
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def distributed_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                          logit_scale: torch.Tensor) -> torch.Tensor:
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return clip_loss(image_features, text_features, logit_scale, rank,
                     gather_features(image_features), gather_features(text_features))
