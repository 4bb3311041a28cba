"""The video ViT of V-JEPA: tubelet patch embedding, fixed 3D sin-cos positions, encoder and narrow predictor."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
    return torch.from_numpy(table.astype(np.float32))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
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
        self.apply(_init_weights)
        _rescale_blocks(self.blocks)

    def forward(self, clip: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """`clip` is float in [0, 1]; the encoder normalizes it itself, so the exported form takes [0, 1] too."""
        x = self.patch_embed((clip - self.pixel_mean) / self.pixel_std).flatten(2).transpose(1, 2) + self.pos_embed
        if keep is not None:
            x = gather_tokens(x, keep)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class Predictor(nn.Module):
    """Context tokens plus one learned mask token per target position (with its position) -> target features.

    With `action_dim` > 0 it is action-conditioned (V-JEPA 2-AC in spirit): each tubelet's action/state vector
    (the IMU over that tubelet) is projected to the width and added to every token of that time step.
    """

    def __init__(self, cfg: ModelConfig, mask_sets: int, action_dim: int = 0):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.embed_dim, cfg.pred_dim)
        self.mask_tokens = nn.Parameter(torch.zeros(mask_sets, 1, 1, cfg.pred_dim))
        self.register_buffer("pos_embed", sincos_3d(cfg.pred_dim, cfg.grid).unsqueeze(0), persistent=False)
        self.action = nn.Linear(action_dim, cfg.pred_dim) if action_dim else None
        self.blocks = nn.ModuleList(Block(cfg.pred_dim, cfg.pred_heads, cfg.mlp_ratio) for _ in range(cfg.pred_depth))
        self.norm = nn.LayerNorm(cfg.pred_dim)
        self.out = nn.Linear(cfg.pred_dim, cfg.embed_dim)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.mask_tokens, std=0.02)
        _rescale_blocks(self.blocks)

    def forward(self, context: torch.Tensor, context_index: torch.Tensor, target_index: torch.Tensor,
                mask_set: int = 0, actions: torch.Tensor | None = None) -> torch.Tensor:
        b, n_target = target_index.shape
        pos = self.pos_embed.expand(b, -1, -1)
        ctx = self.embed(context) + gather_tokens(pos, context_index)
        tgt = self.mask_tokens[mask_set].expand(b, n_target, -1) + gather_tokens(pos, target_index)
        if self.action is not None and actions is not None:
            per_time = self.action(actions)  # [B, T', P]
            per_token = self.cfg.grid[1] * self.cfg.grid[2]
            ctx = ctx + gather_tokens(per_time, torch.div(context_index, per_token, rounding_mode="floor"))
            tgt = tgt + gather_tokens(per_time, torch.div(target_index, per_token, rounding_mode="floor"))
        x = torch.cat([ctx, tgt], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x[:, -n_target:]))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
