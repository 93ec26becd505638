import json
import tarfile
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import load_model
from trainer.evaluate import retrieval, write_classification_set
from trainer.model import CLIP, config
from trainer.train import TrainConfig, lr_factor, param_groups, train
from wit.cli import main
from wit.core.errors import InputError
from tests.synthshards import write_shards
from wit.synthweb.vocab import COLOURS, SHAPES, Concept


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train-shards")
    write_shards(str(out), n_shards=2, per_shard=16)
    return out / "shards"


def _cfg(shard_dir: Path, out: Path, **kw) -> TrainConfig:
    base = dict(shards=(str(shard_dir),), out=str(out), model="tiny-vit", vocab_size=300, batch_size=8, steps=6,
                lr=1e-3, warmup=2, workers=2, shuffle_buffer=8, log_every=1, save_every=100, progress=False,
                device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_resume_takes_the_same_next_step_as_an_uninterrupted_run(shard_dir, tmp_path):
    straight = train(_cfg(shard_dir, tmp_path / "a"))
    first = train(_cfg(shard_dir, tmp_path / "b", stop_after=3))
    assert first.steps == 3
    resumed = train(_cfg(shard_dir, tmp_path / "b"))
    assert resumed.steps == 6
    assert resumed.losses == straight.losses[3:]  # steps 4, 5, 6: same batches, same weights, same lr
    a, _ = load_model(str(tmp_path / "a"))
    b, _ = load_model(str(tmp_path / "b"))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_resume_refuses_another_model(shard_dir, tmp_path):
    train(_cfg(shard_dir, tmp_path, steps=1))
    with pytest.raises(InputError, match="different model"):
        train(_cfg(shard_dir, tmp_path, steps=2, model="tiny-rn"))


def test_a_tiny_model_overfits_a_small_shard_set(tmp_path):
    write_shards(str(tmp_path / "data"), n_shards=1, per_shard=16, seed=3)
    shards = str(tmp_path / "data" / "shards")
    summary = train(_cfg(Path(shards), tmp_path / "run", batch_size=16, steps=100, lr=3e-3, warmup=10, workers=1,
                         shuffle_buffer=16, log_every=1, min_crop_scale=1.0))
    losses = [loss for _, loss in summary.losses]
    assert losses[0] > 2.0 and losses[-1] < 0.2, losses
    model, tok = load_model(str(tmp_path / "run"))
    metrics = retrieval(model, tok, [shards + "/00000.tar"], torch.device("cpu"))
    assert metrics["image_to_text_R@1"] >= 0.9 and metrics["text_to_image_R@1"] >= 0.9, metrics


def test_weight_decay_skips_gains_biases_and_the_temperature():
    model = CLIP(config("tiny-rn").with_vocab(100, 2))
    no_decay, decay = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in exempt and "text.ln_final.weight" in exempt and "visual.bn1.weight" in exempt
    assert "text.positional_embedding" in {names[id(p)] for p in decay["params"]}  # a matrix: decayed
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.2


def test_learning_rate_warms_up_then_follows_a_cosine_to_zero():
    factors = [lr_factor(s, 10, 110) for s in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.5) and factors[110] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))


def test_train_and_eval_commands(shard_dir, tmp_path, capsys):
    concepts = [Concept(c, s) for c in list(COLOURS)[:2] for s in SHAPES[:2]]
    sample_tar = sorted(shard_dir.glob("*.tar"))[0]
    with tarfile.open(sample_tar) as tar:
        jpgs = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")]
    samples = [(jpg, i % len(concepts)) for i, jpg in enumerate(jpgs)]
    zs = tmp_path / "zs"
    write_classification_set(str(zs), [f"{c.colour} {c.shape}" for c in concepts], ["a {c}", "a photo of a {c}."],
                             samples, shard_size=10)
    assert sorted(p.name for p in (zs / "test").glob("*.tar")) == ["0.tar", "1.tar"]  # clip_benchmark's layout
    assert (zs / "test" / "nshards.txt").read_text() == "2\n"

    out = tmp_path / "run"
    code = main(["train", "--shards", str(shard_dir / "00000.tar"), "--out", str(out), "--model", "tiny-rn",
                 "--vocab-size", "300", "--batch-size", "8", "--steps", "2", "--warmup", "1", "--workers", "1",
                 "--no-progress", "--val-shards", str(shard_dir / "00001.tar"), "--zeroshot", str(zs)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "trained 2 steps" in printed and "retrieval on 16 held-out images" in printed and "4 classes" in printed
    assert (out / "tokenizer.json").exists() and list((out / "tensorboard").iterdir())

    code = main(["eval", "--checkpoint", str(out), "--zeroshot", str(zs), "--json", str(tmp_path / "r.json")])
    assert code == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["zeroshot/zs"]["n"] == 16 and results["zeroshot/zs"]["chance"] == 0.25
    assert 0 <= results["zeroshot/zs"]["mean_per_class_recall"] <= 1

    assert main(["eval", "--checkpoint", str(tmp_path / "nothing-here"), "--zeroshot", str(zs)]) == 2
    assert "no checkpoints/latest" in capsys.readouterr().err


def test_tokenizer_command(shard_dir, tmp_path, capsys):
    assert main(["tokenizer", "train", "--shards", str(shard_dir), "--out", str(tmp_path / "t.json"),
                 "--vocab-size", "300"]) == 0
    from trainer.tokenizer import Tokenizer

    assert Tokenizer.load(str(tmp_path / "t.json")).vocab_size <= 300
    assert "2 shard(s)" in capsys.readouterr().out


def test_two_process_ddp_training_under_torchrun(shard_dir, tmp_path):
    """The real multi-process path: torchrun, gloo on the CPU, the gathered local loss, per-rank loader state."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(port),
         "-m", "wit.cli", "train", "--shards", str(shard_dir), "--out", str(out), "--model", "tiny-vit",
         "--vocab-size", "300", "--batch-size", "4", "--steps", "3", "--warmup", "1", "--workers", "1",
         "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained 3 steps") == 1  # rank 0 reports
    from trainer.train import latest_checkpoint, load_checkpoint

    ckpt = load_checkpoint(latest_checkpoint(str(out)))
    assert ckpt["world_size"] == 2 and len(ckpt["loader"]) == 2
    # each rank read its own shard: 3 batches of 4 from one stream each
    assert [s["streams"] for s in ckpt["loader"]] == [[[0, 12]], [[0, 12]]]
