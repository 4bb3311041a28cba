"""Benchmark: shard writing vs webdataset.ShardWriter (disk) and raw boto3 (S3), reader clips/s, peak RSS at 1 GB.

Starts its own SeaweedFS server; each RSS figure comes from a fresh child process.
Sizes (--quick, the default): 96 samples of 1 MiB random "mp4" + a 6x32 float32 npy + json (~96 MiB), 16 MiB
shards; 144 real PyAV clips (128x96, 32 frames) for the reader; one 1 GiB shard (64 samples of 16 MiB) for RSS.
--full: 512 samples of 2 MiB (1 GiB), 128 MiB shards; 384 clips for the reader; the same 1 GiB RSS shard.
Usage: python benchmarks/shards.py [--full]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from alliance.store import LocalStore, ObjectInfo, ObjectStore, ObjectWriter  # noqa: E402


class SplitStore(ObjectStore):
    """Reads clips from one store and writes datasets/ to another: measures the write path alone."""

    def __init__(self, source: ObjectStore, target: ObjectStore):
        self.source, self.target, self.url = source, target, target.url

    def _pick(self, key: str) -> ObjectStore:
        return self.target if key.startswith("datasets/") else self.source

    def put_bytes(self, key: str, data: bytes) -> None:
        self._pick(key).put_bytes(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._pick(key).put_if_absent(key, data)

    def get_bytes(self, key: str) -> bytes:
        return self._pick(key).get_bytes(key)

    def open_read(self, key: str):
        return self._pick(key).open_read(key)

    def open_write(self, key: str, *, sync: bool = True) -> ObjectWriter:
        return self._pick(key).open_write(key, sync=sync)

    def sync(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        self.source.sync([k for k in keys if not k.startswith("datasets/")])
        self.target.sync([k for k in keys if k.startswith("datasets/")])

    def exists(self, key: str) -> bool:
        return self._pick(key).exists(key)

    def size(self, key: str) -> int:
        return self._pick(key).size(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._pick(prefix).list(prefix)

    def delete(self, key: str) -> None:
        self._pick(key).delete(key)


class RequestLog:
    """Counts a boto3 client's S3 calls by operation, with their mean latency: what each kind of record costs."""

    def __init__(self, client):
        import collections
        import threading

        self.client, self.count, self.seconds = client, collections.Counter(), collections.Counter()
        self.local = threading.local()

    def _before(self, model, **_kwargs) -> None:
        self.local.started = time.perf_counter()

    def _after(self, model, **_kwargs) -> None:
        self.count[model.name] += 1
        self.seconds[model.name] += time.perf_counter() - self.local.started

    def __enter__(self) -> "RequestLog":
        self.client.meta.events.register("before-call.s3", self._before)
        self.client.meta.events.register("after-call.s3", self._after)
        return self

    def __exit__(self, *exc) -> None:
        self.client.meta.events.unregister("before-call.s3", self._before)
        self.client.meta.events.unregister("after-call.s3", self._after)

    def summary(self) -> str:
        return ", ".join(f"{op} {n} ({self.seconds[op] / n * 1000:.0f} ms)" for op, n in sorted(self.count.items()))


def cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def npy_bytes(rows: int, seed: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).normal(size=(rows, 6)).astype(np.float32))
    return buf.getvalue()


def make_rows(store: ObjectStore, samples: int, member_bytes: int, *, reuse_one: bool = False,
              videos: list[bytes] | None = None) -> list[dict]:
    """Selection rows (kept) whose clip objects are random bytes (or the given videos) in `store`."""
    rows = []
    shared = os.urandom(member_bytes) if reuse_one else None
    if reuse_one:
        store.put_bytes("clips/bench/shared.mp4", shared)
        store.put_bytes("clips/bench/shared.imu.npy", npy_bytes(32, 0))
    for i in range(samples):
        base = "clips/bench/shared" if reuse_one else f"clips/bench/{i:06d}"
        if not reuse_one:
            store.put_bytes(f"{base}.mp4", videos[i % len(videos)] if videos else os.urandom(member_bytes))
            store.put_bytes(f"{base}.imu.npy", npy_bytes(32, i))
        rows.append({"clip_id": f"clip{i:06d}", "recording_id": f"rec{i // 4:05d}", "partner": f"p{i % 3}",
                     "delivery": "d1", "clip_key": f"{base}.mp4", "t0": 0.0, "t1": 3.2, "frames": 32, "fps": 10.0,
                     "width": 128, "height": 96, "sensor_keys": json.dumps({"imu": f"{base}.imu.npy"}),
                     "sensor_channels": json.dumps({"imu": ["ax", "ay", "az", "gx", "gy", "gz"]}),
                     "recording_meta": json.dumps({"license": "cc-by-4.0", "consent": {"scope": "research"}}),
                     "kept": True, "cluster": i % 5, "quality": "{}"})
    return rows


