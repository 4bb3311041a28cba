"""A tiny JEPA trained a few hundred CPU steps: the loss falls, nothing collapses, and the probe reads direction.

Measured here (300 steps, seeds 0 and 1 of the probe): the trained encoder's token probe reached 40.6% and 43.8%
against 34.0% and 41.8% for the same encoder at random init (chance 12.5%, frame-difference pixels 67%). That is
above chance but not clearly above random init, so this test asserts what holds and prints both numbers.
"""

from __future__ import annotations

import pytest

from alliance.store import LocalStore
from training.config import preset, with_overrides
from training.loop import train
from training.probe import probe_checkpoint

STEPS = 200


@pytest.mark.slow
def test_tiny_jepa_trains_without_collapse_and_its_probe_reads_direction(tmp_path):
    """16 frames of 32x32, width 64, 4 layers, batch 16, EMA L1 objective; linear token probe on 8 directions."""
    cfg = with_overrides(preset("tiny_cpu"), {"data.source": "synthetic", "run.steps": STEPS, "run.log_every": 50,
                                              "run.checkpoint_every": STEPS})
    store = LocalStore(tmp_path / "store")
    summary = train(store, "synthetic", 0, cfg, echo=print)
    result = probe_checkpoint(store, summary.checkpoint_key, n_train=512, n_test=256)
    print(f"probe after {STEPS} steps: trained {result.accuracy:.1%}, random init {result.random_init_accuracy:.1%}, "
          f"frame-diff pixels {result.pixel_baseline_accuracy:.1%}, chance {result.chance:.1%}; "
          f"collapse {summary.collapse}")
    first, last = sum(summary.losses[:10]) / 10, sum(summary.losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    assert last > 0.05, "a loss near 0 against layer-normed targets means collapse, not success"
    # no collapse: token features keep their spread and use many of the 64 directions
    assert summary.collapse["std_mean"] > 0.05 and summary.collapse["std_min"] > 0.01, summary.collapse
    assert summary.collapse["rankme"] > 8, summary.collapse
    assert result.accuracy > 2 * result.chance, result
