"""The JEPA training run, top to bottom: data, masks, steps (training/step.py), log, checkpoint, resume, DDP."""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from alliance.errors import AllianceError, ConfigError
from alliance.store import ObjectStore, validate_key
from training.checkpoint import (CheckpointError, RunRecord, checkpoint_key, encoder_weights, load_checkpoint, now_iso,
                                 read_run, resolve_checkpoint, run_prefix, save_checkpoint, write_run)
from training.config import TrainConfig
from training.data import ClipLoader, ReaderFactory, reader_factory
from training.masks import MaskGenerator
from training.objectives import collapse_stats
from training.step import build, jepa_step, prepare


class TrainingError(AllianceError):
    """A run that cannot start or continue; the message says which setting or object to fix."""


@dataclass(frozen=True)
class TrainSummary:
    """What one call of `train` did: the run, how far it got, its last loss and checkpoint, collapse statistics."""

    run: str
    dataset: str
    version: int
    steps: int
    final_loss: float
    checkpoint_key: str
    collapse: dict[str, float]
    clips_per_s: float
    resumed_from: int
    finished: bool
    losses: tuple[float, ...]  # one per step run in this call


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def _distributed(device: torch.device) -> Distributed:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _device(cfg: TrainConfig) -> torch.device:
    want = cfg.run.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device=cuda but torch sees no CUDA device; use run.device=auto or cpu")
    if want == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(want)


def _store(settings_or_store: Any) -> ObjectStore:
    if isinstance(settings_or_store, ObjectStore):
        return settings_or_store
    from alliance.store import open_store

    return open_store(settings=settings_or_store)


def run_id(dataset: str, version: int, cfg: TrainConfig) -> str:
    """Content-derived: the same dataset version and config is the same run, so a restart resumes it."""
    name = cfg.run.name or f"{dataset}-v{version}-{cfg.objective.kind}-{cfg.digest()}"
    validate_key(f"checkpoints/{name}")
    return name


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather(state: dict, dist_info: Distributed) -> list[dict]:
    """Every rank's loader state (each rank reads its own shards), in rank order."""
    if dist_info.world_size == 1:
        return [state]
    import torch.distributed as dist

    states: list[Any] = [None] * dist_info.world_size
    dist.all_gather_object(states, state)
    return states


def _start_encoder_from(store: ObjectStore, ref: str, encoders: list[torch.nn.Module], device: torch.device) -> str:
    """Load another run's target encoder (a checkpoint key or a run id: its latest) into `encoders`; the key used."""
    try:
        key = resolve_checkpoint(store, ref)
        state, _ = encoder_weights(load_checkpoint(store, key, map_location=device))
    except CheckpointError as e:
        raise TrainingError(f"objective.encoder_from: {e}") from e
    for encoder in encoders:
        try:
            encoder.load_state_dict(state)
        except RuntimeError as e:
            lines = str(e).splitlines()  # torch: a headline, then one line per mismatched tensor
            reason = lines[1].strip() if len(lines) > 1 else str(e)
            raise TrainingError(f"objective.encoder_from {key}: its encoder does not fit this run's model settings "
                                f"({reason}); use the model.* settings of the run that wrote it") from e
    return key


