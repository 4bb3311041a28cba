"""Shapes of the encoder and predictor, the EMA update and schedule, SIGReg, IMU actions and collapse statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.masks import MaskGenerator
from training.model import Predictor, VideoEncoder, sincos_3d
from training.objectives import (collapse_stats, ema_update, epps_pulley, imu_actions, layer_normed, momentum,
                                 sigreg)


def test_encoder_and_predictor_shapes(small):
    m = small.model
    assert m.grid == (4, 4, 4) and m.tokens == 64
    encoder = VideoEncoder(m)
    clip = torch.rand(3, 3, m.frames, m.size, m.size)
    assert encoder(clip).shape == (3, 64, m.embed_dim)
    masks = MaskGenerator(small.mask, m)(3, 0)
    predictor = Predictor(m, len(masks))
    for i, pair in enumerate(masks):
        context = encoder(clip, pair.context)
        assert context.shape == (3, pair.context.shape[1], m.embed_dim)
        assert predictor(context, pair.context, pair.target, i).shape == (3, pair.target.shape[1], m.embed_dim)


def test_sincos_positions_are_distinct_and_fixed():
    table = sincos_3d(64, (4, 4, 4))
    assert table.shape == (64, 64)
    assert torch.cdist(table, table).add(torch.eye(64) * 10).min() > 0.1
    assert torch.equal(table, sincos_3d(64, (4, 4, 4)))


def test_ema_update_and_momentum_schedule():
    online, target = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    before = target.weight.detach().clone()
    ema_update(target, online, 0.9)
    assert torch.allclose(target.weight, 0.9 * before + 0.1 * online.weight)
    ema_update(target, online, 1.0)  # momentum 1.0 freezes the target
    assert torch.allclose(target.weight, 0.9 * before + 0.1 * online.weight)
    assert momentum(0, 100, 0.998, 1.0) == 0.998 and momentum(50, 100, 0.998, 1.0) == pytest.approx(0.999)
    assert momentum(500, 100, 0.998, 1.0) == 1.0


def test_sigreg_is_low_for_gaussian_and_high_for_collapsed_embeddings():
    g = torch.Generator().manual_seed(0)
    gaussian = torch.randn(2048, 64, generator=g)
    collapsed = torch.randn(2048, 1, generator=g).expand(-1, 64) * 0.01 + 1.0
    low_rank = torch.randn(2048, 2, generator=g) @ torch.randn(2, 64, generator=g)
    s_gauss = float(sigreg(gaussian, 128, torch.Generator().manual_seed(1)))
    s_collapsed = float(sigreg(collapsed, 128, torch.Generator().manual_seed(1)))
    s_low_rank = float(sigreg(low_rank, 128, torch.Generator().manual_seed(1)))
    assert s_gauss < 1.0  # about the statistic's null mean
    assert s_collapsed > 100 * s_gauss and s_low_rank > 10 * s_gauss
    # the 1-D statistic itself: N(0,1) small, a shifted or squeezed sample large
    x = torch.randn(4096, 1, generator=g)
    assert float(epps_pulley(x)) < 1.0 < float(epps_pulley(x * 0.2)) and float(epps_pulley(x + 1.0)) > 50


def test_sigreg_gives_gradients_towards_isotropy():
    z = (torch.randn(512, 16) * 0.1).requires_grad_(True)
    sigreg(z, 32, torch.Generator().manual_seed(0)).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_imu_actions_per_tubelet():
    imu = np.arange(16 * 6, dtype=np.float32).reshape(16, 6)
    actions = imu_actions(imu, tubelet=2, action_dim=12)
    assert actions.shape == (8, 12)
    assert np.allclose(actions[0, :6], imu[:2].mean(0)) and np.allclose(actions[0, 6:], imu[1] - imu[0])
    assert imu_actions(np.zeros((0, 0), np.float32), 2, 12).shape == (0, 12)


def test_collapse_stats_tell_collapse_from_spread():
    spread = collapse_stats(layer_normed(torch.randn(4, 256, 32)))
    to_a_point = collapse_stats(torch.randn(1, 1, 32).expand(4, 256, 32) + torch.randn(4, 256, 32) * 1e-4)
    to_a_plane = collapse_stats(torch.randn(4, 256, 2) @ torch.randn(2, 32))
    assert spread["std_min"] > 0.5 and spread["rankme"] > 25
    assert to_a_point["std_mean"] < 1e-3  # complete collapse: no spread at all
    assert to_a_plane["rankme"] < 3  # dimensional collapse: spread, but in two directions


def test_random_targets_depend_on_the_clip_not_only_on_the_position(small):
    """The objective is not trivial: much of the target variance changes with the clip, not only with the position."""
    from training.synthetic import labelled_set

    torch.manual_seed(0)
    encoder = VideoEncoder(small.model).eval()
    clips, _ = labelled_set(32, seed=5, frames=small.model.frames, size=small.model.size)
    with torch.no_grad():
        z = layer_normed(encoder(torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 255))
    share = float(z.var(dim=0).mean(0).sum() / z.var(dim=(0, 1)).sum())
    assert share > 0.3  # with raw [0, 1] pixels the fixed positions dominated


def test_content_share_sees_a_position_only_collapse_that_std_and_rank_miss():
    from training.objectives import collapse_stats

    torch.manual_seed(0)
    positions = torch.randn(1, 32, 16)  # what each position holds, the same in every clip
    collapsed = positions.expand(8, -1, -1) + 1e-3 * torch.randn(8, 32, 16)
    stats = collapse_stats(collapsed)
    assert stats["std_min"] > 0.3 and stats["rankme"] > 10  # healthy by the old statistics
    assert stats["content_share"] < 1e-4 and stats["content_share_normed"] < 1e-4
    varied = collapse_stats(torch.randn(8, 32, 16))
    assert varied["content_share"] > 0.8 and varied["content_share_normed"] > 0.8
    constant = collapse_stats(torch.randn(1, 1, 16) + 0.05 * torch.randn(8, 32, 16))  # one vector, a little noise
    assert constant["content_share"] < 0.01 and constant["content_share_normed"] < 0.01
    # clips differing only in each token's offset over channels: raw share high, gone once layer-normed
    offsets = positions.expand(8, -1, -1) + 3.0 * torch.randn(8, 32, 1)
    shifted = collapse_stats(offsets)
    assert shifted["content_share"] > 0.5 and shifted["content_share_normed"] < 1e-4
    assert "content_share" not in collapse_stats(torch.randn(1, 32, 16))  # one clip: nothing between clips


def test_width_scaled_init_lets_the_context_reach_the_predictors_output():
    """At the tiny preset's widths V-JEPA's std 0.02 passes the context to the predictor's output at ~1e-4 of its
    amplitude (the share of the output that differs between contexts was 4e-7, measured): the predictor sits on the
    position-mean plateau. `init_gain` draws std = gain / sqrt(fan_in) instead (1.5e-3, measured)."""
    from training.config import preset, with_overrides

    def context_share(gain: float) -> float:
        cfg = with_overrides(preset("tiny_cpu"), {"model.init_gain": gain, "mask.kind": "future",
                                                  "mask.future_context": 0.5})
        masks = MaskGenerator(cfg.mask, cfg.model)(1, 0)[0]
        torch.manual_seed(0)
        predictor = Predictor(cfg.model, 1).eval()
        context = torch.randn(256, masks.context.shape[1], cfg.model.embed_dim)  # every context differs fully
        with torch.no_grad():
            out = predictor(context, masks.context.expand(256, -1), masks.target.expand(256, -1), 0)
        return float(out.var(0).mean() / out.pow(2).mean())

    default, scaled = context_share(0.0), context_share(0.64)
    assert default < 1e-5 and scaled > 100 * default, (default, scaled)
    encoder = VideoEncoder(with_overrides(preset("tiny_cpu"), {"model.init_gain": 0.64}).model)
    assert abs(float(encoder.blocks[0].mlp[0].weight.detach().std()) - 0.64 / 8) < 0.01  # fan_in 64
    assert abs(float(VideoEncoder(preset("tiny_cpu").model).blocks[0].mlp[0].weight.detach().std()) - 0.02) < 0.003


@pytest.mark.parametrize("stop_grad", [False, True])
def test_sigreg_stop_grad_takes_the_per_token_targets_out_of_the_gradient(stop_grad):
    """With lambda = 0 (prediction only) the encoder's gradient is the one of an L1 against targets computed apart and
    detached when `sigreg_stop_grad` is on, and differs from it when off (LeJEPA's way: the gradient flows through
    both sides)."""
    from tests.training.conftest import small_config
    from training.model import gather_tokens
    from training.objectives import l1_loss
    from training.step import JEPA

    cfg = small_config(**{"objective.kind": "sigreg", "objective.sigreg_lambda": 0.0, "mask.kind": "future",
                          "objective.sigreg_stop_grad": stop_grad})
    torch.manual_seed(0)
    model = JEPA(cfg, 1)
    clip = torch.rand(4, 3, cfg.model.frames, cfg.model.size, cfg.model.size)
    masks = MaskGenerator(cfg.mask, cfg.model)(4, 0)
    loss, _ = model(clip, masks, torch.zeros(4, 1, 12), None, torch.Generator().manual_seed(0))
    loss.backward()
    through_the_objective = [p.grad.clone() for p in model.encoder.parameters()]
    model.zero_grad()
    pair = masks[0]
    targets = gather_tokens(layer_normed(model.encoder(clip)).detach(), pair.target)
    l1_loss(model.predictor(model.encoder(clip, pair.context), pair.context, pair.target, 0), targets).backward()
    detached = [p.grad for p in model.encoder.parameters()]
    same = all(torch.allclose(a, b, atol=1e-7) for a, b in zip(through_the_objective, detached))
    assert same == stop_grad
