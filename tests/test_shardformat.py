import io
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from wit.core import fileio
from wit.core import shardformat as shards
from wit.core.shardformat import Sample, Status
from wit.core.errors import ErrorKind


def _samples():
    return [
        Sample(key="000001", uid="b", url="http://x/b", caption="two", status=Status.FAILED_TO_DOWNLOAD,
               error_message="http 404", error_kind=ErrorKind.HTTP, http_status=404, matched_query_ids=(1,),
               selected_query_ids=(1,)),
        Sample(key="000000", uid="a", url="http://x/a", caption="one", width=2, height=2, original_width=4,
               original_height=4, sha256="s", phash="00ff00ff00ff00ff", http_status=200,
               matched_query_ids=(0, 1), selected_query_ids=(0,), jpg=b"\xff\xd8jpeg"),
    ]


def test_shard_files_are_byte_reproducible_and_consistent(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    stats = shards.write_shard(str(a), 0, _samples())
    shards.write_shard(str(b), 0, list(reversed(_samples())))
    for name in ("00000.tar", "00000.parquet", "00000_stats.json"):
        assert (a / "shards" / name).read_bytes() == (b / "shards" / name).read_bytes(), name
    assert stats["count"] == 2 and stats["successes"] == 1 and stats["failed_to_download"] == 1
    assert sorted(os.listdir(a / "shards")) == ["00000.parquet", "00000.tar", "00000_stats.json"]

    with tarfile.open(a / "shards" / "00000.tar") as tar:
        assert tar.getnames() == ["000000.jpg", "000000.json", "000000.txt"]
        assert all(m.mtime == 0 for m in tar.getmembers())
    rows = shards.read_parquet(str(a / "shards" / "00000.parquet")).to_pylist()
    assert [r["key"] for r in rows] == ["000000", "000001"]
    assert rows[0]["selected_query_ids"] == [0] and "jpg" not in rows[0]
    assert rows[1]["status"] == "failed_to_download" and rows[1]["error_kind"] == "http"
    back = shards.from_table(shards.read_parquet(str(a / "shards" / "00000.parquet")))
    assert back[1].status is Status.FAILED_TO_DOWNLOAD and back[1].error_kind is ErrorKind.HTTP


def test_webdataset_reads_the_tar(tmp_path):
    shards.write_shard(str(tmp_path), 3, _samples())
    (sample,) = list(wds.WebDataset(str(tmp_path / "shards" / "00003.tar"), shardshuffle=False))
    assert sample["__key__"] == "000000" and sample["jpg"] == b"\xff\xd8jpeg" and sample["txt"] == b"one"
    meta = json.loads(sample["json"])
    assert meta["url"] == "http://x/a" and meta["matched_query_ids"] == [0, 1]
    assert meta["status"] == "success" and meta["error_kind"] is None


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with fileio.atomic_open(str(target)) as f:
            f.write(b"half")
            raise RuntimeError("crash")
    assert os.listdir(tmp_path) == []


def test_keys_follow_img2dataset_layout():
    assert shards.key_for(12, 34, 10_000) == "000120034"
    assert shards.key_for(0, 7, 100) == "0000007"
    for first, n, size in [(0, 5, 10), (99_995, 10, 10_000), (123, 400, 100), (0, 3, 1), (7, 30, 7)]:
        expected = [shards.key_for(*divmod(i, size), size) for i in range(first, first + n)]
        assert shards.keys_for(first, n, size).to_pylist() == expected  # the plan's column of keys


def test_staging_round_trip_keeps_images(tmp_path):
    path = str(tmp_path / "s.parquet")
    shards.write_parquet(path, _samples(), shards.STAGING_SCHEMA)
    back = {s.key: s for s in shards.read_samples(path)}
    assert back["000000"].jpg == b"\xff\xd8jpeg" and back["000000"].matched_query_ids == (0, 1)
    assert back["000001"].error_kind is ErrorKind.HTTP and back["000001"].status is Status.FAILED_TO_DOWNLOAD
    assert io.BytesIO(fileio.read_bytes(path)).read(4) == b"PAR1"


@pytest.mark.parametrize("n", [0, 1, 2 * shards.IMAGES_PER_CHUNK + 1])
def test_a_shards_images_are_staged_in_slices_and_read_back_whole(tmp_path, n):
    samples = [Sample(key=f"{i:06d}", uid=str(i), url=f"http://x/{i}", caption="c",
                      jpg=None if i % 7 == 0 else bytes([i % 251]) * (i % 300),
                      additional=(("note", None if i < shards.IMAGES_PER_CHUNK + 3 else i),)) for i in range(n)]
    path = str(tmp_path / "s.parquet")
    shards.write_parquet(path, samples, shards.STAGING_SCHEMA)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == -(-n // shards.IMAGES_PER_CHUNK)  # each slice of images its own row group
    assert shards.read_samples(path) == samples
    assert shards.read_parquet(path).column_names[:len(shards.STAGING_SCHEMA)] == shards.STAGING_SCHEMA.names


def test_status_dict_lists_a_bounded_number_of_messages(tmp_path):
    samples = [Sample(key=f"{i:06d}", uid=str(i), url=f"http://x/{i}", caption="c", status=Status.FAILED_TO_DOWNLOAD,
                      error_message=f"odd failure {i % (shards.MAX_MESSAGES + 50)}", error_kind=ErrorKind.OTHER)
               for i in range(2 * (shards.MAX_MESSAGES + 50))]
    ok = [Sample(key="x", uid="y", url="http://x/ok", caption="c")] * 3
    stats = shards.shard_stats(0, samples + ok)
    assert len(stats["status_dict"]) == shards.MAX_MESSAGES + 2  # the messages kept, the rest, and success
    assert stats["status_dict"]["success"] == 3  # img2dataset counts successes there too
    assert stats["status_dict"][shards.OTHER_MESSAGES] == 100
    assert sum(stats["status_dict"].values()) == len(samples) + 3


def _tarfile_stream(members) -> bytes:
    f = io.BytesIO()
    with tarfile.open(fileobj=f, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "wit", "wit"
            tar.addfile(info, io.BytesIO(data))
    return f.getvalue()


@pytest.mark.parametrize("count", [0, 1, 7, 19, 20, 21, 60])
def test_tar_bytes_are_those_tarfile_writes(count):
    names = ["000000001.jpg", "x" * 100, "dir/" * 30 + "a.txt", "é.json", "a b.txt"]
    sizes = [0, 1, 511, 512, 513, 1024, 10_240, 4_321]
    members = [(f"{i:04d}" + names[i % len(names)] if i % len(names) == 0 else names[i % len(names)],
                bytes((i * 7 + j) % 256 for j in range(sizes[i % len(sizes)]))) for i in range(count)]
    ours = io.BytesIO()
    shards.write_members(ours, members)
    assert ours.getvalue() == _tarfile_stream(members)
    with tarfile.open(fileobj=io.BytesIO(ours.getvalue())) as tar:
        assert [(m.name, m.size) for m in tar.getmembers()] == [(n, len(d)) for n, d in members]
