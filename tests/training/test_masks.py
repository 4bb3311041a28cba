"""Multiblock 3D masks: fractions match the configuration (and V-JEPA's measured ones), disjoint, deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import MaskConfig, MaskSetConfig, ModelConfig
from training.masks import MaskGenerator, block_size, sample_target

VIT = ModelConfig(frames=16, size=224, patch=16, tubelet=2)  # 8 x 14 x 14 tokens


def test_vjepa_short_and_long_range_fractions_match_the_paper():
    """Per-sample target fractions (before the batch's min-keep cut) are V-JEPA's measured 0.62 and 0.81."""
    for index, (set_cfg, expected) in enumerate(zip(MaskConfig().sets, (0.62, 0.81))):
        fractions = []
        for step in range(100):
            rng = np.random.default_rng([0, step, index])
            size = block_size(rng, VIT.grid, set_cfg)
            fractions += [sample_target(rng, VIT.grid, size, set_cfg.num_blocks).mean() for _ in range(8)]
        assert np.mean(fractions) == pytest.approx(expected, abs=0.02)


def test_collated_batches_keep_the_fractions_within_the_min_keep_cut():
    generator = MaskGenerator(MaskConfig(), VIT, seed=0)
    short, long = zip(*[[p.target.shape[1] / VIT.tokens for p in generator(8, step)] for step in range(20)])
    assert 0.45 < np.mean(short) < 0.62 + 0.02 and 0.65 < np.mean(long) < 0.81 + 0.02


def test_single_block_covers_its_configured_scale_over_all_time():
    cfg = MaskSetConfig(num_blocks=1, spatial_scale=(0.25, 0.25), aspect_ratio=(1.0, 1.0))
    generator = MaskGenerator(MaskConfig(sets=(cfg,)), VIT, seed=3)
    t, h, w = block_size(np.random.default_rng([3, 0, 0]), VIT.grid, cfg)
    assert t == 8 and (h, w) == (7, 7)  # round(sqrt(0.25 * 196)) = 7: a quarter of the frame, every time step
    pair = generator(4, 0)[0]
    assert pair.target.shape == (4, t * h * w)
    assert pair.target.shape[1] / VIT.tokens == pytest.approx(0.25, abs=0.01)


def test_context_and_target_are_disjoint_valid_and_nonempty():
    generator = MaskGenerator(MaskConfig(), VIT, seed=1)
    for step in range(5):
        for pair in generator(6, step):
            assert pair.context.shape[1] > 0 and pair.target.shape[1] > 0
            for c, t in zip(pair.context, pair.target):
                assert not set(c.tolist()) & set(t.tolist())
                assert int(torch.cat([c, t]).max()) < VIT.tokens


def test_masks_are_deterministic_by_seed_and_step():
    a, b = MaskGenerator(MaskConfig(), VIT, seed=7), MaskGenerator(MaskConfig(), VIT, seed=7)
    assert all(torch.equal(x.target, y.target) for x, y in zip(a(4, 11), b(4, 11)))
    assert not torch.equal(a(4, 11)[0].target, a(4, 12)[0].target)
    assert not torch.equal(a(4, 11)[0].target, MaskGenerator(MaskConfig(), VIT, seed=8)(4, 11)[0].target)


def test_future_mask_hides_the_later_tubelets():
    pair = MaskGenerator(MaskConfig(kind="future", future_context=0.5), VIT)(2, 0)[0]
    per_step = 14 * 14
    assert pair.context.shape[1] == 4 * per_step and int(pair.context.max()) < 4 * per_step
    assert int(pair.target.min()) == 4 * per_step


def test_a_mask_set_that_always_covers_the_grid_is_refused_by_validate_not_looped_on():
    from training.config import ConfigError, TrainConfig, with_overrides

    whole = {"num_blocks": 1, "spatial_scale": [1.0, 1.0], "temporal_scale": [1.0, 1.0], "aspect_ratio": [1.0, 1.0]}
    with pytest.raises(ConfigError, match=r"mask.sets\[0\] masks the whole"):
        with_overrides(TrainConfig(), {"mask.sets": [whole]})
    # almost whole (aspect ratios away from 1 leave a row or column): accepted, and a draw leaves some context
    almost = {**whole, "aspect_ratio": [0.5, 2.0]}
    cfg = with_overrides(TrainConfig(), {"mask.sets": [almost]})
    pair = MaskGenerator(cfg.mask, cfg.model, seed=0)(4, step=0)[0]
    assert pair.context.shape[1] >= 1
    for bad, message in [({"spatial_scale": [0.0, 0.2]}, "spatial_scale"), ({"num_blocks": 0}, "num_blocks"),
                         ({"temporal_scale": [0.9, 0.5]}, "temporal_scale")]:
        with pytest.raises(ConfigError, match=message):
            with_overrides(TrainConfig(), {"mask.sets": [{**whole, "aspect_ratio": [0.75, 1.5], **bad}]})
    with pytest.raises(ConfigError, match="future_context"):
        with_overrides(TrainConfig(), {"mask.kind": "future", "mask.future_context": 1.0})


def test_sample_target_gives_up_with_an_error_instead_of_looping_for_ever():
    from training.config import ConfigError

    with pytest.raises(ConfigError, match="leaving no context"):
        sample_target(np.random.default_rng(0), (2, 2, 2), (2, 2, 2), num_blocks=1)
