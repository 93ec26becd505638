import math

import pytest
import torch

from trainer.loss import clip_loss
from trainer.model import CLIP, CONFIGS, LOGIT_SCALE_MAX, config


def _tokens(n: int, length: int, eot_at: list[int], vocab: int = 100, eot: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, vocab, (n, length), generator=g)
    for i, pos in enumerate(eot_at):
        tokens[i, pos] = eot
        tokens[i, pos + 1:] = 0
    return tokens


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_towers_give_unit_embeddings(name):
    cfg = config(name).with_vocab(100, 2)
    model = CLIP(cfg).eval()
    images = torch.randint(0, 256, (3, 3, cfg.vision.image_size, cfg.vision.image_size), dtype=torch.uint8)
    img, txt, scale = model(images, _tokens(3, 77, [5, 9, 76]))
    assert img.shape == txt.shape == (3, cfg.embed_dim)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


@pytest.mark.parametrize("name,expected", [("ViT-B-32", 151_277_313), ("RN50", 102_007_137)])
def test_paper_configs_have_openai_clip_parameter_counts(name, expected):
    # OpenAI's released ViT-B/32 and RN50 (vocab 49408, context 77) have exactly these many parameters.
    with torch.device("meta"):
        model = CLIP(CONFIGS[name])
    assert sum(p.numel() for p in model.parameters()) == expected


def test_text_features_are_read_at_eot_and_ignore_what_follows():
    model = CLIP(config("tiny-vit").with_vocab(100, 2)).eval()
    tokens = _tokens(2, 77, [4, 7])
    with torch.no_grad():
        full = model.encode_text(tokens)
        trimmed = model.encode_text(tokens[:, :8])  # what the loader's trimming hands over
        changed = tokens.clone()
        changed[:, 10:] = 5  # anything after EOT: the causal mask hides it
        after = model.encode_text(changed)
        changed[0, 2] = 7  # before EOT: it matters
        before = model.encode_text(changed)
    assert torch.allclose(full, trimmed, atol=1e-6) and torch.allclose(full, after, atol=1e-6)
    assert not torch.allclose(full[0], before[0], atol=1e-4)


def test_temperature_is_clamped_at_100():
    model = CLIP(config("tiny-vit").with_vocab(100, 2))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    assert model.scale().item() == pytest.approx(100.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(LOGIT_SCALE_MAX)
    # and an optimizer pushing it up is held at the bound by the step's clamp
    opt = torch.optim.SGD([model.logit_scale], lr=10.0)
    loss = -model.scale() * model.logit_scale  # gradient pushes logit_scale up
    loss.backward()
    opt.step()
    assert model.logit_scale.item() > LOGIT_SCALE_MAX
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(LOGIT_SCALE_MAX)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    cfg = config(name).with_vocab(100, 2)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, cfg.vision.image_size, cfg.vision.image_size), dtype=torch.uint8)
    tokens = _tokens(4, 16, [3, 5, 8, 15])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = CLIP(cfg).eval()  # eval: BatchNorm statistics must not differ between the two passes
        model.set_grad_checkpointing(checkpointing)
        model.train(False)
        for m in model.modules():
            if hasattr(m, "grad_checkpointing"):
                m.training = True  # checkpointing applies in training mode only
        clip_loss(*model(images, tokens)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
