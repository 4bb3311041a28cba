"""The streaming reader: disjoint slots, seeded shuffle, exact resume, torch-free, counted failures."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from sharding.errors import DatasetError
from sharding.plan import ShardConfig, plan_samples, plan_version
from sharding.reader import ShardReader
from sharding.versions import write_version
from tests.sharding.helpers import make_selection


@pytest.fixture
def ego(file_store, tmp_path):
    selection = make_selection(file_store, tmp_path / "media", recordings_per_partner=2, clips_per_recording=3)
    config = ShardConfig(target_bytes=1 << 30, max_samples=4, seed=3)
    manifest = write_version(file_store, "ego", plan_version(plan_samples(selection.rows, file_store), config,
                                                             {"selection": selection.run}))
    assert manifest.samples == 18 and len(manifest.shards) == 5
    return file_store


def keys(reader):
    return [s.key for s in reader]


@pytest.mark.parametrize("world_size,num_workers", [(1, 2), (2, 2), (1, 8), (3, 3)])
def test_slots_never_share_a_sample_and_cover_the_epoch(ego, world_size, num_workers):
    seen = []
    for rank, worker in itertools.product(range(world_size), range(num_workers)):
        reader = ShardReader(ego, "ego", 1, frames=2, size=16, shuffle_buffer=3, seed=5, rank=rank,
                             world_size=world_size, worker=worker, num_workers=num_workers)
        seen += keys(reader)
    assert len(seen) == len(set(seen)) == 18, "every sample exactly once per epoch across all slots"


def test_resume_continues_exactly(ego):
    full = ShardReader(ego, "ego", 1, frames=2, size=16, shuffle_buffer=5, seed=11, epoch=2)
    expected = keys(full)
    first = ShardReader(ego, "ego", 1, frames=2, size=16, shuffle_buffer=5, seed=11, epoch=2)
    head = [s.key for s in itertools.islice(iter(first), 7)]
    state = first.state_dict()
    assert state["yielded"] == 7 and state["epoch"] == 2
    resumed = ShardReader(ego, "ego", 1, frames=2, size=16, shuffle_buffer=5, seed=11)
    resumed.load_state_dict(state)
    assert head + keys(resumed) == expected
    assert resumed.epoch == 3 and resumed.yielded == 0, "a finished pass moves to the next epoch"
    with pytest.raises(DatasetError, match="seed"):
        ShardReader(ego, "ego", 1, seed=12).load_state_dict(state)


def test_shuffle_is_seeded_and_changes_per_epoch(ego):
    plain = keys(ShardReader(ego, "ego", 1, frames=2, size=16))
    a = keys(ShardReader(ego, "ego", 1, frames=2, size=16, shuffle_buffer=6, seed=1))
    b = keys(ShardReader(ego, "ego", 1, frames=2, size=16, shuffle_buffer=6, seed=1))
    c = keys(ShardReader(ego, "ego", 1, frames=2, size=16, shuffle_buffer=6, seed=1, epoch=1))
    assert a == b and a != plain and a != c and sorted(a) == sorted(plain) == sorted(c)


def test_bad_mp4_raises_or_is_counted(ego, tmp_path):
    import tarfile

    from sharding.manifest import load_manifest

    manifest = load_manifest(ego, "ego", 1)
    path = ego.root / manifest.shards[0].key
    with tarfile.open(path) as archive:
        first = next(m for m in archive.getmembers() if m.name.endswith(".mp4"))
    data = bytearray(path.read_bytes())
    data[first.offset_data + 8:first.offset_data + first.size] = bytes(first.size - 8)  # keep 'ftyp', zero the rest
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="decode"):
        keys(ShardReader(ego, "ego", 1, frames=2, size=16))
    reader = ShardReader(ego, "ego", 1, frames=2, size=16, on_error="skip")
    assert len(keys(reader)) == 17 and reader.failures == {"decode_failed": 1}


def _rewrite_member(path, suffix: str, payload: bytes, nth: int = 0) -> str:
    """Replace the nth member ending in `suffix` of the tar at `path` with `payload`; its sample key."""
    import io
    import tarfile

    with tarfile.open(path) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    target = [m.name for m, _ in members if m.name.endswith(suffix)][nth]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for member, data in members:
            data = payload if member.name == target else data
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return target[:-len(suffix)]


@pytest.mark.parametrize("suffix,payload,reason", [
    (".json", b"{not json", "bad_json"),
    (".json", b"\xff\xfe", "bad_json"),
    (".json", b"[1, 2]", "bad_json"),
    (".imu.npy", b"\x93NUMPY truncated", "bad_sensor_array"),
    (".imu.npy", b"not an array at all", "bad_sensor_array"),
])
def test_a_bad_json_or_sensor_member_raises_naming_it_or_is_skipped_by_reason(ego, suffix, payload, reason):
    from sharding.errors import SampleError
    from sharding.manifest import load_manifest

    shard = ego.root / load_manifest(ego, "ego", 1).shards[0].key
    key = _rewrite_member(shard, suffix, payload)
    with pytest.raises(SampleError, match=f"{key}{suffix}".replace(".", r"\.")) as raised:
        keys(ShardReader(ego, "ego", 1, frames=2, size=16))
    assert raised.value.reason == reason
    reader = ShardReader(ego, "ego", 1, frames=2, size=16, on_error="skip")
    assert len(keys(reader)) == 17 and reader.failures == {reason: 1}


def test_open_reads_the_manifest_and_the_constructor_reads_nothing(ego):
    from sharding.errors import VersionNotFound

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"building the reader called store.{name}")

    with pytest.raises(VersionNotFound, match="ego@v9 does not exist"):
        ShardReader.open(ego, "ego", 9)
    opened = ShardReader.open(ego, "ego", 1, frames=2, size=16)
    assert opened.manifest.samples == 18 and keys(opened) == keys(ShardReader(ego, "ego", 1, frames=2, size=16))
    # e.g. one reader built per loader worker, in the worker: no store call until it is iterated
    reader = ShardReader(Untouchable(), "ego", 1, worker=1, num_workers=2, manifest=opened.manifest)
    assert reader.state_dict()["dataset"] == "ego" and reader.slots == 2
    lazy = ShardReader(Untouchable(), "ego", 9, worker=1, num_workers=2)  # no manifest given: still no I/O
    assert lazy.state_dict()["version"] == 9
    with pytest.raises(VersionNotFound, match="ego@v9 does not exist"):
        keys(ShardReader(ego, "ego", 9))  # told on first use
    with pytest.raises(DatasetError, match="given the manifest of ego@v1"):
        ShardReader(ego, "ego", 2, manifest=opened.manifest)


def test_reader_imports_neither_torch_nor_beam():
    code = ("import sys, sharding.reader, sharding.versions, sharding.audit, sharding.gc, sharding.ledger; "
            "print('torch' in sys.modules, 'apache_beam' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_process_forked_after_decoding_decodes_too(tmp_path):
    # loader workers are forked from a trainer that may have decoded clips itself: the child must not inherit a
    # scaler (or swscale thread pool) from its parent; it once hung here for ever
    import multiprocessing

    from ingest.synth import VideoSpec, write_video
    from sharding.reader import decode_frames

    mp4 = write_video(tmp_path / "clip.mp4", VideoSpec(width=64, height=48, frames=12)).read_bytes()
    expected, _ = decode_frames(mp4, 6, 32, "clip")
    results = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(
        target=lambda: results.put(decode_frames(mp4, 6, 32, "clip")[0].tobytes()))
    child.start()
    child.join(30)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung, "the forked child hung decoding a clip its parent had decoded before"
    assert child.exitcode == 0 and results.get(timeout=5) == expected.tobytes()
