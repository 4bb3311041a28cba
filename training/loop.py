"""The JEPA training loop, top to bottom: batch, mask, encode, predict, loss, step, EMA, log, checkpoint."""

from __future__ import annotations

import copy
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
from torch import nn

from alliance.errors import AllianceError, ConfigError
from alliance.store import ObjectStore, validate_key
from training.checkpoint import (RunRecord, checkpoint_key, load_checkpoint, now_iso, read_run, run_prefix,
                                 save_checkpoint, write_run)
from training.config import TrainConfig
from training.data import ClipLoader, ReaderFactory, reader_factory
from training.masks import MaskGenerator, MaskPair
from training.model import ActionPredictor, Predictor, Projector, VideoEncoder, gather_tokens
from training.objectives import (collapse_stats, ema_update, gravity_state, l1_loss, layer_normed, momentum,
                                 shift_actions, sigreg_views)


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


# --------------------------------------------------------------------------- schedules


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup lr_start -> lr_peak, then cosine to lr_final (V-JEPA's WarmupCosineSchedule)."""
    o, total = cfg.optim, cfg.run.steps
    if step < o.warmup_steps:
        return o.lr_start + (o.lr_peak - o.lr_start) * step / max(1, o.warmup_steps)
    progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
    return o.lr_final + (o.lr_peak - o.lr_final) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def wd_at(step: int, cfg: TrainConfig) -> float:
    """Cosine weight decay wd_start -> wd_end over the run (V-JEPA's CosineWDSchedule)."""
    o = cfg.optim
    progress = min(1.0, step / max(1, cfg.run.steps))
    return o.wd_end + (o.wd_start - o.wd_end) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- the objective as one module


class JEPA(nn.Module):
    """Context encoder + predictor; forward returns the loss, so DDP sees one forward per step."""

    def __init__(self, cfg: TrainConfig, mask_sets: int):
        super().__init__()
        self.cfg = cfg
        self.encoder = VideoEncoder(cfg.model)
        self.predictor: nn.Module = (ActionPredictor(cfg.model, cfg.objective.action_dim)
                                     if cfg.objective.kind == "action" else Predictor(cfg.model, mask_sets))
        widths = tuple(cfg.objective.sigreg_projector) if cfg.objective.kind == "sigreg" else ()
        self.projector: nn.Module | None = Projector(cfg.model.embed_dim, widths) if widths else None

    def forward(self, clip: torch.Tensor, masks: list[MaskPair], actions: torch.Tensor,
                targets: torch.Tensor | None, generator: torch.Generator | None) -> tuple[torch.Tensor, dict]:
        obj = self.cfg.objective
        if obj.kind == "action":
            teacher_forcing, rollout = self.action_losses(clip, actions, targets)
            parts = {"teacher_forcing": float(teacher_forcing.detach()), "rollout": float(rollout.detach())}
            return teacher_forcing + rollout, parts
        full = None
        if targets is None:  # SIGReg: no teacher, the online encoder's own full view (layer-normed) is the target
            full = self.encoder(clip)
            targets = layer_normed(full)
        parts: dict[str, float] = {}
        prediction_losses, views = [], []
        for i, pair in enumerate(masks):
            context = self.encoder(clip, pair.context)
            predicted = self.predictor(context, pair.context, pair.target, i)
            loss_i = l1_loss(predicted, gather_tokens(targets, pair.target))
            parts[f"loss_mask{i}"] = float(loss_i.detach())
            prediction_losses.append(loss_i)
            views.append(context.mean(dim=1))
        loss = torch.stack(prediction_losses).mean()
        if full is not None:
            # LeJEPA: per-sample embeddings (each clip's tokens pooled), N = clips per view; the views are the full
            # clip and each mask set's context
            pooled = [full.mean(dim=1), *views]
            if self.projector is not None:
                pooled = [self.projector(view) for view in pooled]
            reg = sigreg_views(pooled, obj.sigreg_slices, generator, obj.sigreg_points,
                               obj.sigreg_tmax)
            parts["sigreg"] = float(reg.detach())
            parts["prediction"] = float(loss.detach())
            loss = (1.0 - obj.sigreg_lambda) * loss + obj.sigreg_lambda * reg
        return loss, parts

    def action_losses(self, clip: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor,
                      shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """V-JEPA 2-AC: teacher-forcing L1 (every step t predicts step t + 1 from the true features up to t) and
        rollout L1 (from step 0, `rollout_steps` predictions fed back in; the last one scored), both against the
        teacher's layer-normed, block-causal features. The action of the transition t -> t + 1 is the IMU over
        tubelet t + 1; the state is the gravity direction at t. `shift` delays the IMU (the negative control)."""
        b = clip.shape[0]
        t, h, w = self.cfg.model.grid
        dim = self.cfg.model.embed_dim
        features = layer_normed(self.encoder(clip, causal=True)).view(b, t, h * w, dim)
        goal = targets.view(b, t, h * w, dim)
        imu = shift_actions(actions, shift)
        moves, states = imu[:, 1:], gravity_state(imu[:, :-1])
        if self.training and shift == 0:
            self.predictor.action_norm.observe(moves)  # before use: the first step is normalised by its own batch
        teacher_forcing = l1_loss(self.predictor(features[:, :-1], moves, states), goal[:, 1:])
        steps = max(1, min(self.cfg.objective.rollout_steps, t - 1))
        rolled = features[:, :1]
        for k in range(steps):
            nxt = self.predictor(rolled, moves[:, :k + 1], states[:, :k + 1])[:, -1:]
            rolled = torch.cat([rolled, nxt], dim=1)
        rollout = l1_loss(rolled[:, -1], goal[:, steps])
        return teacher_forcing, rollout


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Weight decay on matrices only; biases and 1-D parameters (norms) get none, as in V-JEPA."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "decay": True}, {"params": no_decay, "decay": False, "weight_decay": 0.0}]


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


@dataclass(frozen=True)
class StepParts:
    """What one optimisation step needs: the model (maybe DDP-wrapped), the EMA teacher, optimizer, precision."""

    model: JEPA
    step_model: nn.Module
    teacher: nn.Module | None
    optimizer: torch.optim.Optimizer
    cfg: TrainConfig
    device: torch.device
    autocast: Any


@dataclass(frozen=True)
class StepOutput:
    loss: float
    parts: dict[str, float]
    raw_targets: torch.Tensor | None
    grad_norm: float
    lr: float
    wd: float
    momentum: float


def build(cfg: TrainConfig, device: torch.device, mask_sets: int) -> tuple[JEPA, nn.Module | None,
                                                                            torch.optim.Optimizer]:
    """The context encoder + predictor, the EMA target encoder (none for SIGReg), and AdamW."""
    model = JEPA(cfg, mask_sets).to(device)
    teacher = None if cfg.objective.kind == "sigreg" else copy.deepcopy(model.encoder).requires_grad_(False)
    optimizer = torch.optim.AdamW(param_groups(model), lr=cfg.optim.lr_start, betas=cfg.optim.betas)
    return model, teacher, optimizer


def prepare(model: JEPA, teacher: nn.Module | None, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
            device: torch.device, world_size: int = 1, cpu_bf16: bool = False) -> StepParts:
    """On CUDA: compile each transformer block (shapes vary with the masks, so dynamic) and use bf16 autocast;
    with several processes wrap in DDP. On CPU: plain fp32, or bf16 autocast with `cpu_bf16` (the tests' way to run
    the CUDA step's mixed precision without a GPU)."""
    use_cuda = device.type == "cuda"
    if use_cuda and cfg.run.compile:
        from torch import _dynamo

        for limit in ("recompile_limit", "cache_size_limit"):  # many identical blocks, a few mask shapes each
            if hasattr(_dynamo.config, limit):
                setattr(_dynamo.config, limit, max(64, getattr(_dynamo.config, limit)))
        teacher_blocks = list(teacher.blocks) if teacher is not None else []
        for block in [*model.encoder.blocks, *model.predictor.blocks, *teacher_blocks]:
            block.compile(dynamic=True)
    step_model: nn.Module = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.run.bf16 and (use_cuda or cpu_bf16))
    return StepParts(model, step_model, teacher, optimizer, cfg, device, autocast)


def jepa_step(parts: StepParts, clip: torch.Tensor, actions: torch.Tensor, masks: list[MaskPair],
              step: int) -> StepOutput:
    """One step: schedules, encode targets (EMA, no grad), encode context, predict, loss, backward, clip, AdamW, EMA."""
    cfg, device, optimizer, teacher = parts.cfg, parts.device, parts.optimizer, parts.teacher
    # schedules
    lr, wd = lr_at(step, cfg), wd_at(step, cfg)
    m = momentum(step, cfg.run.steps, cfg.objective.ema_start, cfg.objective.ema_end)
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group["decay"]:
            group["weight_decay"] = wd
    masks = [MaskPair(p.context.to(device, non_blocking=True), p.target.to(device, non_blocking=True))
             for p in masks]
    generator = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + step)  # SIGReg slices: same on all ranks
    # encode targets, encode context, predict, loss
    raw_targets = None
    with parts.autocast:
        targets = None
        if teacher is not None:
            with torch.no_grad():
                raw_targets = teacher(clip, causal=cfg.objective.kind == "action")
                targets = layer_normed(raw_targets.float())
        loss, loss_parts = parts.step_model(clip, masks, actions, targets, generator)
    # step
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(parts.model.parameters(), cfg.optim.grad_clip))
    optimizer.step()
    # EMA
    if teacher is not None:
        ema_update(teacher, parts.model.encoder, m)
    return StepOutput(float(loss.detach()), loss_parts, raw_targets, grad_norm, lr, wd, m)


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
    elif record is None:
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
            loss_value, parts, raw_targets = out.loss, out.parts, out.raw_targets
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
                with torch.no_grad():  # the online encoder (the one exported), before any normalisation
                    stats = collapse_stats(model.encoder(clip))
                row = {"step": done, "loss": loss_value, **parts, "lr": lr, "wd": wd, "ema": m,
                       "grad_norm": out.grad_norm, "clips_per_s": clips_per_s, "tokens_per_s": clips_per_s * tokens_per_clip,
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
