"""The video ViT of V-JEPA: tubelet patch embedding, fixed 3D sin-cos positions, encoder and narrow predictor."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from training.config import ModelConfig


PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[len(positions), dim] sin-cos embedding of integer positions (dim even)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_3d(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """[T*H*W, dim] fixed positions, token order (t, h, w); about a quarter of the channels for time as in V-JEPA."""
    t, h, w = grid
    d_t = (dim // 4) // 2 * 2
    d_h = (dim - d_t) // 2 // 2 * 2
    d_w = (dim - d_t - d_h) // 2 * 2
    tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    parts = [_sincos_1d(d_t, tt.ravel()), _sincos_1d(d_h, hh.ravel()), _sincos_1d(d_w, ww.ravel())]
    table = np.concatenate(parts, axis=1)
    if table.shape[1] < dim:  # an odd remainder stays zero
        table = np.pad(table, ((0, 0), (0, dim - table.shape[1])))
    return torch.tensor(table, dtype=torch.float32)  # a factory call, so a meta-device build stays on meta


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, D] at index [B, K] -> [B, K, D]."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class Attention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention (flash kernels on CUDA)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, activation_checkpointing: bool, **kwargs) -> torch.Tensor:
    """The blocks in order; with activation checkpointing (training only) each block's activations are recomputed
    in backward instead of kept: memory for depth x tokens x width activations, at the cost of one more forward."""
    for block in blocks:
        if activation_checkpointing and torch.is_grad_enabled() and x.requires_grad:
            x = checkpoint(block, x, use_reentrant=False, **kwargs)
        else:
            x = block(x, **kwargs)
    return x


def block_causal_mask(steps: int, per_step: int, device: torch.device | None = None) -> torch.Tensor:
    """Bool [L, L], True where attention is allowed: a token of time step t sees every token of steps <= t."""
    step = torch.arange(steps, device=device).repeat_interleave(per_step)
    return step.unsqueeze(1) >= step.unsqueeze(0)


def _init_weights(module: nn.Module, gain: float = 0.0) -> None:
    """V-JEPA's init: Linear weights truncated-normal, std 0.02 (`gain` 0) or gain / sqrt(fan_in); LayerNorm 1, 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=gain / math.sqrt(module.in_features) if gain > 0 else 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _rescale_blocks(blocks: nn.ModuleList) -> None:
    """V-JEPA's depth-dependent rescale of each block's output projections, for stable deep residual streams."""
    for layer, block in enumerate(blocks, start=1):
        block.attn.proj.weight.data.div_(math.sqrt(2.0 * layer))
        block.mlp[2].weight.data.div_(math.sqrt(2.0 * layer))


