import threading
import time

from pipelines import download
from pipelines.download import download_shard
from pipelines.fetch import FetchOptions
from pipelines.resize import ResizeOptions
from wit.shardformat import Sample


def test_decoding_runs_on_no_more_threads_than_cpu_slots(web_server, monkeypatch):
    """Twelve threads fetch at once, but only as many decode and resize as there are slots (cores)."""
    _, server = web_server
    lock, running, peak = threading.Lock(), [0], [0]
    real = download.resize_image

    def counted(data, opts):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)  # long enough for the other threads to arrive
        try:
            return real(data, opts)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(download, "resize_image", counted)
    monkeypatch.setattr(download, "cpu_slots", threading.BoundedSemaphore(2))
    samples = [Sample(key=str(i), uid=str(i), url=f"{server.base_url}/img/{i}.jpg", caption="c") for i in range(24)]
    got = download_shard(samples, FetchOptions(timeout=2, allow_private_networks=True), ResizeOptions(image_size=32),
                         threads=12)
    assert [s.status for s in got] == ["success"] * 24
    assert peak[0] <= 2
