"""Folder locks: flock on local folders, a renewed lease on filesystems without locks."""

import json
import time

import pytest
from apache_beam.io.localfilesystem import LocalFileSystem

from wit.core import fileio
from wit.core.errors import FolderBusy


class LeaseFS(LocalFileSystem):
    """A local folder seen through a `leasefs://` scheme: a filesystem wit cannot flock, as gs:// and s3://."""

    @classmethod
    def scheme(cls):
        return "leasefs"

    @staticmethod
    def _local(path):
        return path[len("leasefs://"):] if isinstance(path, str) and path.startswith("leasefs://") else path

    def join(self, base, *parts):
        return "leasefs://" + super().join(self._local(base), *parts)

    def exists(self, path):
        return super().exists(self._local(path))

    def create(self, path, *args, **kwargs):
        return super().create(self._local(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)

    def rename(self, sources, destinations):
        return super().rename([self._local(p) for p in sources], [self._local(p) for p in destinations])

    def delete(self, paths):
        return super().delete([self._local(p) for p in paths])


def test_a_lease_refuses_a_second_writer_and_goes_with_the_first(tmp_path, monkeypatch):
    folder = f"leasefs://{tmp_path}"
    with fileio.folder_lock(folder, "wit build"):
        lease = json.loads((tmp_path / fileio.LOCK_NAME).read_text())
        assert lease["pid"] > 0 and time.time() - lease["renewed"] < 5
        with pytest.raises(FolderBusy, match=r"in use by another wit build \(pid .*lease .* 10 minutes old"):
            with fileio.folder_lock(folder, "wit build"):
                pass
    assert not (tmp_path / fileio.LOCK_NAME).exists()


def test_a_stale_lease_of_a_crashed_run_is_taken_over(tmp_path):
    stale = {"host": "gone", "pid": 1, "since": "2026-01-01T00:00:00Z", "renewed": time.time() - 3600}
    (tmp_path / fileio.LOCK_NAME).write_text(json.dumps(stale))
    with fileio.folder_lock(f"leasefs://{tmp_path}", "wit build"):
        assert json.loads((tmp_path / fileio.LOCK_NAME).read_text())["pid"] != 1


def test_a_local_lock_is_released_with_its_holder(tmp_path):
    with fileio.folder_lock(str(tmp_path), "wit build"):
        with pytest.raises(FolderBusy, match="in use by another wit build"):
            with fileio.folder_lock(str(tmp_path), "wit build"):
                pass
    with fileio.folder_lock(str(tmp_path), "wit build"):
        pass


def test_local_paths_are_told_from_object_store_urls():
    assert fileio.is_local("/tmp/out") and fileio.is_local("out/shards") and fileio.is_local("a:b")
    assert not fileio.is_local("gs://bucket/out") and not fileio.is_local("s3://bucket/out")