def ours_write(store: ObjectStore, rows: list[dict], target: int, name: str,
               streams: int | None = None) -> tuple[float, int]:
    """The whole user path: plan, claim, shards, index, manifest; `streams` None is the product default."""
    from sharding.plan import ShardConfig, plan_samples, plan_version
    from sharding.versions import STREAMS, write_version

    started = time.perf_counter()
    plan = plan_version(plan_samples(rows, store), ShardConfig(target_bytes=target), {"selection": "bench"})
    manifest = write_version(store, name, plan, streams=STREAMS if streams is None else streams)
    return time.perf_counter() - started, manifest.bytes


def wds_write(root: Path, source: LocalStore, rows: list[dict], target: int) -> tuple[float, int]:
    import webdataset

    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with webdataset.ShardWriter(str(root / "shard-%06d.tar"), maxsize=target, maxcount=1 << 30, verbose=0) as sink:
        for row in rows:
            sample = {"__key__": row["clip_id"], "json": json.dumps(row).encode(),
                      "mp4": (source.root / row["clip_key"]).read_bytes(),
                      "imu.npy": (source.root / json.loads(row["sensor_keys"])["imu"]).read_bytes()}
            sink.write(sample)
    elapsed = time.perf_counter() - started
    return elapsed, sum(p.stat().st_size for p in root.glob("*.tar"))


def s3_store(endpoint: str, key: str, secret: str, prefix: str):
    from alliance.settings import S3Settings
    from alliance.store import S3Store

    store = S3Store(f"s3://bench/{prefix}", S3Settings(endpoint_url=endpoint, access_key_id=key,
                                                      secret_access_key=secret))
    store.ensure_bucket()
    return store


def child_rss(target: str, tmp: str, endpoint: str, key: str, secret: str) -> None:
    """Write one ~1 GiB shard (64 samples x 16 MiB, incompressible) and report peak RSS above the start."""
    import sharding.versions  # noqa: F401  (imports before the baseline)
    import sharding.plan  # noqa: F401

    source = LocalStore(Path(tmp) / "rss-src")
    rows = make_rows(source, 64, 16 << 20, reuse_one=True)
    dest = LocalStore(Path(tmp) / f"rss-{target}") if target == "file" else s3_store(endpoint, key, secret, "rss")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    base = _status_mb("VmRSS")
    elapsed, size = ours_write(SplitStore(source, dest), rows, 2 << 30, "rss")
    print(json.dumps({"base_mb": base, "peak_mb": _status_mb("VmHWM"), "bytes": size, "seconds": elapsed}))


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/self/status has no {field}")


def read_clips(store_root: str, worker: int, workers: int, out: str) -> None:
    from sharding.reader import ShardReader

    import av  # noqa: F401  (the reader imports PyAV on its first clip; imports stay out of the span)

    store = LocalStore(Path(store_root))
    reader = ShardReader(store, "clips", 1, frames=16, size=64, worker=worker, num_workers=workers)
    Path(out + ".ready").touch()
    go = Path(out).parent / "go"
    while not go.exists():  # every worker starts iterating together, after all start-up and imports
        time.sleep(0.001)
    count = sum(1 for _ in reader)
    Path(out).write_text(json.dumps({"count": count, "end": time.time()}))


