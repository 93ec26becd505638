"""OpenCLIP's folder format both ways: names and shapes pinned from OpenCLIP's own state dicts, the
export read back with identical features, and `wit train --init-from` starting from it. Where
open-clip-torch is installed, OpenCLIP itself loads the export."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from trainer import openclip
from trainer.checkpoint import load_model, save_checkpoint
from trainer.model import CLIP, config
from trainer.tokenizer import train_tokenizer
from trainer.train import TrainConfig, train
from wit.cli import main
from wit.core.errors import InputError
from tests.synthshards import write_shards

PINNED = json.loads((Path(__file__).parent / "openclip_state_dicts.json").read_text())


def _meta_model(name: str) -> CLIP:
    """The full-size model without allocating it: only names and shapes are compared."""
    cfg = config(name).with_vocab(49408, 49407)
    with torch.device("meta"):
        return CLIP(cfg)


@pytest.mark.parametrize("name", ["ViT-B-32", "RN50"])
def test_state_dict_names_and_shapes_are_openclips(name):
    ours = {k: list(v.shape) for k, v in openclip.to_openclip_state(_meta_model(name).state_dict()).items()}
    theirs = dict(map(tuple, PINNED["state_dicts"][name]))
    assert len(theirs) == {"ViT-B-32": 302, "RN50": 489}[name]
    assert ours == theirs
    back = openclip.from_openclip_state({k: torch.empty(0) for k in theirs})
    assert set(back) == set(_meta_model(name).state_dict())


@pytest.mark.parametrize("name", ["ViT-B-32", "RN50"])
def test_config_is_openclips_builtin_plus_eos_pooling(name):
    cfg = config(name).with_vocab(49408, 49407)
    written = openclip.model_cfg(cfg, pad_id=0, tokenizer_name="x")
    builtin = PINNED["configs"][name]
    assert written["embed_dim"] == builtin["embed_dim"] and written["quick_gelu"] is True
    assert written["vision_cfg"] == builtin["vision_cfg"]
    assert {k: written["text_cfg"][k] for k in builtin["text_cfg"]} == builtin["text_cfg"]
    assert written["text_cfg"]["pool_type"] == "eos" and written["text_cfg"]["eos_id"] == 49407
    assert openclip.config_from_openclip(written, "w") == cfg
    # OpenCLIP's own config for OpenAI's weights: argmax pooling reads the last id of the vocabulary.
    assert openclip.config_from_openclip({**builtin, "quick_gelu": True}, "b") == cfg
    assert openclip.config_from_openclip(builtin, "b") == replace(cfg, quick_gelu=False)


def test_settings_wit_lacks_are_named():
    cfg = json.loads(json.dumps(PINNED["configs"]["ViT-B-32"]))
    cfg["vision_cfg"].update(attentional_pool=True, patch_dropout=0.5)
    cfg["text_cfg"]["hf_model_name"] = "roberta-base"
    with pytest.raises(InputError, match=r"c.json: settings wit's CLIP does not have: "
                                         r"vision_cfg.attentional_pool=True, text_cfg.hf_model_name='roberta-base'$"):
        openclip.config_from_openclip(cfg, "c.json")
    with pytest.raises(InputError, match="not an OpenCLIP model config"):
        openclip.config_from_openclip({"vision_cfg": {}}, "c.json")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A wit checkpoint of a tiny ViT whose weights are all distinct from a fresh model's."""
    out = tmp_path_factory.mktemp("run")
    tok = train_tokenizer(["a red circle", "a blue square", "two green triangles"] * 20, vocab_size=300)
    cfg = config("tiny-vit").with_vocab(tok.vocab_size, tok.eot_id)
    torch.manual_seed(5)
    model = CLIP(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_checkpoint(str(out), {"step": 1, "model": model.state_dict(), "model_config": cfg.to_dict(),
                               "tokenizer": tok.to_str()}, keep=1)
    return out


def _features(model: CLIP, tok) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tok(["a red circle", "two blue squares", "a"]))


