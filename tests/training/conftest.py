"""Fixtures for the training tests: a very small config that runs a step in milliseconds."""

from __future__ import annotations

import pytest

from training.config import TrainConfig, preset, with_overrides


def small_config(**overrides) -> TrainConfig:
    """2-layer width-32 ViT on 8 frames of 16x16, batch 4, synthetic clips, one loader process."""
    base = {
        "model.frames": 8, "model.size": 16, "model.patch": 4, "model.embed_dim": 32, "model.depth": 2,
        "model.heads": 2, "model.pred_dim": 16, "model.pred_depth": 1, "model.pred_heads": 2,
        "data.source": "synthetic", "data.batch_size": 4, "data.workers": 1,
        "run.steps": 6, "run.log_every": 1, "run.checkpoint_every": 3, "optim.warmup_steps": 2,
        "objective.sigreg_slices": 32,
    }
    base.update(overrides)
    return with_overrides(preset("tiny_cpu"), base)


@pytest.fixture
def small() -> TrainConfig:
    return small_config()


def first_keys(loader, n: int) -> list[tuple[str, ...]]:
    """The clip keys of the first `n` batches a loader delivers; the loader is closed after."""
    out = []
    for i, loaded in enumerate(loader, start=1):
        out.append(loaded.batch.keys)
        if i == n:
            break
    loader.close()
    return out
