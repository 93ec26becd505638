import io
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from trainer.data import Loader, LoaderState, ShardStream, StreamConfig, list_shards, square_crop
from trainer.tokenizer import train_tokenizer
from wit.core.errors import InputError
from tests.synthshards import write_shards
from wit.synthweb.vocab import TEMPLATES


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(str(out), n_shards=4, per_shard=12)
    return out / "shards"


@pytest.fixture(scope="module")
def tok_json() -> str:
    return train_tokenizer([t.format(colour="red", Colour="Red", shape="star", texture="plain", size="big")
                            for t in TEMPLATES] * 5, vocab_size=300).to_str()


def _cfg(shard_dir: Path, tok_json: str, **kw) -> StreamConfig:
    base = dict(shards=tuple(list_shards([str(shard_dir)])), batch_size=4, image_size=32, tokenizer_json=tok_json,
                shuffle_buffer=8, workers=0)
    base.update(kw)
    return StreamConfig(**base)


def _keys(batch) -> list:
    return [bytes(image.numpy()) for image in batch["images"]]  # every pixel: a sum alone can collide


def test_batches_have_the_model_layout(shard_dir, tok_json):
    batch = next(Loader(_cfg(shard_dir, tok_json)))
    assert batch["images"].shape == (4, 3, 32, 32) and batch["images"].dtype == torch.uint8
    assert batch["tokens"].dtype == torch.long and batch["tokens"].shape[0] == 4
    assert batch["tokens"].shape[1] % 8 == 0


def test_ranks_and_workers_split_the_shards_and_see_each_sample_once_per_epoch(shard_dir, tok_json):
    seen = Counter()
    for rank in range(2):
        cfg = _cfg(shard_dir, tok_json, rank=rank, world_size=2, workers=2, batch_size=1, shuffle_buffer=1)
        stream = ShardStream(cfg)
        for worker in range(2):
            shards = stream.epoch_shards(0, worker)
            assert len(shards) == 1
            seen.update(s["__key__"] for s in stream.raw_samples(0, worker, []))
    assert len(seen) == 48 and set(seen.values()) == {1}
    # the next epoch deals the shards differently
    stream = ShardStream(_cfg(shard_dir, tok_json, world_size=2, workers=2))
    assert [stream.epoch_shards(e, 0) for e in range(4)] != [stream.epoch_shards(0, 0)] * 4


def test_the_shuffle_is_seeded(shard_dir, tok_json):
    def order(seed):
        return [s["__key__"] for s in ShardStream(_cfg(shard_dir, tok_json, seed=seed)).raw_samples(0, 0, [])]

    assert order(0) == order(0)
    assert order(0) != order(1) and sorted(order(0)) == sorted(order(1))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_loader_yields_exactly_the_batches_an_uninterrupted_one_would(shard_dir, tok_json, workers):
    cfg = _cfg(shard_dir, tok_json, workers=workers)
    straight = Loader(cfg)
    expected = [next(straight) for _ in range(17)]  # crosses epoch boundaries (12 batches per epoch)
    first = Loader(cfg)
    for _ in range(7):
        next(first)
    state = LoaderState.from_dict(first.state.to_dict())
    resumed = Loader(cfg, state)
    for want in expected[7:]:
        got = next(resumed)
        assert torch.equal(got["images"], want["images"]) and torch.equal(got["tokens"], want["tokens"])
    assert resumed.state.to_dict() == straight.state.to_dict()


def test_resume_with_other_worker_count_is_refused(shard_dir, tok_json):
    loader = Loader(_cfg(shard_dir, tok_json, workers=2))
    next(loader)
    with pytest.raises(InputError, match="same number of ranks and --workers"):
        Loader(_cfg(shard_dir, tok_json, workers=0), loader.state)


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def test_corrupt_samples_are_skipped_and_counted(tmp_path, shard_dir, tok_json):
    good = sorted(shard_dir.glob("*.tar"))[0]
    with tarfile.open(good) as src:
        members = [(m.name, src.extractfile(m).read()) for m in src.getmembers()]
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for name, payload in members:
            _add(tar, name, payload)
        _add(tar, "broken.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg")
        _add(tar, "broken.txt", b"a red star")
        _add(tar, "noimage.txt", b"a caption without an image")
        _add(tar, "nocaption.jpg", members[0][1])
    truncated = tmp_path / "truncated.tar"
    data = sorted(shard_dir.glob("*.tar"))[1].read_bytes()  # other images than bad.tar's
    truncated.write_bytes(data[: len(data) // 2])

    cfg = _cfg(tmp_path, tok_json, shards=(str(bad), str(truncated)), batch_size=1, shuffle_buffer=1)
    loader = Loader(cfg)
    epoch0 = []
    while (batch := next(loader))["epoch"] == 0:
        epoch0.append(batch)
    # the 3 bad samples and the truncated tar's tail: counted, and everything readable still arrives
    assert loader.state.corrupt >= 4
    assert 12 < len(epoch0) < 24 and len({tuple(_keys(b)) for b in epoch0}) == len(epoch0)


def test_square_crop_is_random_in_training_and_centred_in_eval():
    import random

    from PIL import Image

    img = Image.new("RGB", (40, 20))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left
    centred = square_crop(img, 10)
    assert centred.shape == (10, 10, 3) and centred[:, :, 0].max() == 0  # the centre square misses the strip
    crops = {int(square_crop(img, 20, random.Random(i), 1.0)[:, 0, 0].max()) for i in range(20)}
    assert crops == {0, 255}  # at full size: sometimes starts on the strip, sometimes not


def test_openclip_webdataset_pipeline_reads_our_shards(shard_dir):
    """OpenCLIP's loader (open_clip_train.data.get_wds_dataset) groups tar members by webdataset's
    base_plus_ext, keeps samples with txt and one of png/jpg/jpeg/webp, decodes 'pilrgb' and renames
    image="jpg;png;jpeg;webp", text="txt". The same stages, run with webdataset on our shards:"""
    import webdataset as wds

    def filter_no_caption_or_no_image(sample):
        return "txt" in sample and any(k in sample for k in ("png", "jpg", "jpeg", "webp"))

    def fail(exn):
        raise exn

    pipeline = wds.DataPipeline(
        wds.SimpleShardList([str(p) for p in sorted(shard_dir.glob("*.tar"))]),
        wds.tarfile_to_samples(handler=fail),
        wds.select(filter_no_caption_or_no_image),
        wds.decode("pilrgb", handler=fail),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.to_tuple("image", "text"),
    )
    samples = list(pipeline)
    assert len(samples) == 48
    image, text = samples[0]
    assert image.mode == "RGB" and image.size == (64, 64) and isinstance(text, str) and text


def test_openclip_itself_reads_our_shards(shard_dir):
    """Runs OpenCLIP's own loader where open_clip_train is installed (it needs torchvision)."""
    data = pytest.importorskip("open_clip_train.data")
    from types import SimpleNamespace

    shards = "::".join(str(p) for p in sorted(shard_dir.glob("*.tar")))
    args = SimpleNamespace(train_data=shards, val_data=None, dataset_resampled=False, train_num_samples=48,
                           train_data_upsampling_factors=None, seed=0, batch_size=4, workers=0, world_size=1)
    info = data.get_wds_dataset(args, lambda im: torch.zeros(3), is_train=True, tokenizer=lambda t: [len(t)])
    batch = next(iter(info.dataloader))
    assert batch[0].shape == (4, 3)