def test_export_reads_back_with_identical_features(run, tmp_path, capsys):
    folder = tmp_path / "oc"
    assert main(["export", "openclip", "--checkpoint", str(run), "--out", str(folder)]) == 0
    assert "local-dir:" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors",
                                                       "special_tokens_map.json", "tokenizer.json",
                                                       "tokenizer_config.json"]
    written = json.loads((folder / "open_clip_config.json").read_text())
    assert written["model_cfg"]["text_cfg"]["hf_tokenizer_name"] == str(folder)
    assert written["preprocess_cfg"]["size"] == 64

    original, tok = load_model(str(run))
    read = openclip.read_folder(str(folder))
    assert read.config == original.config and read.tokenizer.to_str() == tok.to_str()
    model = CLIP(read.config)
    openclip.init_model(read, model)
    model.eval()
    for a, b in zip(_features(original, tok), _features(model, read.tokenizer)):
        assert torch.equal(a, b)


def test_train_init_from_starts_from_the_folder(run, tmp_path):
    folder = tmp_path / "oc"
    openclip.export(str(run), str(folder))
    shards = tmp_path / "data"
    write_shards(str(shards), n_shards=1, per_shard=8)
    base = dict(shards=(str(shards / "shards"),), model="tiny-vit", batch_size=4, steps=1, warmup=1, workers=1,
                shuffle_buffer=4, progress=False, device="cpu")
    # lr 0: the one step leaves the weights as the folder gave them.
    summary = train(TrainConfig(out=str(tmp_path / "t"), init_from=str(folder), lr=0.0, **base))
    assert summary.steps == 1
    trained, tok = load_model(str(tmp_path / "t"))
    original, original_tok = load_model(str(run))
    assert tok.to_str() == original_tok.to_str()  # the folder's tokenizer, not one trained on the shards
    for (name, a), b in zip(original.state_dict().items(), trained.state_dict().values()):
        assert torch.equal(a, b), name

    with pytest.raises(InputError, match=r"not a tiny-rn \(pass --model tiny-vit\)"):
        train(TrainConfig(out=str(tmp_path / "u"), init_from=str(folder), **{**base, "model": "tiny-rn"}))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="has no tokenizer.json .* pass --tokenizer"):
        train(TrainConfig(out=str(tmp_path / "v"), init_from=str(folder), **base))
    other = train_tokenizer(["something else entirely"] * 10, vocab_size=280)
    other.save(str(tmp_path / "other.json"))
    with pytest.raises(InputError, match="a vocabulary of [0-9]+ tokens, but the tokenizer has"):
        train(TrainConfig(out=str(tmp_path / "w"), init_from=str(folder), tokenizer=str(tmp_path / "other.json"),
                          **base))
    assert main(["train", "--shards", str(shards / "shards"), "--out", str(tmp_path / "x"), "--model", "tiny-vit",
                 "--init-from", str(tmp_path / "nowhere"), "--no-progress", "--device", "cpu"]) == 2


def test_openclip_itself_loads_the_export_strictly(run, tmp_path):
    open_clip = pytest.importorskip("open_clip")
    pytest.importorskip("transformers")
    folder = tmp_path / "oc"
    openclip.export(str(run), str(folder))
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    oc_tok = open_clip.get_tokenizer(f"local-dir:{folder}")
    original, tok = load_model(str(run))
    texts = ["a red circle", "two blue squares", "a"]
    assert torch.equal(oc_tok(texts), tok(texts))
    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    model.eval()
    with torch.no_grad():
        theirs = model.encode_image(original.normalize_images(images), normalize=True)
        ours = original.encode_image(images)
        assert torch.allclose(theirs, ours, atol=1e-5)
        assert torch.allclose(model.encode_text(tok(texts), normalize=True), original.encode_text(tok(texts)),
                              atol=1e-5)