def reader_rate(store: LocalStore, workers: int, tmp: Path) -> tuple[float, int]:
    """Worker processes read their slots; the rate is over the span from a common start signal (given once
    every worker has started and imported) to the last end of iteration."""
    go = tmp / "go"
    go.unlink(missing_ok=True)
    procs = [subprocess.Popen([sys.executable, __file__, "--read", str(store.root), str(w), str(workers),
                               str(tmp / f"count{w}")]) for w in range(workers)]
    while not all((tmp / f"count{w}.ready").exists() for w in range(workers)):
        if any(p.poll() not in (None, 0) for p in procs):
            raise SystemExit("a reader worker failed before starting")
        time.sleep(0.005)
    started = time.time()
    go.touch()
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"reader worker exited with {p.returncode}")
    results = [json.loads((tmp / f"count{w}").read_text()) for w in range(workers)]
    for w in range(workers):
        (tmp / f"count{w}.ready").unlink()
    return max(r["end"] for r in results) - started, sum(r["count"] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="Bigger sizes (several minutes).")
    parser.add_argument("--rss", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--read", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss:
        return child_rss(*args.rss)
    if args.read:
        return read_clips(args.read[0], int(args.read[1]), int(args.read[2]), args.read[3])

    from alliance.devservers import SeaweedS3
    from ingest.synth import VideoSpec, write_video

    samples, member, shard, clips = (512, 2 << 20, 128 << 20, 384) if args.full else (96, 1 << 20, 16 << 20, 144)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory() as tmpdir, SeaweedS3(Path(tmpdir) / "weed") as server:
        tmp = Path(tmpdir)
        admin = server.identity("admin")
        source = LocalStore(tmp / "store")
        rows = make_rows(source, samples, member)
        mb = samples * member / 2**20
        print(f"write: {samples} samples x {member >> 20} MiB + npy + json ({mb:.0f} MiB), {shard >> 20} MiB shards")

        from sharding.versions import STREAMS

        disk_wds, disk_ours, cpu_wds, cpu_ours = [], [], [], []
        for attempt in range(5):  # alternate the order; os.sync() so no run pays for the other's dirty pages
            runs = [(lambda: disk_wds.append(wds_write(tmp / f"wds{attempt}", source, rows, shard)), cpu_wds),
                    (lambda: disk_ours.append(ours_write(source, rows, shard, f"disk{attempt}")), cpu_ours)]
            for run, cpu in runs if attempt % 2 == 0 else reversed(runs):
                os.sync()
                before = cpu_seconds()
                run()
                cpu.append(cpu_seconds() - before)
        wds_s, wds_bytes = min(disk_wds)
        ours_s, ours_bytes = min(disk_ours)
        print(f"  disk  webdataset.ShardWriter   {wds_bytes / 2**20 / wds_s:8.1f} MiB/s  ({wds_s:.3f} s, best of 5)")
        print(f"  disk  alliance (plan+shards+index+manifest, {STREAMS} shard streams, durable) "
              f"{ours_bytes / 2**20 / ours_s:8.1f} MiB/s  ({ours_s:.3f} s, best of 5)")
        print(f"  disk  RATIO alliance/webdataset: {wds_s / ours_s * ours_bytes / wds_bytes:.2f}x (goal >= 1.0x)")
        print(f"  disk  CPU seconds (all threads, best run): webdataset {min(cpu_wds):.3f}, "
              f"alliance {min(cpu_ours):.3f} (the wall-clock ratio needs a second free core for the sha256)")
        synced = []
        for i in range(3):
            os.sync()
            started = time.perf_counter()
            wds_write(tmp / f"wds-synced{i}", source, rows, shard)
            os.sync()
            synced.append(time.perf_counter() - started)
        print(f"  disk  webdataset.ShardWriter + os.sync(), its bytes on disk (context only) "
              f"{wds_bytes / 2**20 / min(synced):8.1f} MiB/s  ({min(synced):.3f} s)")
        one_s = min(os.sync() or ours_write(source, rows, shard, f"one{i}", streams=1)[0] for i in range(3))
        print(f"  disk  alliance, one shard stream (attribution) {ours_bytes / 2**20 / one_s:8.1f} MiB/s  "
              f"({one_s:.3f} s), ratio {wds_s / one_s * ours_bytes / wds_bytes:.2f}x")
        real_fsync = os.fsync
        os.fsync = lambda fd: None  # attribution only: ShardWriter never fsyncs
        try:
            nosync_s = min(os.sync() or ours_write(source, rows, shard, f"nosync{i}")[0] for i in range(3))
        finally:
            os.fsync = real_fsync
        print(f"  disk  alliance with fsync off (attribution only) {ours_bytes / 2**20 / nosync_s:8.1f} MiB/s  "
              f"({nosync_s:.3f} s), ratio {wds_s / nosync_s * ours_bytes / wds_bytes:.2f}x")

        import hashlib

        started = time.perf_counter()
        digest = hashlib.sha256()
        for path in sorted((source.root / "datasets/disk0/v1").glob("shard-*.tar")):
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        hash_s = time.perf_counter() - started
        print(f"  disk  sha256 of the same shard bytes alone, one thread (attribution) "
              f"{ours_bytes / 2**20 / hash_s:8.1f} MiB/s  ({hash_s:.3f} s)")

        target = s3_store(server.endpoint_url, admin.access_key, admin.secret_key, "write")
        shards = sorted((source.root / "datasets/disk0/v1").glob("shard-*.tar"))
        raw_bytes = sum(p.stat().st_size for p in shards)
        s3_raw, s3_ours = [], []
        for attempt in range(3):  # alternate the order, best of 3 each
            def raw_upload(attempt=attempt):
                started = time.perf_counter()
                for path in shards:  # the same bytes, boto3's managed transfer (threads, 8 MiB multipart)
                    target.client.upload_file(str(path), "bench", f"raw{attempt}/{path.name}")
                s3_raw.append(time.perf_counter() - started)

            runs = [raw_upload, lambda: s3_ours.append(ours_write(SplitStore(source, target), rows, shard,
                                                                  f"s3-{attempt}"))]
            for run in runs if attempt % 2 == 0 else reversed(runs):
                run()
        raw_s = min(s3_raw)
        s3_s, s3_bytes = min(s3_ours)
        with RequestLog(target.client) as requests:
            s3_one, _ = ours_write(SplitStore(source, target), rows, shard, "s3one", streams=1)
        print(f"  s3    boto3 upload_file of the shard files  {raw_bytes / 2**20 / raw_s:8.1f} MiB/s  "
              f"({raw_s:.2f} s, best of 3)")
        print(f"  s3    alliance ({STREAMS} shard streams, claim+receipts+index+manifest) "
              f"{s3_bytes / 2**20 / s3_s:8.1f} MiB/s  ({s3_s:.2f} s, best of 3)")
        print(f"  s3    RATIO alliance/boto3: {raw_s / s3_s * s3_bytes / raw_bytes:.2f}x (goal >= 0.8x)")
        print(f"  s3    alliance, one shard stream (attribution) {s3_bytes / 2**20 / s3_one:8.1f} MiB/s  "
              f"({s3_one:.2f} s), ratio {raw_s / s3_one * s3_bytes / raw_bytes:.2f}x")
        print(f"  s3    requests of that write (count, mean latency): {requests.summary()}")

        videos = [write_video(tmp / f"v{i}.mp4", VideoSpec(width=128, height=96, fps=10, frames=32, seed=i,
                                                           scene="pan")).read_bytes() for i in range(8)]
        reader_store = LocalStore(tmp / "reader")
        ours_write(reader_store, make_rows(reader_store, clips, 0, videos=videos), 1 << 18, "clips")
        print(f"read: {clips} clips of 128x96x32 frames (H.264), decoded to 16 frames at 64x64, file://")
        for workers in (1, 2):
            elapsed, count = reader_rate(reader_store, workers, tmp)
            print(f"  reader {workers} worker(s): {count / elapsed:7.1f} clips/s ({count} clips in {elapsed:.2f} s, "
                  f"iteration span)")

        print("rss: one shard of 64 x 16 MiB incompressible samples (~1 GiB), each run in its own process")
        for where in ("file", "s3"):
            out = subprocess.run([sys.executable, __file__, "--rss", where, tmpdir, server.endpoint_url,
                                  admin.access_key, admin.secret_key], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {where:<4} {r['bytes'] / 2**30:.2f} GiB in {r['seconds']:.1f} s: peak RSS {r['peak_mb']:.0f} MiB "
                  f"(before writing {r['base_mb']:.0f} MiB, +{r['peak_mb'] - r['base_mb']:.0f} MiB)")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