class VideoEncoder(nn.Module):
    """Clip [B, 3, T, S, S] -> tokens [B, N, D]; with `keep` [B, K] only those tokens go through the blocks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv3d(3, cfg.embed_dim, kernel_size=(cfg.tubelet, cfg.patch, cfg.patch),
                                     stride=(cfg.tubelet, cfg.patch, cfg.patch))
        self.register_buffer("pos_embed", sincos_3d(cfg.embed_dim, cfg.grid).unsqueeze(0), persistent=False)
        # ImageNet statistics as in V-JEPA: without them the patch signal is small next to the fixed positions and
        # about 90% of a random target encoder's output depends on the position alone (a trivial objective)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1, 1), persistent=False)
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.apply(partial(_init_weights, gain=cfg.init_gain))
        _rescale_blocks(self.blocks)

    def forward(self, clip: torch.Tensor, keep: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """`clip` is float in [0, 1]; the encoder normalizes it itself, so the exported form takes [0, 1] too.

        `causal`: block-causal attention over time (tokens of tubelet t see tubelets <= t), so the features of a time
        step depend only on the frames up to it: what the action-conditioned predictor needs (V-JEPA 2-AC encodes
        each frame on its own for the same reason)."""
        x = self.patch_embed((clip - self.pixel_mean) / self.pixel_std).flatten(2).transpose(1, 2) + self.pos_embed
        if keep is not None:
            x = gather_tokens(x, keep)
        mask = None
        if causal:
            if keep is not None:
                raise ValueError("causal encoding takes the whole clip (keep=None)")
            t, h, w = self.cfg.grid
            mask = block_causal_mask(t, h * w, x.device)
        x = run_blocks(self.blocks, x, self.cfg.checkpoint_activations, attn_mask=mask)
        return self.norm(x)


class Predictor(nn.Module):
    """Context tokens plus one learned mask token per target position (with its position) -> target features."""

    def __init__(self, cfg: ModelConfig, mask_sets: int):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.embed_dim, cfg.pred_dim)
        self.mask_tokens = nn.Parameter(torch.zeros(mask_sets, 1, 1, cfg.pred_dim))
        self.register_buffer("pos_embed", sincos_3d(cfg.pred_dim, cfg.grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(cfg.pred_dim, cfg.pred_heads, cfg.mlp_ratio) for _ in range(cfg.pred_depth))
        self.norm = nn.LayerNorm(cfg.pred_dim)
        self.out = nn.Linear(cfg.pred_dim, cfg.embed_dim)
        self.apply(partial(_init_weights, gain=cfg.init_gain))
        nn.init.trunc_normal_(self.mask_tokens, std=0.02)
        _rescale_blocks(self.blocks)

    def forward(self, context: torch.Tensor, context_index: torch.Tensor, target_index: torch.Tensor,
                mask_set: int = 0) -> torch.Tensor:
        b, n_target = target_index.shape
        pos = self.pos_embed.expand(b, -1, -1)
        ctx = self.embed(context) + gather_tokens(pos, context_index)
        tgt = self.mask_tokens[mask_set].expand(b, n_target, -1) + gather_tokens(pos, target_index)
        x = torch.cat([ctx, tgt], dim=1)
        x = run_blocks(self.blocks, x, self.cfg.checkpoint_activations)
        return self.out(self.norm(x[:, -n_target:]))


class RunningNorm(nn.Module):
    """Per-channel standardisation by the mean and std of every input seen in training (`observe`), kept in buffers
    so they travel in the checkpoint with the weights and a resumed run normalises exactly as before.

    Why: the IMU's channels live on unrelated scales (gravity 9.81 m/s^2 on one accelerometer axis, rotation rates of
    0.01 rad/s, the synthetic clips' 2-3 px/frame), and a Linear at init reads mostly the largest. Until something is
    observed it passes inputs through."""

    def __init__(self, channels: int, min_std: float = 1e-3):
        super().__init__()
        self.min_std = min_std
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("total", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("total_sq", torch.zeros(channels, dtype=torch.float64))

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).double()
        self.count += flat.shape[0]
        self.total += flat.sum(0)
        self.total_sq += flat.pow(2).sum(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(self.count) == 0:
            return x
        mean = self.total / self.count
        std = (self.total_sq / self.count - mean.pow(2)).clamp_min(0).sqrt().clamp_min(self.min_std)
        return (x - mean.to(x.dtype)) / std.to(x.dtype)


class ActionPredictor(nn.Module):
    """V-JEPA 2-AC's predictor: per time step [action token, state token, that step's patch tokens], block-causal
    attention over time, and at each step's patch slots the prediction of the next step's features.

    Action and state each go through their own Linear to the width (the action standardised per channel first, by
    running statistics of the training actions: `RunningNorm`); every token carries its (t, h, w) position
    (action and state tokens the time part only). Input and output live in the layer-normed feature space, so a
    prediction can be fed back in for the rollout.
    """

    def __init__(self, cfg: ModelConfig, action_dim: int, state_dim: int = 3):
        super().__init__()
        self.cfg = cfg
        t, h, w = cfg.grid
        self.embed = nn.Linear(cfg.embed_dim, cfg.pred_dim)
        self.action_norm = RunningNorm(action_dim)
        self.action = nn.Linear(action_dim, cfg.pred_dim)
        self.state = nn.Linear(state_dim, cfg.pred_dim)
        self.register_buffer("pos_embed", sincos_3d(cfg.pred_dim, cfg.grid).view(1, t, h * w, cfg.pred_dim),
                             persistent=False)
        time = torch.tensor(_sincos_1d(cfg.pred_dim, np.arange(t)), dtype=torch.float32)
        self.register_buffer("time_embed", time.view(1, t, 1, cfg.pred_dim), persistent=False)
        self.blocks = nn.ModuleList(Block(cfg.pred_dim, cfg.pred_heads, cfg.mlp_ratio) for _ in range(cfg.pred_depth))
        self.norm = nn.LayerNorm(cfg.pred_dim)
        self.out = nn.Linear(cfg.pred_dim, cfg.embed_dim)
        self.apply(partial(_init_weights, gain=cfg.init_gain))
        _rescale_blocks(self.blocks)

    def forward(self, features: torch.Tensor, actions: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """features [B, S, HW, D] of steps 0..S-1, actions [B, S, A], states [B, S, 3] -> [B, S, HW, D]: at step t,
        the predicted features of step t + 1."""
        b, steps, per_step, _ = features.shape
        patches = self.embed(features) + self.pos_embed[:, :steps]
        action = self.action(self.action_norm(actions)).unsqueeze(2) + self.time_embed[:, :steps]
        state = self.state(states).unsqueeze(2) + self.time_embed[:, :steps]
        x = torch.cat([action, state, patches], dim=2).reshape(b, steps * (per_step + 2), -1)
        mask = block_causal_mask(steps, per_step + 2, x.device)
        x = run_blocks(self.blocks, x, self.cfg.checkpoint_activations, attn_mask=mask)
        x = x.view(b, steps, per_step + 2, -1)[:, :, 2:]
        return self.out(self.norm(x))


class Projector(nn.Module):
    """LeJEPA's projector: pooled clip embeddings [N, D] -> [N, widths[-1]] through Linear, BatchNorm, GELU layers
    (the last Linear alone); SIGReg is taken on its output, so the encoder's own features need not be Gaussian."""

    def __init__(self, dim: int, widths: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            layers.append(nn.Linear(dim, width))
            if i < len(widths) - 1:
                layers += [nn.BatchNorm1d(width), nn.GELU()]
            dim = width
        self.layers = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.layers(pooled)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
