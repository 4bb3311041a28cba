"""V-JEPA's multiblock 3D masks (and a `future` mask for the action-conditioned predictor), deterministic by seed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from training.config import ConfigError, MaskConfig, MaskSetConfig, ModelConfig

MAX_REDRAWS = 1000  # V-JEPA redraws a target that leaves no context; past this many the set is the problem


@dataclass(frozen=True)
class MaskPair:
    """One mask set for a batch: context token indices [B, Nc] and target token indices [B, Nt]."""

    context: torch.Tensor
    target: torch.Tensor


def block_size(rng: np.random.Generator, grid: tuple[int, int, int], cfg: MaskSetConfig) -> tuple[int, int, int]:
    """(t, h, w) of the blocks of one mask set for one batch: one size per batch, as in V-JEPA."""
    return _block(grid, cfg, rng.random(), rng.random(), rng.random())


def _block(grid: tuple[int, int, int], cfg: MaskSetConfig, u_t: float, u_s: float, u_r: float) -> tuple[int, int, int]:
    """The block size at uniform draws u_t, u_s, u_r in [0, 1) of the temporal scale, spatial scale and aspect ratio."""
    duration, height, width = grid
    t_scale = cfg.temporal_scale[0] + u_t * (cfg.temporal_scale[1] - cfg.temporal_scale[0])
    t = max(1, int(duration * t_scale))
    s_scale = cfg.spatial_scale[0] + u_s * (cfg.spatial_scale[1] - cfg.spatial_scale[0])
    area = int(height * width * s_scale)
    ratio = cfg.aspect_ratio[0] + u_r * (cfg.aspect_ratio[1] - cfg.aspect_ratio[0])
    h = min(height, max(1, int(round(math.sqrt(area * ratio)))))
    w = min(width, max(1, int(round(math.sqrt(area / ratio)))))
    return t, h, w


def covers_the_grid(grid: tuple[int, int, int], cfg: MaskSetConfig) -> bool:
    """Whether every block this set can draw is the whole grid (no context would ever be left): the smallest scales
    at both ends of the aspect ratio (h grows with the ratio, w shrinks) still give (T, H, W)."""
    return all(_block(grid, cfg, 0.0, 0.0, u_r) == tuple(grid) for u_r in (0.0, 1.0))


def sample_target(rng: np.random.Generator, grid: tuple[int, int, int], size: tuple[int, int, int],
                  num_blocks: int) -> np.ndarray:
    """A boolean [T, H, W] target: the union of `num_blocks` blocks of `size` at random places; never all of it."""
    duration, height, width = grid
    t, h, w = size
    for _ in range(MAX_REDRAWS):
        target = np.zeros(grid, dtype=bool)
        for _ in range(num_blocks):
            top = rng.integers(0, height - h + 1)
            left = rng.integers(0, width - w + 1)
            start = rng.integers(0, duration - t + 1)
            target[start:start + t, top:top + h, left:left + w] = True
        if not target.all():  # an empty context is redrawn, as in V-JEPA
            return target
    raise ConfigError(f"{MAX_REDRAWS} draws of {num_blocks} blocks of {size} on the grid {grid} all masked every "
                      f"token, leaving no context: use fewer or smaller blocks (mask.sets)")


class MaskGenerator:
    """Per step, for each mask set: block size from (seed, step, set), block positions per sample."""

    def __init__(self, mask: MaskConfig, model: ModelConfig, seed: int = 0):
        self.cfg = mask
        self.grid = model.grid
        self.seed = seed

    @property
    def num_sets(self) -> int:
        return 1 if self.cfg.kind == "future" else len(self.cfg.sets)

    def __call__(self, batch_size: int, step: int) -> list[MaskPair]:
        if self.cfg.kind == "future":
            return [self._future(batch_size)]
        pairs = []
        for index, set_cfg in enumerate(self.cfg.sets):
            rng = np.random.default_rng([self.seed, step, index])
            size = block_size(rng, self.grid, set_cfg)
            targets = [sample_target(rng, self.grid, size, set_cfg.num_blocks).ravel() for _ in range(batch_size)]
            pairs.append(_collate(targets))
        return pairs

    def _future(self, batch_size: int) -> MaskPair:
        duration, height, width = self.grid
        seen = min(duration - 1, max(1, int(round(duration * self.cfg.future_context))))
        target = np.zeros(self.grid, dtype=bool)
        target[seen:] = True
        return _collate([target.ravel()] * batch_size)


def _collate(targets: list[np.ndarray]) -> MaskPair:
    """Index tensors, each sample's lists cut to the batch's shortest (V-JEPA's min-keep) so they stack."""
    context = [np.flatnonzero(~t) for t in targets]
    target = [np.flatnonzero(t) for t in targets]
    keep_c = min(len(c) for c in context)
    keep_t = min(len(t) for t in target)
    return MaskPair(context=torch.from_numpy(np.stack([c[:keep_c] for c in context])).long(),
                    target=torch.from_numpy(np.stack([t[:keep_t] for t in target])).long())
