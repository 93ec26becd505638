import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from trainer.loss import clip_loss, distributed_clip_loss


def _features(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_loss_is_symmetric_in_images_and_texts():
    images, texts = _features(8, 16, 0)
    scale = torch.tensor(14.0)
    assert torch.allclose(clip_loss(images, texts, scale), clip_loss(texts, images, scale))


def test_known_small_cases():
    eye = torch.eye(2)
    # logits [[1, 0], [0, 1]]: each row's cross-entropy is log(1 + e^-1), in both directions
    assert clip_loss(eye, eye, torch.tensor(1.0)).item() == pytest.approx(math.log(1 + math.exp(-1)))
    same = F.normalize(torch.ones(5, 3), dim=-1)
    # identical features carry no information: uniform over 5 candidates
    assert clip_loss(same, same, torch.tensor(50.0)).item() == pytest.approx(math.log(5), rel=1e-6)
    # perfectly separated pairs at a high temperature scale: loss -> 0
    assert clip_loss(torch.eye(4), torch.eye(4), torch.tensor(100.0)).item() < 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_grads(rank: int, world: int, port: int, images, texts, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = images.shape[0] // world
    img = images[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    txt = texts[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    loss = distributed_clip_loss(img, txt, torch.tensor(10.0))
    loss.backward()
    results[rank] = (loss.item(), img.grad / world, txt.grad / world)  # DDP averages over ranks
    dist.destroy_process_group()


def test_local_loss_with_gathered_features_equals_the_global_batch_loss():
    images, texts = _features(8, 16, 1)
    full_img, full_txt = images.clone().requires_grad_(True), texts.clone().requires_grad_(True)
    full = clip_loss(full_img, full_txt, torch.tensor(10.0))
    full.backward()

    results = mp.Manager().dict()
    mp.spawn(_rank_grads, args=(2, _free_port(), images, texts, results), nprocs=2, join=True)
    assert sum(results[r][0] for r in range(2)) / 2 == pytest.approx(full.item(), rel=1e-5)
    # gradients flow through the gather: each rank's share equals the single-device gradient
    assert torch.allclose(torch.cat([results[r][1] for r in range(2)]), full_img.grad, atol=1e-6)
    assert torch.allclose(torch.cat([results[r][2] for r in range(2)]), full_txt.grad, atol=1e-6)
