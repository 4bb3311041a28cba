"""The closed loop's hand-over: what curation's RunInference stage computes for a clip is exactly the exported
encoder's (and the checkpoint's EMA target encoder's) forward pass on that clip."""

from __future__ import annotations

import numpy as np
import torch

from alliance.settings import Settings
from alliance.store import open_store
from tests.training.conftest import small_config
from training.checkpoint import load_checkpoint
from training.export import export_encoder
from training.loop import train
from training.model import VideoEncoder
from training.synthetic import make_clip


def test_run_inference_embeddings_equal_the_exported_encoders_forward(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that

    from curation.embed import clip_tensor, load_encoder_spec
    from pipelines.embed_handler import EmbedClips

    settings = Settings(home=tmp_path / "home")
    store = open_store(settings=settings)
    cfg = small_config(**{"run.steps": 3, "run.checkpoint_every": 3})
    summary = train(store, "synthetic", 0, cfg, echo=lambda _: None)
    export_encoder(store, summary.checkpoint_key)
    spec = load_encoder_spec(store, summary.run)
    # the curation path: decoded frames (larger than the encoder's input) through clip_tensor, then RunInference
    clips = {f"clip-{i}": clip_tensor(make_clip(i % 8, seed=i, frames=8, size=24).frames, spec) for i in range(5)}
    encoder = VideoEncoder(cfg.model).eval()
    encoder.load_state_dict(load_checkpoint(store, summary.checkpoint_key)["target_encoder"])  # what export ships
    with torch.no_grad():
        expected = {k: encoder(torch.from_numpy(v)[None]).mean(1)[0].numpy() for k, v in clips.items()}
    scale = max(float(np.abs(v).max()) for v in expected.values())

    def matches(rows):
        got = dict(rows)
        assert set(got) == set(expected)
        for key, vector in got.items():
            assert len(vector) == cfg.model.embed_dim
            assert np.allclose(np.asarray(vector, np.float32), expected[key], atol=1e-5 * max(1.0, scale)), key
        # and the encoder is not a constant: different clips, different embeddings
        assert np.std(np.stack(list(got.values())), axis=0).max() > 1e-3

    with beam.Pipeline() as pipeline:
        vectors = pipeline | beam.Create(sorted(clips.items())) | EmbedClips(settings, spec, max_batch_size=2)
        assert_that(vectors, matches)
