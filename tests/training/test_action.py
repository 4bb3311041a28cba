"""V-JEPA 2-AC's action-conditioned predictor: IMU tokens, block-causal attention, teacher forcing + rollout; a
trained model's prediction needs the true IMU (shifted by one step it is worse); hflip mirrors the IMU too."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.training.conftest import small_config
from training.data import MIRROR_SIGNS, collate_arrays
from training.model import ActionPredictor, VideoEncoder, block_causal_mask
from training.objectives import layer_normed
from training.synthetic import make_clip, make_turning_clip

SEEDS = (0, 1, 2) if os.environ.get("ALLIANCE_LEARNING", "") == "full" else (0,)


def test_block_causal_mask():
    mask = block_causal_mask(3, 2)
    assert mask.tolist()[0] == [True, True, False, False, False, False]
    assert mask.tolist()[3] == [True, True, True, True, False, False]
    assert mask.all(dim=1)[-1]


def test_predictor_is_causal_in_time_and_reads_the_actions(small):
    m = small.model
    torch.manual_seed(0)
    predictor = ActionPredictor(m, action_dim=12).eval()
    t, h, w = m.grid
    features = torch.randn(2, t, h * w, m.embed_dim)
    actions, states = torch.randn(2, t, 12), torch.randn(2, t, 3)
    out = predictor(features, actions, states)
    assert out.shape == features.shape
    later = features.clone()
    later[:, 2:] += 1.0
    late_actions = actions.clone()
    late_actions[:, 2:] += 1.0
    # step t's prediction sees nothing of steps > t: changing steps 2.. leaves steps 0 and 1 alone
    assert torch.allclose(predictor(later, late_actions, states)[:, :2], out[:, :2], atol=1e-5)
    assert not torch.allclose(predictor(later, late_actions, states)[:, 2:], out[:, 2:])
    # the action of a step changes that step's prediction
    moved = actions.clone()
    moved[:, 1] += 1.0
    assert not torch.allclose(predictor(features, moved, states)[:, 1], out[:, 1])


def test_causal_encoder_features_of_a_step_depend_only_on_frames_up_to_it(small):
    m = small.model
    torch.manual_seed(0)
    encoder = VideoEncoder(m).eval()
    clip = torch.rand(1, 3, m.frames, m.size, m.size)
    changed = clip.clone()
    changed[:, :, m.tubelet * 2:] = torch.rand_like(changed[:, :, m.tubelet * 2:])
    per_step = m.grid[1] * m.grid[2]
    a, b = encoder(clip, causal=True), encoder(changed, causal=True)
    assert torch.allclose(a[:, :2 * per_step], b[:, :2 * per_step], atol=1e-5)
    assert not torch.allclose(encoder(clip)[:, :per_step], encoder(changed)[:, :per_step])  # not causal: it leaks


def test_turning_clips_move_as_the_imu_says_and_the_past_frames_cannot_tell():
    sample = make_turning_clip(seed=3, frames=16, size=32)
    imu, frames, camera = sample.sensors["imu"], sample.frames, sample.meta["camera"]
    assert sample.meta["turn_frames"] == [2, 4, 6, 8, 10, 12, 14]  # a new direction every tubelet
    # the camera moves as the IMU says (vx = ax, vy = -ay)...
    step = np.diff(camera, axis=0)
    assert np.abs(step[:, 1] - imu[1:, 0]).max() < 0.1 and np.abs(step[:, 0] + imu[1:, 1]).max() < 0.1
    # ...and the whole image with it: frame i + 1 is frame i shifted by the camera's (rounded) step
    corner = np.round(camera).astype(int)
    for i in range(15):
        dy, dx = corner[i + 1] - corner[i]
        before = frames[i][max(dy, 0):32 + min(dy, 0), max(dx, 0):32 + min(dx, 0)]
        after = frames[i + 1][max(-dy, 0):32 + min(-dy, 0), max(-dx, 0):32 + min(-dx, 0)]
        assert np.array_equal(before, after) and (dy, dx) != (0, 0)
    # each tubelet's velocity differs from the one before: the past frames cannot predict the next step
    velocity = imu[:, :2].reshape(8, 2, 2).mean(1)
    assert (np.linalg.norm(np.diff(velocity, axis=0), axis=1) > 0.5).mean() >= 0.7
    assert np.abs(imu[1::2, 5]).max() < 0.1  # the gyroscope's z spikes only where a turn starts


def test_hflip_mirrors_the_imu_with_the_frames():
    cfg = small_config(**{"data.hflip": True, "model.frames": 16, "model.size": 32, "model.patch": 8})
    samples = [make_clip(label, seed=label, frames=16, size=32) for label in range(8)]
    arrays = collate_arrays(samples, cfg)
    plain = collate_arrays(samples, small_config(**{"model.frames": 16, "model.size": 32, "model.patch": 8}))
    flipped = [i for i in range(8) if not np.array_equal(arrays.frames[i], plain.frames[i])]
    assert 0 < len(flipped) < 8
    for i in range(8):
        if i in flipped:
            assert np.array_equal(arrays.frames[i], samples[i].frames[:, :, ::-1])
            # the synthetic accelerometer's x carries the object's horizontal velocity: mirrored, it changes sign
            assert np.allclose(arrays.actions[i, :, 0], -plain.actions[i, :, 0])
            assert np.allclose(arrays.actions[i, :, 1:3], plain.actions[i, :, 1:3])
        else:
            assert np.allclose(arrays.actions[i], plain.actions[i])
    assert MIRROR_SIGNS.tolist() == [-1, 1, 1, 1, -1, -1]


def test_the_action_predictor_trains_alone_on_an_encoder_from_another_run(tmp_path):
    """V-JEPA 2-AC's recipe: pretrain (here 6 EMA steps), then train the action predictor on that encoder, frozen;
    the encoder and its target stay the pretrained target encoder, weight for weight, and only the predictor moves."""
    from alliance.store import LocalStore
    from training.checkpoint import load_checkpoint
    from training.loop import TrainingError, train

    store = LocalStore(tmp_path / "store")
    quiet = {"echo": lambda _: None}
    pretrained = train(store, "synthetic", 0, small_config(), **quiet)
    encoder = load_checkpoint(store, pretrained.checkpoint_key)["target_encoder"]
    action = small_config(**{"objective.kind": "action", "objective.encoder_from": pretrained.run,
                             "objective.freeze_encoder": True})
    said: list[str] = []
    summary = train(store, "synthetic", 0, action, echo=said.append)
    assert f"encoder from {pretrained.checkpoint_key}, frozen" in said
    payload = load_checkpoint(store, summary.checkpoint_key)
    for name, weights in encoder.items():
        assert torch.equal(payload["encoder"][name], weights) and torch.equal(payload["target_encoder"][name], weights)
    halfway = load_checkpoint(store, f"checkpoints/{summary.run}/step-3.pt")  # the predictor learns between them
    assert all(not torch.equal(halfway["predictor"][k], v) for k, v in payload["predictor"].items() if v.ndim >= 2)
    assert all(torch.equal(halfway["encoder"][k], v) for k, v in encoder.items())
    # not frozen: the encoder starts from the pretrained one and learns
    unfrozen = train(store, "synthetic", 0, small_config(**{"objective.kind": "action",
                                                            "objective.encoder_from": pretrained.checkpoint_key}),
                     **quiet)
    moved = load_checkpoint(store, unfrozen.checkpoint_key)["encoder"]
    assert any(not torch.equal(moved[k], v) for k, v in encoder.items())
    # an encoder of another shape is refused, naming the setting and the checkpoint
    with pytest.raises(TrainingError, match=r"objective.encoder_from checkpoints/.*does not fit.*model\.\* settings"):
        train(store, "synthetic", 0, small_config(**{"objective.kind": "action", "model.embed_dim": 64,
                                                     "objective.encoder_from": pretrained.run}), **quiet)
    with pytest.raises(TrainingError, match="objective.encoder_from: nosuch: no run.json with checkpoints"):
        train(store, "synthetic", 0, small_config(**{"objective.kind": "action", "objective.encoder_from": "nosuch"}),
              **quiet)


def test_only_the_action_objective_freezes_its_encoder():
    from training.config import ConfigError

    with pytest.raises(ConfigError, match="freeze_encoder is for the action objective"):
        small_config(**{"objective.freeze_encoder": True})


# V-JEPA 2-AC's setting: the predictor alone on a fixed encoder (here a random one at the width-scaled init, whose
# features keep the clips' content), one-frame tubelets, a constant learning rate
ACTION_STEPS = 1000
ACTION_RUN = {"objective.kind": "action", "objective.freeze_encoder": True, "model.frames": 8, "model.tubelet": 1,
              "model.size": 32, "model.patch": 8, "model.embed_dim": 48, "model.pred_dim": 48, "model.pred_depth": 2,
              "model.heads": 4, "model.pred_heads": 4, "model.init_gain": 0.64, "data.batch_size": 16,
              "run.steps": ACTION_STEPS, "run.log_every": 250, "run.checkpoint_every": ACTION_STEPS,
              "optim.warmup_steps": 10, "optim.lr_peak": 3e-3, "optim.lr_final": 3e-3, "optim.wd_end": 0.04}


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("seed", SEEDS)
def test_a_trained_action_model_predicts_worse_with_the_imu_shifted_by_one_step(tmp_path, seed):
    """1000 steps of the action objective on turning clips (a new direction every 2 frames: the past cannot tell where
    the camera goes next, the IMU can); then, on fresh clips, the teacher-forcing and rollout losses with the true IMU
    against the IMU delayed by one time step, and against copying the current step's features.

    Measured (seeds 0, 1, 2): teacher forcing 0.1374, 0.1393, 0.1402 with the true IMU against 0.1501, 0.1543,
    0.1583 shifted; rollout 0.1486, 0.1535, 0.1508 against 0.1698, 0.1787, 0.1817. Trained jointly with its encoder
    (freeze_encoder off) the predictor ignores the IMU (0.1132 against 0.1132 after 1000 steps): the encoder drifts
    to features every clip shares, which leaves nothing for the IMU to explain (docs/training.md)."""
    from alliance.store import LocalStore
    from training.checkpoint import load_checkpoint
    from training.data import collate
    from training.loop import train
    from training.step import JEPA

    torch.set_num_threads(1)
    cfg = small_config(**ACTION_RUN, **{"run.seed": seed})
    store = LocalStore(tmp_path / "store")
    summary = train(store, "synthetic", 0, cfg, echo=print)
    payload = load_checkpoint(store, summary.checkpoint_key)
    model = JEPA(cfg, 1).eval()
    model.encoder.load_state_dict(payload["encoder"])
    model.predictor.load_state_dict(payload["predictor"])
    batch = collate([make_turning_clip(seed=10_000 + i, frames=8, size=32, stream=4) for i in range(64)], cfg)
    clip = batch.clip(torch.device("cpu"))
    with torch.no_grad():
        targets = layer_normed(model.encoder(clip, causal=True))  # frozen: the encoder is its own target
        true_tf, true_rollout = (float(v) for v in model.action_losses(clip, batch.actions, targets))
        shifted_tf, shifted_rollout = (float(v) for v in model.action_losses(clip, batch.actions, targets, shift=1))
        steps = targets.view(64, cfg.model.grid[0], -1)
        copy = float((steps[:, :-1] - steps[:, 1:]).abs().mean())
    print(f"action model, seed {seed}, {ACTION_STEPS} steps: teacher-forcing L1 {true_tf:.4f} with the true IMU, "
          f"{shifted_tf:.4f} shifted one step ({shifted_tf / true_tf:.3f}x); rollout {true_rollout:.4f} vs "
          f"{shifted_rollout:.4f} ({shifted_rollout / true_rollout:.3f}x); copying the current step {copy:.4f}")
    assert shifted_tf > true_tf * 1.05 and shifted_rollout > true_rollout * 1.05
    assert true_tf < copy
