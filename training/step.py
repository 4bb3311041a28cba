"""One JEPA optimisation step: the schedules, the objective as one module, and build / prepare / step."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training.config import TrainConfig
from training.masks import MaskPair
from training.model import ActionPredictor, Predictor, Projector, VideoEncoder, gather_tokens
from training.objectives import (ema_update, gravity_state, l1_loss, layer_normed, momentum, shift_actions,
                                 sigreg_views)


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
        self.encoder = VideoEncoder(cfg.model).requires_grad_(not cfg.objective.freeze_encoder)
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
            targets = layer_normed(full.detach() if obj.sigreg_stop_grad else full)
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
        # a frozen encoder is its own target: its features are the targets already computed
        encoded = targets if self.cfg.objective.freeze_encoder else layer_normed(self.encoder(clip, causal=True))
        features = encoded.view(b, t, h * w, dim)
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
        if not p.requires_grad:  # a frozen encoder
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "decay": True}, {"params": no_decay, "decay": False, "weight_decay": 0.0}]



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
    frozen = cfg.objective.freeze_encoder  # the target never moves: momentum 1 in the log, no EMA update
    m = 1.0 if frozen else momentum(step, cfg.run.steps, cfg.objective.ema_start, cfg.objective.ema_end)
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
    # EMA (a frozen encoder is its own fixed target)
    if teacher is not None and not frozen:
        ema_update(teacher, parts.model.encoder, m)
    return StepOutput(float(loss.detach()), loss_parts, raw_targets, grad_norm, lr, wd, m)
