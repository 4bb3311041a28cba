"""The shard write path: tar headers, the hashing sink, deferred durability and fresh claims."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from alliance.errors import KeyNotFound
from alliance.store import LocalStore
from sharding.errors import DatasetError
from sharding.layout import receipt_key, shard_key
from sharding.plan import ShardConfig, object_sizes, plan_samples, plan_version
from sharding.tario import COPY_CHUNK, TarSink, _tarfile_header, iter_samples, member_header
from sharding.versions import ShardReceipt, claim_version, load_receipt, write_planned_shard, write_version
from tests.sharding.helpers import kept_rows, make_selection


@pytest.mark.parametrize("name,size", [
    ("a.json", 0), ("clip-000001.mp4", 1), ("x" * 95 + ".json", 511), ("dir/key.imu.npy", 512),
    ("k.mp4", 8**11 - 1), ("d" * 60 + "/" + "x" * 50, 7), ("k.mp4", 8**11 - 2), ("ümlaut.json", 3),
])
def test_member_headers_are_the_bytes_tarfile_writes(name, size):
    assert member_header(name, size) == _tarfile_header(name, size)


class _ReadOnly:
    """A source with read() only (no readinto), like some HTTP bodies."""

    def __init__(self, data: bytes):
        self.stream = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self.stream.read(n)


@pytest.mark.parametrize("wrap", [io.BytesIO, _ReadOnly], ids=["readinto", "read"])
def test_sink_hash_and_offsets_match_the_bytes_written(wrap):
    payloads = {"a": b"x" * 100, "b": bytes(range(256)) * (3 * COPY_CHUNK // 256 + 7), "c": b"", "d": b"y" * 70_000}
    out = io.BytesIO()
    sink = TarSink(out)
    spans = {}
    for key, data in payloads.items():
        spans[key] = sink.add_bytes(f"{key}.json", b'{"k": 1}')
        spans[key] = sink.add_stream(f"{key}.mp4", len(data), wrap(data), key)
    total, sha = sink.finish()
    written = out.getvalue()
    assert total == len(written) and sha == hashlib.sha256(written).hexdigest()
    for key, data in payloads.items():
        assert written[spans[key].offset:spans[key].offset + spans[key].size] == data
    samples = dict(iter_samples(io.BytesIO(written), "test"))
    assert {k: v["mp4"] for k, v in samples.items()} == payloads
    with tarfile.open(fileobj=io.BytesIO(written)) as archive:  # a stock tar reader agrees
        assert all(info.mtime == 0 and info.mode == 0o444 for info in archive.getmembers())


def test_sink_refuses_a_source_that_changed_size():
    sink = TarSink(io.BytesIO())
    with pytest.raises(DatasetError, match="ended after 10 of 20 bytes"):
        sink.add_stream("k.mp4", 20, io.BytesIO(b"z" * 10), "clips/k.mp4")
    sink.close()
    sink = TarSink(io.BytesIO())
    with pytest.raises(DatasetError, match="longer than the 10 bytes"):
        sink.add_stream("k.mp4", 10, io.BytesIO(b"z" * 11), "clips/k.mp4")
    sink.close()


def test_sink_memory_stays_at_its_buffer_pool():
    sink = TarSink(io.BytesIO())
    data = b"q" * (20 * COPY_CHUNK)
    sink.add_stream("big.mp4", len(data), io.BytesIO(data), "big")
    sink.finish()
    assert sink._made <= TarSink.BUFFERS


def test_deferred_sync_objects_appear_at_close_and_sync_makes_them_durable(tmp_path):
    store = LocalStore(tmp_path)
    with store.open_write("d/a.bin", sync=False) as writer:
        writer.write(b"abc")
    assert store.get_bytes("d/a.bin") == b"abc"
    store.sync(["d/a.bin"])
    store.sync([])
    with pytest.raises(KeyNotFound):
        store.sync(["d/missing.bin"])


def test_a_fresh_claim_rewrites_stale_leftovers_instead_of_trusting_them(file_store, tmp_path):
    """Objects left under a version number nobody holds (e.g. a gc that stopped half-way) are not resumed."""
    selection = make_selection(file_store, tmp_path / "media")
    plan = plan_version(plan_samples(kept_rows(selection), file_store), ShardConfig(target_bytes=24_000, seed=7),
                        {"selection": "sel-1"})
    stale = shard_key("ego", 1, 0)
    file_store.put_bytes(stale, b"stale")
    file_store.put_bytes(receipt_key("ego", 1, 0),
                         ShardReceipt(0, stale, 5, "0" * 64, 1, {"k": {"json": [0, 5]}}).to_json())
    manifest = write_version(file_store, "ego", plan)
    assert manifest.shards[0].bytes != 5
    assert file_store.size(stale) == manifest.shards[0].bytes
    assert hashlib.sha256(file_store.get_bytes(stale)).hexdigest() == manifest.shards[0].sha256
    again = claim_version(file_store, "ego", plan.sha256)
    assert again.committed == manifest and not again.fresh


def test_an_unreadable_receipt_means_the_shard_is_written_again(file_store, tmp_path):
    """Receipts are not fsynced: after a power loss one may be empty; the re-run rewrites that shard."""
    selection = make_selection(file_store, tmp_path / "media")
    plan = plan_version(plan_samples(kept_rows(selection), file_store), ShardConfig(target_bytes=24_000, seed=7),
                        {"selection": "sel-1"})
    claim = claim_version(file_store, "ego", plan.sha256)
    first = write_planned_shard(file_store, "ego", claim.version, plan.shards[0])
    file_store.put_bytes(receipt_key("ego", claim.version, 0), b"")
    assert load_receipt(file_store, "ego", claim.version, 0) is None
    again = write_planned_shard(file_store, "ego", claim.version, plan.shards[0])
    assert again == first and load_receipt(file_store, "ego", claim.version, 0) == first


class _SlowSizes:
    """A store whose size() waits like a network round trip, recording which threads asked."""

    def __init__(self, sizes: dict[str, int]):
        self.sizes, self.threads = sizes, set()

    def size(self, key: str) -> int:
        import threading
        import time

        self.threads.add(threading.current_thread().name)
        time.sleep(0.005)
        return self.sizes[key]


def test_object_sizes_go_concurrent_only_when_requests_wait():
    expected = {f"clips/{i:03d}.mp4": i * 7 for i in range(40)}
    slow = _SlowSizes(expected)
    assert object_sizes(slow, sorted(expected), threads=4, quick_s=0.001) == expected
    assert len(slow.threads) > 1, "requests that wait are spread over threads"
    local = _SlowSizes(expected)
    assert object_sizes(local, sorted(expected), threads=4, quick_s=60) == expected
    assert len(local.threads) == 1, "quick answers are asked for one by one"
