"""Curation benchmarks: near-dup query time 10k vs 100k indexed, precision/recall, embedding clips/s, k-means RSS.

Run: .venv/bin/python benchmarks/curation.py [--quick | --full]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.neardup import HASH_BITS, NearDupConfig, NearDupIndex, Segment, Signature  # noqa: E402


def synthetic_index(n: int, frames: int, cfg: NearDupConfig, seed: int = 0) -> tuple[Segment, np.ndarray]:
    """n clips of random 63-bit frame hashes (the worst case for band buckets is uniform; real ones cluster)."""
    rng = np.random.default_rng(seed)
    plain = rng.integers(0, 1 << HASH_BITS, size=(n, len(cfg.scales), frames), dtype=np.uint64)
    segment = Segment.build([f"clip-{i:08d}" for i in range(n)], [f"h{i}" for i in range(n)], [""] * n,
                            list(plain), cfg)
    return segment, plain


def flip_bits(hashes: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    out = hashes.copy()
    for _ in range(bits):
        out ^= np.uint64(1) << rng.integers(0, HASH_BITS, size=out.shape).astype(np.uint64)
    return out


def bench_query(sizes: list[int], queries: int, frames: int = 12) -> None:
    cfg = NearDupConfig()
    print(f"\n== near-dup query time (random signatures, {frames} sampled frames x {len(cfg.scales)} scales; queries "
          f"x {cfg.phases} phases x 2 mirrors; bands {cfg.band_bits}; {queries} queries: half near copies with 4 "
          f"bits flipped per hash, half new; best of 3 runs per query) ==")
    baseline = None
    for n in sizes:
        started = time.perf_counter()
        segment, plain = synthetic_index(n, frames, cfg)
        built = time.perf_counter() - started
        index = NearDupIndex(cfg, [segment])
        rng = np.random.default_rng(1)
        found = 0
        times = []
        for q in range(queries):
            views = (cfg.phases, 2, len(cfg.scales), frames)
            hashes = rng.integers(0, 1 << HASH_BITS, size=views, dtype=np.uint64)
            if q % 2 == 0:  # a near copy: phase 0, plain, close to an indexed clip
                hashes[0, 0] = flip_bits(plain[int(rng.integers(n))], 4, rng)
            sig = Signature(hashes)
            best = float("inf")
            for _ in range(3):  # the best of three: the machine is shared, a query is a few milliseconds
                t = time.perf_counter()
                match = index.query(sig)
                best = min(best, time.perf_counter() - t)
            times.append(best)
            found += int(match is not None)
        median = float(np.median(times)) * 1e3
        p95 = float(np.quantile(times, 0.95)) * 1e3
        baseline = baseline or median
        print(f"indexed {n:>7,}: build {built:6.2f} s, index {segment.keys.nbytes + segment.entries.nbytes >> 20} MiB; "
              f"query median {median:.3f} ms, p95 {p95:.3f} ms; found {found}/{queries} "
              f"(expected {queries // 2}); ratio to {sizes[0]:,}: {median / baseline:.2f}x")


def bench_precision_recall(sources: int) -> None:
    from curation.evalset import TRANSFORMS, build_set, evaluate

    print(f"\n== near-dup precision/recall: {sources} generated sources x {len(TRANSFORMS)} transforms + 2 other "
          f"scenes each ==")
    started = time.perf_counter()
    clips = build_set(sources=sources)
    result = evaluate(clips)
    print(f"precision {result.precision:.3f}  recall {result.recall:.3f}  (tp {result.true_positives}, "
          f"fp {result.false_positives}, fn {result.false_negatives}) in {time.perf_counter() - started:.1f} s")
    if result.misses:
        print("missed:", ", ".join(result.misses))


def bench_embedding(clips: int) -> None:
    from alliance.store import LocalStore
    from curation.embed import ClipEncoder, clip_tensor, fetch_encoder, torch_device, write_tiny_encoder
    from curation.evalset import camera_frames, encode
    from curation.media import decode_clip

    import torch

    torch.set_num_threads(2)
    print(f"\n== embeddings on {torch_device()} ({torch.get_num_threads()} threads): {clips} clips of 40 frames "
          f"64x64 ==")
    data = [encode(camera_frames(500 + i % 8, 40)) for i in range(clips)]
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "store")
        for frames, size in ((4, 32), (8, 64)):
            spec = write_tiny_encoder(store, f"enc-{frames}-{size}", frames=frames, size=size, embed_dim=64)
            encoder = ClipEncoder(fetch_encoder(store, spec.model_key, Path(tmp) / "cache"))
            started = time.perf_counter()
            tensors = [clip_tensor(decode_clip(d, "c").frames, spec) for d in data]
            prep = time.perf_counter() - started
            started = time.perf_counter()
            out = encoder.embed_all(tensors, batch_size=16)
            model = time.perf_counter() - started
            print(f"tiny encoder T={frames} S={size} D={out.shape[1]}: decode+resize {clips / prep:7.1f} clips/s, "
                  f"encoder {clips / model:8.1f} clips/s, together {clips / (prep + model):7.1f} clips/s")


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM): unlike ru_maxrss it does not inherit the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _kmeans_child(n: int, dim: int, k: int, batch: int, materialize: bool, queue) -> None:
    from curation.balance import KMeansConfig, streaming_kmeans

    def batches():
        for start in range(0, n, batch):
            rng = np.random.default_rng(start)  # the same stream on every pass, never held whole
            centers = np.random.default_rng(0).normal(size=(64, dim)).astype(np.float32) * 3
            yield centers[rng.integers(0, 64, size=min(batch, n - start))] + rng.normal(
                size=(min(batch, n - start), dim)).astype(np.float32)

    started = time.perf_counter()
    if materialize:
        everything = np.concatenate(list(batches()))
        queue.put((_peak_rss_mib(), time.perf_counter() - started,
                   everything.nbytes))
        return
    centroids = streaming_kmeans(batches, KMeansConfig(k=k, passes=2))
    queue.put((_peak_rss_mib(), time.perf_counter() - started,
               centroids.shape[0]))


def bench_kmeans(n: int, dim: int, k: int, batch: int) -> None:
    print(f"\n== streaming k-means peak RSS: {n:,} synthetic embeddings of {dim} dims, k={k}, batches of {batch:,} ==")
    ctx = mp.get_context("spawn")
    results = {}
    for label, materialize, size in (("baseline: the same process holding all embeddings", True, n),
                                     ("streaming k-means, 2 passes", False, n)):
        queue = ctx.Queue()
        child = ctx.Process(target=_kmeans_child, args=(size, dim, k, batch, materialize, queue))
        child.start()
        rss, seconds, extra = queue.get()
        child.join()
        results[label] = rss
        what = f"{extra / 2**20:.0f} MiB of embeddings" if materialize else f"{extra} centroids"
        print(f"{label}: peak RSS {rss:7.1f} MiB in {seconds:6.1f} s ({what})")
    held, streamed = results.values()
    print(f"streaming / holding everything: {streamed / held:.2f}x peak RSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, about a minute")
    size.add_argument("--full", action="store_true", help="the issue's sizes (the default)")
    args = parser.parse_args()
    quick = args.quick
    bench_query([10_000, 100_000] if not quick else [2_000, 20_000], queries=200)
    bench_precision_recall(sources=4 if quick else 10)
    bench_embedding(clips=32 if quick else 128)
    bench_kmeans(n=200_000 if quick else 1_000_000, dim=128, k=256, batch=8192)


if __name__ == "__main__":
    main()
