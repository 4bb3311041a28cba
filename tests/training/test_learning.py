"""It learns, not just runs: a tiny JEPA trained a few hundred CPU steps beats the same encoder at random init."""

from __future__ import annotations

import pytest

from alliance.store import LocalStore
from training.config import preset, with_overrides
from training.loop import train
from training.probe import probe_checkpoint

STEPS = 300


@pytest.mark.slow
def test_tiny_jepa_learns_motion_direction_without_collapse(tmp_path):
    """16 frames of 32x32, width 64, 4 layers, batch 16, EMA L1 objective; linear probe on the 8 directions."""
    cfg = with_overrides(preset("tiny_cpu"), {"data.source": "synthetic", "run.steps": STEPS, "run.log_every": 50,
                                              "run.checkpoint_every": STEPS})
    store = LocalStore(tmp_path / "store")
    summary = train(store, "synthetic", 0, cfg, echo=print)
    result = probe_checkpoint(store, summary.checkpoint_key, n_train=512, n_test=256)
    print(f"probe after {STEPS} steps: trained {result.accuracy:.1%}, random init {result.random_init_accuracy:.1%}, "
          f"frame-diff pixels {result.pixel_baseline_accuracy:.1%}, chance {result.chance:.1%}; "
          f"collapse {summary.collapse}")
    assert result.accuracy > result.random_init_accuracy + 0.15, result
    assert result.accuracy > 2 * result.chance, result
    # no collapse: token features keep their spread and use many directions of the 64
    assert summary.collapse["std_mean"] > 0.05 and summary.collapse["std_min"] > 0.01, summary.collapse
    assert summary.collapse["rankme"] > 8, summary.collapse
