"""Checkpoints are whole or absent, the latest is found by its pointer, old ones are pruned."""

import pytest
import torch

from trainer.checkpoint import latest_checkpoint, load_checkpoint, load_model, save_checkpoint
from trainer.model import CLIP, config
from trainer.tokenizer import train_tokenizer
from wit.core.errors import InputError


def test_save_keeps_the_newest_and_points_at_the_latest(tmp_path):
    out = str(tmp_path)
    assert latest_checkpoint(out) is None
    for step in (1, 2, 3):
        save_checkpoint(out, {"step": step, "w": torch.full((2,), float(step))}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt")) == ["step_00000002.pt",
                                                                             "step_00000003.pt"]
    latest = latest_checkpoint(out)
    assert latest.endswith("step_00000003.pt")
    assert torch.equal(load_checkpoint(latest)["w"], torch.full((2,), 3.0))


def test_a_model_loads_from_its_run_directory_and_a_bad_file_is_named(tmp_path):
    tok = train_tokenizer(["a red circle", "a blue square"] * 20, vocab_size=300)
    cfg = config("tiny-vit").with_vocab(tok.vocab_size, tok.eot_id)
    model = CLIP(cfg)
    save_checkpoint(str(tmp_path), {"step": 1, "model": model.state_dict(), "model_config": cfg.to_dict(),
                                    "tokenizer": tok.to_str()}, keep=1)
    loaded, loaded_tok = load_model(str(tmp_path))
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert loaded_tok.eot_id == tok.eot_id
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pt: not a readable wit checkpoint"):
        load_model(str(tmp_path / "bad.pt"))
    with pytest.raises(InputError, match="no checkpoints/latest"):
        load_model(str(tmp_path / "nothing"))
