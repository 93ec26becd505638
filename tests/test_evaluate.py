"""Scoring as clip_benchmark scores: retrieval with several captions per image, set names, its layout."""

import torch

from trainer.evaluate import _captions, recall_at_k, retrieval_shards, set_names, write_retrieval_set
from wit.core.shardformat import iter_tar


def _clip_benchmark_recall(scores, positive, k):
    """clip_benchmark's zeroshot_retrieval.recall_at_k, then `> 0`: any positive among the top k."""
    top = torch.topk(scores, k, dim=1).indices
    onehot = torch.nn.functional.one_hot(top, num_classes=scores.shape[1])
    return ((onehot * positive.view(len(scores), 1, -1)).sum(dim=(1, 2)) > 0).float().mean().item()


def test_recall_with_several_captions_per_image_equals_clip_benchmarks():
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(40, 16), dim=-1)
    owner = torch.arange(40).repeat_interleave(torch.randint(1, 6, (40,)))  # 1-5 captions an image
    texts = torch.nn.functional.normalize(images[owner] + 0.9 * torch.randn(len(owner), 16), dim=-1)
    ours = recall_at_k(images, texts, (1, 5, 10), owner=owner)
    scores = texts @ images.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(scores)), owner] = True
    for k in (1, 5, 10):
        assert ours[f"text_to_image_R@{k}"] == _clip_benchmark_recall(scores, positive, k)  # image_retrieval
        assert ours[f"image_to_text_R@{k}"] == _clip_benchmark_recall(scores.T, positive.T, k)  # text_retrieval
    assert 0 < ours["image_to_text_R@1"] < ours["image_to_text_R@10"] <= 1


def test_identical_captions_of_two_images_tie_as_clip_benchmark_breaks_ties():
    torch.manual_seed(2)
    images = torch.nn.functional.normalize(torch.randn(30, 8), dim=-1)
    owner = torch.arange(30).repeat_interleave(2)
    texts = torch.nn.functional.normalize(images[owner] + 1.5 * torch.randn(60, 8), dim=-1)
    texts[1::4] = texts[3::4]  # image 2i's second caption is image 2i+1's second caption
    ours = recall_at_k(images, texts, (1, 5), owner=owner)
    scores = texts @ images.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(scores)), owner] = True
    for k in (1, 5):
        assert ours[f"text_to_image_R@{k}"] == _clip_benchmark_recall(scores, positive, k)
        assert ours[f"image_to_text_R@{k}"] == _clip_benchmark_recall(scores.T, positive.T, k)


def test_one_caption_per_image_is_the_diagonal():
    torch.manual_seed(1)
    feats = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    r = recall_at_k(feats, feats, (1,))
    assert r == {"image_to_text_R@1": 1.0, "text_to_image_R@1": 1.0}


def test_captions_are_lines_and_sets_are_named_apart(tmp_path):
    assert _captions({"txt": b"a dog\n\na dog on grass\n"}) == ["a dog", "a dog on grass"]
    assert set_names(["/data/a/imagenet", "/data/b/imagenet/", "/data/cars"]) == [
        "/data/a/imagenet", "/data/b/imagenet", "cars"]
    (tmp_path / "test").mkdir()
    (tmp_path / "dataset_type.txt").write_text("retrieval\n")
    (tmp_path / "test" / "nshards.txt").write_text("2\n")
    assert [p.rsplit("/", 2)[-2:] for p in retrieval_shards(str(tmp_path))] == [["test", "0.tar"], ["test", "1.tar"]]


def test_a_written_retrieval_set_reads_back_in_clip_benchmarks_layout(tmp_path):
    samples = [(bytes([i]) * 10, [f"caption {i}", f"another {i}"][: 1 + i % 2]) for i in range(5)]
    assert write_retrieval_set(str(tmp_path), samples, shard_size=2) == 5
    assert (tmp_path / "dataset_type.txt").read_text() == "retrieval\n"
    assert (tmp_path / "test" / "nshards.txt").read_text() == "3\n"
    def fail(e: Exception) -> bool:
        raise e

    read = [s for path in retrieval_shards(str(tmp_path)) for s in iter_tar(path, fail)]
    assert [(s["jpg"], _captions(s)) for s in read] == samples
    assert [s["__key__"] for s in read] == [f"s{i:07d}" for i in range(5)]
