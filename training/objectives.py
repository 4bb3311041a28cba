"""The objectives: EMA teacher and momentum schedule, L1 on layer-normed targets, LeJEPA's SIGReg, IMU actions."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def momentum(step: int, total_steps: int, start: float, end: float) -> float:
    """V-JEPA's linear EMA momentum schedule from `start` to `end` over the run."""
    frac = min(1.0, step / max(1, total_steps))
    return start + (end - start) * frac


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """k = m * k + (1 - m) * q for every parameter (buffers are fixed positions, nothing to average)."""
    target_params = list(target.parameters())
    online_params = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(target_params, m)
    torch._foreach_add_(target_params, online_params, alpha=1.0 - m)


def layer_normed(features: torch.Tensor) -> torch.Tensor:
    """Targets are layer-normed without affine parameters, as in V-JEPA."""
    return F.layer_norm(features, (features.shape[-1],))


def l1_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the target tokens only (the caller passes only those)."""
    return (prediction - target).abs().mean()


def epps_pulley(projections: torch.Tensor, points: int = 17, t_max: float = 3.0,
                across_ranks: bool | None = None) -> torch.Tensor:
    """Epps-Pulley statistic of each column of projections [N, K] against N(0, 1) -> [K].

    T = N * integral of |phi_hat(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt over t in [-t_max, t_max], computed on
    [0, t_max] with the trapezoid rule and doubled (the integrand is even).

    Under DDP (`across_ranks`, by default whenever torch.distributed runs more than one process) the empirical
    characteristic function phi_hat and N are summed over every rank's samples, as LeJEPA does: the statistic is the
    one of the global batch, the same on every rank, and its gradient (once DDP averages the ranks') is the one a
    single process holding the whole batch would get.
    """
    t = torch.linspace(0.0, t_max, points, device=projections.device, dtype=projections.dtype)
    gauss = torch.exp(-0.5 * t * t)
    xt = projections.unsqueeze(-1) * t  # [N, K, P]
    sums = torch.stack([torch.cos(xt).sum(0), torch.sin(xt).sum(0)])  # [2, K, P]
    n = projections.new_tensor(float(projections.shape[0]))
    if across_ranks is None:
        across_ranks = torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1
    if across_ranks:
        from torch.distributed.nn.functional import all_reduce  # autograd-aware: gradients flow back to each rank

        sums = all_reduce(sums)
        n = all_reduce(n.detach())
    cos_mean, sin_mean = sums[0] / n, sums[1] / n
    err = (cos_mean - gauss) ** 2 + sin_mean ** 2  # [K, P]
    integral = torch.trapezoid(err * gauss, t, dim=-1)
    return 2.0 * n * integral


def sigreg(embeddings: torch.Tensor, slices: int, generator: torch.Generator, points: int = 17,
           t_max: float = 3.0, across_ranks: bool | None = None) -> torch.Tensor:
    """SIGReg on per-sample embeddings [N, D] (one row per clip of one view): the mean Epps-Pulley statistic over
    `slices` random unit directions, redrawn each step by the caller's generator (seeded alike on every rank).

    N is the number of samples, as in LeJEPA (under DDP, of every rank's: see `epps_pulley`). Tokens are not samples:
    the tokens of one clip are strongly correlated, and taking all B x N tokens with the statistic multiplied by their
    count made it ~57 against a prediction loss of ~0.76, so the clipped gradient was all regulariser.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"sigreg takes per-sample embeddings [N, D], got shape {tuple(embeddings.shape)}; pool "
                         f"tokens per clip first")
    z = embeddings.float()
    directions = torch.randn(z.shape[-1], slices, generator=generator).to(z.device)
    directions = directions / directions.norm(dim=0, keepdim=True)
    return epps_pulley(z @ directions, points, t_max, across_ranks).mean()


def sigreg_views(views: list[torch.Tensor], slices: int, generator: torch.Generator, points: int = 17,
                 t_max: float = 3.0) -> torch.Tensor:
    """LeJEPA's form: SIGReg of each view's per-sample embeddings [N, D], averaged over views (same slices)."""
    state = generator.get_state()
    values = []
    for view in views:
        generator.set_state(state)  # every view is tested along the same directions
        values.append(sigreg(view, slices, generator, points, t_max))
    return torch.stack(values).mean()


def imu_actions(sensor: np.ndarray, tubelet: int, action_dim: int) -> np.ndarray:
    """Per tubelet: each channel's mean and its change (last - first) -> float32 [T / tubelet, action_dim].

    For an IMU this is the gyroscope's rotation rate (the action) and the accelerometer's gravity direction (the
    state) per interval, never a double-integrated position. Missing or short streams give zeros.
    """
    frames = sensor.shape[0] if sensor.ndim == 2 else 0
    steps = frames // tubelet
    out = np.zeros((max(steps, 0), action_dim), np.float32)
    if steps == 0:
        return out
    chunks = np.nan_to_num(sensor[: steps * tubelet].astype(np.float32)).reshape(steps, tubelet, -1)
    features = np.concatenate([chunks.mean(1), chunks[:, -1] - chunks[:, 0]], axis=1)
    width = min(action_dim, features.shape[1])
    out[:, :width] = features[:, :width]
    return out


def gravity_state(actions: torch.Tensor) -> torch.Tensor:
    """The state token's input: the unit direction of the mean accelerometer reading (gravity) per step, from the
    first three features of `imu_actions` -> [..., 3]."""
    accel = actions[..., :3]
    return accel / accel.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def shift_actions(actions: torch.Tensor, steps: int) -> torch.Tensor:
    """Actions [B, T, A] delayed by `steps` time steps (the first repeated): the shifted-IMU negative control."""
    if steps <= 0:
        return actions
    return torch.cat([actions[:, :1].expand(-1, steps, -1), actions[:, :-steps]], dim=1)


@torch.no_grad()
def content_share(tokens: torch.Tensor) -> float:
    """The share of tokens' [B, N, D] energy (mean square, B >= 2) that differs between clips at one position: near 1
    for features that tell clips apart; near 0 when every clip gets (almost) the same features, whether the same
    vector everywhere or one per position (a collapse the fixed position embeddings make easy)."""
    tokens = tokens.float()
    between = (tokens - tokens.mean(dim=0, keepdim=True)).pow(2).mean()
    return float(between / tokens.pow(2).mean().clamp_min(1e-12))


@torch.no_grad()
def collapse_stats(tokens: torch.Tensor, max_samples: int = 2048) -> dict[str, float]:
    """Per-dimension std (min, mean) of token embeddings and of clip means, RankMe effective rank, and the content
    share of the raw tokens and of the tokens as the prediction loss sees them (layer-normed, as targets are).

    Std and rank are taken over tokens of every position, so an encoder whose output depends on the position alone
    still looks healthy on them. The layer-normed share is the one the prediction loss sees: variation between clips
    that lies in a token's mean or scale over channels counts in the raw share and is gone once layer-normed."""
    z = tokens.float().reshape(-1, tokens.shape[-1])
    if z.shape[0] > max_samples:
        z = z[torch.linspace(0, z.shape[0] - 1, max_samples, device=z.device).long()]
    std = z.std(dim=0)
    pooled = tokens.float().mean(dim=1)
    pooled_std = pooled.std(dim=0) if pooled.shape[0] > 1 else torch.zeros(1)
    singular = torch.linalg.svdvals(z - z.mean(0))
    p = singular / singular.sum() + 1e-7
    rank = math.exp(float(-(p * p.log()).sum()))
    stats = {"std_min": float(std.min()), "std_mean": float(std.mean()), "pooled_std_mean": float(pooled_std.mean()),
             "rankme": rank, "dim": float(z.shape[-1])}
    if tokens.shape[0] > 1:  # between clips: a batch of one has no such thing
        stats.update(content_share=content_share(tokens), content_share_normed=content_share(layer_normed(tokens)))
    return stats