def train(settings_or_store: Any, dataset: str, version: int, config: TrainConfig | None = None, *,
          stop_after: int | None = None, metrics_path: str | Path | None = None,
          echo: Callable[[str], None] = print, factory: ReaderFactory | None = None) -> TrainSummary:
    """Train (or resume) the run for `dataset@version` with `config`; returns what this call did.

    `stop_after` ends the call after that global step with a checkpoint, as if killed there: calling again resumes
    exactly. `factory` replaces the reader (tests and benchmarks). A finished run is not trained twice.
    """
    cfg = (config or TrainConfig()).validate()
    store = _store(settings_or_store)
    device = _device(cfg)
    dist_info = _distributed(device)
    lead = dist_info.rank == 0
    run = run_id(dataset, version, cfg)
    total = cfg.run.steps

    torch.manual_seed(cfg.run.seed)
    np.random.seed(cfg.run.seed)
    random.seed(cfg.run.seed)
    masker = MaskGenerator(cfg.mask, cfg.model, seed=cfg.run.seed * 1000 + dist_info.rank)
    model, teacher, optimizer = build(cfg, device, masker.num_sets)
    loader = ClipLoader(factory or reader_factory(cfg, store, dataset, version, dist_info.rank,
                                                  dist_info.world_size), cfg)

    record = read_run(store, run)  # every rank reads it; only rank 0 writes
    start, metrics = 0, []
    if record is not None and record.checkpoints:
        payload = load_checkpoint(store, record.checkpoints[-1], map_location=device)
        if payload.get("dataset") != dataset or int(payload.get("version", -1)) != version:
            raise TrainingError(f"run {run} consumed {payload.get('dataset')}@v{payload.get('version')}, not "
                                f"{dataset}@v{version}; set run.name to start another run")
        model.encoder.load_state_dict(payload["encoder"])
        model.predictor.load_state_dict(payload["predictor"])
        if model.projector is not None:
            model.projector.load_state_dict(payload["projector"])
        if teacher is not None:
            teacher.load_state_dict(payload["target_encoder"])
        optimizer.load_state_dict(payload["optimizer"])
        loader.load_state_dict(payload["loader"][dist_info.rank])
        _set_rng_state(payload["rng"])
        start, metrics = int(payload["step"]), list(payload.get("metrics", []))
        if record.finished_at and start >= total:
            echo(f"run {run} already finished at step {start}: {record.checkpoints[-1]}")
            return TrainSummary(run, dataset, version, start, float(payload.get("loss", float("nan"))),
                                record.checkpoints[-1], dict(payload.get("collapse", {})), 0.0, start, True, ())
        echo(f"resuming run {run} at step {start} from {record.checkpoints[-1]}")
    if start == 0 and cfg.objective.encoder_from:
        key = _start_encoder_from(store, cfg.objective.encoder_from,
                                  [model.encoder] + ([teacher] if teacher is not None else []), device)
        echo(f"encoder from {key}" + (", frozen" if cfg.objective.freeze_encoder else ""))
    if record is None:
        record = RunRecord(run=run, dataset=dataset, version=version, config=cfg.to_dict(), started_at=now_iso())
        if lead:
            write_run(store, record)
            store.put_bytes(f"{run_prefix(run)}/config.json", json.dumps(cfg.to_dict(), indent=2).encode())

    use_cuda = device.type == "cuda"
    parts_of_step = prepare(model, teacher, optimizer, cfg, device, dist_info.world_size)

    metrics_file = Path(metrics_path) if metrics_path and lead else None
    if metrics_file:
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
    tokens_per_clip = cfg.model.tokens
    end = total if stop_after is None else min(total, stop_after)
    losses: list[float] = []
    last = {"loss": float("nan"), "collapse": {}, "key": record.checkpoints[-1] if record.checkpoints else ""}
    window_clips, window_wait, window_start = 0, 0.0, time.perf_counter()
    clips_per_s = 0.0
    batches = iter(loader)
    try:
        for step in range(start, end):
            # batch
            waited = time.perf_counter()
            loaded = next(batches)
            window_wait += time.perf_counter() - waited
            clip = loaded.batch.clip(device)
            actions = loaded.batch.actions.to(device)
            # mask, encode, predict, loss, step, EMA
            masks = masker(clip.shape[0], step)
            out = jepa_step(parts_of_step, clip, actions, masks, step)
            loss_value, parts = out.loss, out.parts
            lr, wd, m = out.lr, out.wd, out.momentum
            if not math.isfinite(loss_value):
                raise TrainingError(f"run {run}: loss is {loss_value} at step {step}; lower optim.lr_peak or raise "
                                    f"optim.warmup_steps, then resume from {last['key'] or 'the start'}")
            losses.append(loss_value)
            window_clips += clip.shape[0] * dist_info.world_size
            done = step + 1
            # log
            if lead and (done % cfg.run.log_every == 0 or done == end):
                elapsed = time.perf_counter() - window_start
                clips_per_s = window_clips / max(elapsed, 1e-9)
                with torch.no_grad():  # the online encoder, before any normalisation
                    stats = collapse_stats(model.encoder(clip))
                row = {"step": done, "loss": loss_value, **parts, "lr": lr, "wd": wd, "ema": m,
                       "grad_norm": out.grad_norm, "clips_per_s": clips_per_s,
                       "tokens_per_s": clips_per_s * tokens_per_clip,
                       "data_wait": window_wait / max(elapsed, 1e-9), "skipped": sum(loader.skipped.values()),
                       **{f"collapse_{k}": v for k, v in stats.items()}}
                if use_cuda:
                    row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                metrics.append(row)
                last["collapse"] = stats
                echo(f"step {done}/{total} loss {loss_value:.4f} lr {lr:.2e} ema {m:.5f} "
                     f"clips/s {clips_per_s:.1f} data_wait {row['data_wait']:.0%} std {stats['std_mean']:.3f} "
                     f"(min {stats['std_min']:.3f}) rankme {stats['rankme']:.1f}/{int(stats['dim'])}")
                if metrics_file:
                    with metrics_file.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                window_clips, window_wait, window_start = 0, 0.0, time.perf_counter()
            last["loss"] = loss_value
            # checkpoint
            if done % cfg.run.checkpoint_every == 0 or done == end:
                loader_states = _gather(loader.state_dict(), dist_info)
            if lead and (done % cfg.run.checkpoint_every == 0 or done == end):
                payload = {
                    "step": done, "run": run, "dataset": dataset, "version": version, "config": cfg.to_dict(),
                    "encoder": model.encoder.state_dict(), "predictor": model.predictor.state_dict(),
                    "projector": model.projector.state_dict() if model.projector is not None else None,
                    "target_encoder": teacher.state_dict() if teacher is not None else None,
                    "optimizer": optimizer.state_dict(), "loader": loader_states, "rng": _rng_state(),
                    "loss": loss_value, "collapse": last["collapse"], "metrics": metrics,
                }
                key = checkpoint_key(run, done)
                save_checkpoint(store, key, payload)
                kept = [k for k in record.checkpoints if k != key] + [key]
                for old in kept[:-cfg.run.keep_checkpoints]:
                    store.delete(old)
                record = replace(record, checkpoints=kept[-cfg.run.keep_checkpoints:], steps=done,
                                 finished_at=now_iso() if done >= total else None)
                write_run(store, record)
                store.put_bytes(f"{run_prefix(run)}/metrics.jsonl",
                                "".join(json.dumps(r) + "\n" for r in metrics).encode())
                last["key"] = key
    finally:
        loader.close()
    finished = end >= total
    if lead:
        echo(f"run {run}: {'finished' if finished else 'stopped'} at step {end}, loss {last['loss']:.4f}, "
             f"checkpoint {last['key']}")
    return TrainSummary(run, dataset, version, end, float(last["loss"]), str(last["key"]), dict(last["collapse"]),
                        clips_per_s, start, finished, tuple(losses))
