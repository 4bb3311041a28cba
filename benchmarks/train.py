"""Training throughput: loader clips/s vs what the step consumes (CPU), and clips/s, step time and MFU (CUDA).

    python benchmarks/train.py                          # CPU: tiny preset, real shards through ShardReader
    python benchmarks/train.py --device cuda --preset vit_l   # GPU: ViT-L, bf16 + torch.compile, MFU, loader
    ALLIANCE_LEARNING=full pytest tests/training/test_learning.py -s   # the learning table: 3 seeds, all controls

The CPU part writes a small synthetic dataset version through the sharding API into a temporary file:// store,
then measures (1) the loader alone: clips/s that ClipLoader delivers with 1 and with `--workers` worker processes
(ShardReader: tar read, PyAV decode, resize, crop; then collate), nothing consuming; (2) the training step alone:
clips/s that jepa_step consumes (forward, backward, AdamW, EMA) on one batch already in memory, same preset and
batch, at 1 and at the default number of torch threads (the faster counts); (3) the real loop reading the shards,
with the share of its wall time spent waiting on data. The goal is (1) / (2) >= 1.5x with `--workers` processes:
the loader must never starve the step.
The GPU part times jepa_step (the loop's own step function) on device-resident clips, counts the FLOPs of one step
with torch.utils.flop_counter on the uncompiled model, and divides by the bf16 dense peak; prints peak memory; then
the loader's clips/s at the preset's clip shape (16 x 224) with `--workers` processes against the step's
consumption. `--checkpoint-activations` trades compute for memory (larger batches per GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from training.config import preset, with_overrides  # noqa: E402
from training.masks import MaskGenerator  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


def _peak(name: str) -> float:
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return 989e12


def cpu(args: argparse.Namespace) -> None:
    from alliance.store import LocalStore
    from training.data import ClipLoader, reader_factory
    from training.loop import train
    from training.step import build, jepa_step, prepare
    from training.synthetic_shards import write_synthetic_version

    cfg = with_overrides(preset(args.preset), {"data.workers": args.workers, "data.batch_size": args.batch,
                                               "run.steps": args.steps, "run.log_every": args.steps,
                                               "run.checkpoint_every": 10**9, "data.shuffle_buffer": 16})
    m = cfg.model
    print(f"preset {args.preset}: {m.frames}x{m.size}x{m.size} clips, {m.tokens} tokens, width {m.embed_dim}, "
          f"depth {m.depth}; batch {cfg.data.batch_size}; loader worker processes {cfg.data.workers}; "
          f"torch threads {torch.get_num_threads()}; cores {os.cpu_count()}; load {_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "store")
        started = time.perf_counter()
        version = write_synthetic_version(store, "bench", args.clips, frames=m.frames, size=m.size,
                                          samples_per_shard=16)
        print(f"wrote bench@v{version}: {args.clips} clips in {time.perf_counter() - started:.1f}s")

        # 1. the loader alone, reading and decoding shards, with 1 and with --workers processes
        loader_rates = {}
        for workers in sorted({1, cfg.data.workers}):
            loader_cfg = with_overrides(cfg, {"data.workers": workers})
            loader = ClipLoader(reader_factory(loader_cfg, store, "bench", version), loader_cfg)
            batches = iter(loader)
            for _ in range(workers):
                next(batches)  # every process started and its first shard opened
            started = time.perf_counter()
            count = 0
            for count, _ in enumerate(batches, start=1):
                if count >= args.loader_batches:
                    break
            loader_rates[workers] = count * cfg.data.batch_size / (time.perf_counter() - started)
            loader.close()

        # 2. the step alone, on a batch already in memory
        device = torch.device("cpu")
        masker = MaskGenerator(cfg.mask, m)
        model, teacher, optimizer = build(cfg, device, masker.num_sets)
        parts = prepare(model, teacher, optimizer, cfg, device)
        clip = torch.rand(cfg.data.batch_size, 3, m.frames, m.size, m.size)
        actions = torch.zeros(cfg.data.batch_size, m.grid[0], cfg.objective.action_dim)
        jepa_step(parts, clip, actions, masker(cfg.data.batch_size, 0), 0)
        # at 1 and at the default number of torch threads; the faster is what the loader must keep up with (on a
        # busy machine a second intra-op thread can make the tiny step several times slower, flattering the ratio)
        step_times = {}
        default_threads = torch.get_num_threads()
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            started = time.perf_counter()
            for step in range(1, args.steps + 1):
                jepa_step(parts, clip, actions, masker(cfg.data.batch_size, step), step)
            step_times[threads] = (time.perf_counter() - started) / args.steps
        torch.set_num_threads(default_threads)
        step_time = min(step_times.values())
        step_rate = cfg.data.batch_size / step_time

        # 3. the real loop on the shards
        lines: list[str] = []
        summary = train(store, "bench", version, cfg, echo=lines.append)
        wait = [line for line in lines if "data_wait" in line]

    for workers, rate in loader_rates.items():
        print(f"loader, {workers} worker process{'es' if workers > 1 else ''} (tar read + PyAV decode + resize + "
              f"collate): {rate:8.1f} clips/s")
    print(f"step (fwd+bwd+AdamW+EMA), CPU fp32: {step_rate:8.1f} clips/s  ({step_time * 1000:.0f} ms/step; "
          + ", ".join(f"{t} torch thread{'s' if t > 1 else ''} {v * 1000:.0f} ms" for t, v in step_times.items())
          + ")")
    for workers, rate in loader_rates.items():
        print(f"loader ({workers} process{'es' if workers > 1 else ''}) / step consumption: {rate / step_rate:6.2f}x"
              + ("  (goal >= 1.5x)" if workers == cfg.data.workers else ""))
    print(f"real loop on shards: {summary.steps} steps, {summary.clips_per_s:.1f} clips/s; {wait[-1] if wait else ''}")
    print(f"load at the end: {_load()}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cuda(args: argparse.Namespace) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from training.step import build, jepa_step, prepare

    device = torch.device("cuda")
    cfg = with_overrides(preset(args.preset), {"data.batch_size": args.batch, "run.steps": 100000,
                                               "model.checkpoint_activations": args.checkpoint_activations})
    m = cfg.model
    name = torch.cuda.get_device_name(device)
    peak = _peak(name)
    masker = MaskGenerator(cfg.mask, m)
    clip = torch.rand(cfg.data.batch_size, 3, m.frames, m.size, m.size, device=device)
    actions = torch.zeros(cfg.data.batch_size, m.grid[0], cfg.objective.action_dim, device=device)
    print(f"{name}: preset {args.preset}, {m.tokens} tokens/clip, width {m.embed_dim}, depth {m.depth}, "
          f"batch {cfg.data.batch_size}, bf16 peak {peak / 1e12:.0f} TFLOP/s")

    # FLOPs of one step, counted on the uncompiled model (the compiled one runs the same matmuls)
    torch.manual_seed(0)
    eager_cfg = replace(cfg, run=replace(cfg.run, compile=False))
    model, teacher, optimizer = build(eager_cfg, device, masker.num_sets)
    parts = prepare(model, teacher, optimizer, eager_cfg, device)
    counter = FlopCounterMode(display=False)
    with counter:
        jepa_step(parts, clip, actions, masker(cfg.data.batch_size, 0), 0)
    flops = counter.get_total_flops()
    counted_ops = {str(op) for op in counter.get_flop_counts().get("Global", {})}
    if not any("scaled_dot_product" in op for op in counted_ops):
        print("note: flop_counter did not count the attention kernels on this backend; MFU below understates")
    del model, teacher, optimizer, parts
    torch.cuda.empty_cache()

    torch.manual_seed(0)
    model, teacher, optimizer = build(cfg, device, masker.num_sets)
    parts = prepare(model, teacher, optimizer, cfg, device)
    started = time.perf_counter()
    for step in range(args.warmup):
        jepa_step(parts, clip, actions, masker(cfg.data.batch_size, step), step)
    torch.cuda.synchronize()
    print(f"warm-up ({args.warmup} steps, compile included): {time.perf_counter() - started:.1f}s")
    torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for step in range(args.warmup, args.warmup + args.steps):
        jepa_step(parts, clip, actions, masker(cfg.data.batch_size, step), step)
    torch.cuda.synchronize()
    step_time = (time.perf_counter() - started) / args.steps
    clips = cfg.data.batch_size / step_time
    mfu = flops / step_time / peak
    print(f"step time {step_time * 1000:.1f} ms, {clips:.1f} clips/s, {clips * m.tokens:.0f} tokens/s")
    print(f"FLOPs per step {flops / 1e12:.2f} TFLOP (counted), achieved {flops / step_time / 1e12:.1f} TFLOP/s, "
          f"MFU {mfu:.1%} (goal >= 30%)")
    print(f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    _loader_against_step(args, cfg, clips)


def _loader_against_step(args: argparse.Namespace, cfg, step_clips_per_s: float) -> None:
    """The loader at the preset's clip shape (16 x 224 for ViT-L) from real shards, with `--workers` processes,
    against what the step consumes: it must not starve the GPU (goal >= 1.5x, per GPU)."""
    from alliance.store import LocalStore
    from training.data import ClipLoader, reader_factory
    from training.synthetic_shards import write_synthetic_version

    m = cfg.model
    loader_cfg = with_overrides(cfg, {"data.workers": args.workers, "data.shuffle_buffer": 16})
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "store")
        version = write_synthetic_version(store, "bench", args.clips, frames=m.frames, size=m.size,
                                          samples_per_shard=16)
        loader = ClipLoader(reader_factory(loader_cfg, store, "bench", version), loader_cfg)
        batches = iter(loader)
        for _ in range(args.workers):
            next(batches)
        started, count = time.perf_counter(), 0
        for count, _ in enumerate(batches, start=1):
            if count >= args.loader_batches:
                break
        rate = count * loader_cfg.data.batch_size / (time.perf_counter() - started)
        loader.close()
    print(f"loader at {m.frames}x{m.size}x{m.size}, {args.workers} worker processes (tar + PyAV decode + collate): "
          f"{rate:.1f} clips/s against the step's {step_clips_per_s:.1f} clips/s: {rate / step_clips_per_s:.2f}x "
          f"(goal >= 1.5x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--preset", default=None, help="tiny_cpu (CPU default) or vit_l (CUDA default)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps")
    parser.add_argument("--warmup", type=int, default=8, help="CUDA: untimed steps (compile)")
    parser.add_argument("--clips", type=int, default=192, help="CPU: clips in the benchmark dataset")
    parser.add_argument("--loader-batches", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--checkpoint-activations", action="store_true", help="CUDA: activation checkpointing")
    args = parser.parse_args()
    if args.device == "cuda":
        args.preset, args.batch, args.steps = args.preset or "vit_l", args.batch or 24, args.steps or 20
        args.workers = max(args.workers, 8)
        cuda(args)
    else:
        args.preset, args.batch, args.steps = args.preset or "tiny_cpu", args.batch or 16, args.steps or 20
        cpu(args)


if __name__ == "__main__":
    main()
