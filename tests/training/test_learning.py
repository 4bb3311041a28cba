"""A tiny JEPA learns what JEPA should: the motion of an object, and how things move on, checked against controls.

Each run: 150 CPU steps (16 frames of 32x32, width 64, 4 layers, batch 16) on the moving-square clips with `future`
masks whose context is the first tubelet only (frames 0-1; the target is the other 7 tubelets). Then a frozen linear
probe on an encoder's features averaged over every token (no time order left for the probe), trained on 1024 fresh
clips and tested on 512: `direction` (8 ways, chance 12.5%) and `sign` (which half-plane, chance 50%). The encoder
probed is the one a run ships (`alliance train export`): the EMA target encoder, as V-JEPA's evaluations load it
(checkpoint_key='target_encoder'); for SIGReg, which has no teacher, the online encoder. The online encoder's
direction is printed beside it.

The margin rule, on the direction probe: a control's mean over the seeds is at least 10 points below the real run's
mean, and every seed of the control is below the real run's worst seed. The real runs must also beat random-init
encoders by 15 points on both probes.

Measured, seeds 0, 1, 2 (direction of the shipped encoder; see the closing note of issue 19 for the whole table):
- EMA frozen at 1.0 ships its random teacher: 15% against 44%, asserted. Its online encoder reads 34-40% (the
  student of a random teacher learns most of what the real student does), so on the online encoder it was not
  separated (36.8% against 43.4%).
- SIGReg with lambda = 1 (no prediction loss): 21% against 43%, asserted.
- Frames shuffled in time: not separated (43.2% against 43.1%; SIGReg 38.3% against 43.2%): run in the full table
  (ALLIANCE_LEARNING=full, make reliability) and xfail there. The reason, measured: no run learns to predict the
  future here. The predictor's output hardly differs between clips (`prediction_spread`, printed: ~1e-7 of its
  targets' spread) and a linear probe hardly finds the square's future cell in it (22% of 16 cells, a random-init
  model 20%, while the targets themselves locate it at 99%); the online encoder's layer-normed features
  become mostly the same for every clip (content share, printed: 0.005 for EMA and 0.012 for SIGReg after 150
  steps, 0.14 with lambda = 1, about 0.1 at init). What the probe reads is the motion inside each token (a tubelet
  of 2 ordered frames), which shuffled pretraining teaches as well. The cause: V-JEPA's init std 0.02 at these
  widths lets the context reach the predictor's output at ~1e-4 of its amplitude (docs/training.md, "Initialisation
  at small width").

The order test separates the frames-shuffled control where the direction probe cannot. A camera pans over a
textured world (`data.synthetic_world = "panning"`), tubelets of one frame (the order of the past lies only between
tokens), context the first 4 of 8 frames, the width-scaled init (`model.init_gain = 0.64`), 1000 steps. Measured:
how much worse the predictor predicts the rest of a clip from its past shown backwards
(`training.probe.context_order_sensitivity`). Trained in order, the loss rises by a fifth or more; trained on frames
shuffled in time, by under half a percent (the figures: docs/training.md). SIGReg runs it with its per-token
targets out of the gradient (`objective.sigreg_stop_grad`): with the gradient through them, as LeJEPA does, its
features collapse in this setting (layer-normed content share 1e-4 after 1000 steps at lambda 0.05 and 0.02, 0.003
with raw targets). SIGReg constrains only each clip's pooled embedding, which features shared by all of a clip's
tokens satisfy whatever their order (our reading; not measured).

`make test` runs seed 0 and the asserted runs of the direction table (4 runs); ALLIANCE_LEARNING=full (what
`make reliability` sets) runs seeds 0, 1, 2 and every control, prints the whole table, and runs the order test.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from alliance.store import LocalStore
from training.checkpoint import encoder_weights, load_checkpoint
from training.config import preset, with_overrides
from training.loop import train
from training.masks import MaskGenerator
from training.model import Predictor, VideoEncoder
from training.probe import context_order_sensitivity, embed, linear_probe, pixel_features, prediction_spread
from training.synthetic import labelled_set

FULL = os.environ.get("ALLIANCE_LEARNING", "") == "full"
STEPS = 150
SEEDS = (0, 1, 2) if FULL else (0,)
MARGIN = 0.10
COMMON = {"data.source": "synthetic", "data.workers": 1, "objective.sigreg_slices": 64, "run.steps": STEPS,
          "run.log_every": 50, "run.checkpoint_every": STEPS, "mask.kind": "future", "mask.future_context": 0.125}
RUNS = {
    "ema_l1": {"objective.kind": "ema_l1", "objective.ema_start": 0.99},
    "ema_l1 frozen teacher (EMA 1.0)": {"objective.kind": "ema_l1", "objective.ema_start": 1.0},
    "ema_l1 frames shuffled": {"objective.kind": "ema_l1", "objective.ema_start": 0.99, "data.shuffle_time": True},
    "sigreg": {"objective.kind": "sigreg"},
    "sigreg lambda 1 (no prediction)": {"objective.kind": "sigreg", "objective.sigreg_lambda": 1.0},
    "sigreg frames shuffled": {"objective.kind": "sigreg", "data.shuffle_time": True},
}
CONTROLS = {"ema_l1": ["ema_l1 frozen teacher (EMA 1.0)"],  # asserted: clearly below on every seed
            "sigreg": ["sigreg lambda 1 (no prediction)"]}
UNSEPARATED = {"ema_l1": ["ema_l1 frames shuffled"], "sigreg": ["sigreg frames shuffled"]}  # measured: they are not

# The order test: a camera panning over a textured world, tubelets of one frame (the order of the past lies only
# between tokens), context the first 4 of 8 frames, the width-scaled init (with V-JEPA's std 0.02 at these widths
# the predictor never uses its context: docs/training.md), 1000 steps
ORDER_STEPS = 1000
PANNING = {"data.source": "synthetic", "data.workers": 1, "data.synthetic_world": "panning", "model.frames": 8,
           "model.tubelet": 1, "model.init_gain": 0.64, "mask.kind": "future", "mask.future_context": 0.5,
           "run.steps": ORDER_STEPS, "run.log_every": 250, "run.checkpoint_every": ORDER_STEPS}
# SIGReg with its per-token targets out of the gradient: with the gradient through them its features collapse here
ORDER_OBJECTIVES = {"ema_l1": {"objective.kind": "ema_l1", "objective.ema_start": 0.99},
                    "sigreg": {"objective.kind": "sigreg", "objective.sigreg_stop_grad": True}}
ORDER_FLOOR = 0.02  # the real run's reversed context costs it at least 2% more prediction loss on every seed


@dataclass(frozen=True)
class Probed:
    direction: float  # of the shipped encoder (EMA: the target encoder; SIGReg: the online one)
    sign: float
    collapse: dict  # the online encoder's, on its raw output (content_share among them)
    online_direction: float = 0.0
    spread: float = 0.0  # prediction_spread on the probe's test clips


@pytest.fixture(scope="module")
def probe_data():
    cfg = preset("tiny_cpu").model
    train_clips, train_y = labelled_set(1024, seed=1, frames=cfg.frames, size=cfg.size)
    test_clips, test_y = labelled_set(512, seed=2, frames=cfg.frames, size=cfg.size)
    return train_clips, torch.from_numpy(train_y), test_clips, torch.from_numpy(test_y)


def score(features_of, data) -> tuple[float, float]:
    train_clips, train_y, test_clips, test_y = data
    a, b = features_of(train_clips), features_of(test_clips)
    return linear_probe(a, train_y, b, test_y), linear_probe(a, train_y // 4, b, test_y // 4)


@pytest.fixture(scope="module")
def baselines(probe_data):
    cfg = preset("tiny_cpu").model
    randoms = []
    for i in range(3):
        torch.manual_seed(1000 + i)
        encoder = VideoEncoder(cfg)
        randoms.append(score(lambda c: embed(encoder, c, "mean"), probe_data))
    return randoms, score(pixel_features, probe_data)


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model's ops are small: on a busy 2-core machine a second intra-op thread mostly waits for a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def trained(store: LocalStore, cfg):
    """Train a synthetic run; its online encoder, shipped encoder, predictor, checkpoint payload and summary."""
    summary = train(store, "synthetic", 0, cfg, echo=lambda _: None)
    payload = load_checkpoint(store, summary.checkpoint_key)
    online, shipped, predictor = VideoEncoder(cfg.model), VideoEncoder(cfg.model), Predictor(cfg.model, 1)
    online.load_state_dict(payload["encoder"])
    shipped.load_state_dict(encoder_weights(payload)[0])
    predictor.load_state_dict(payload["predictor"])
    return online, shipped, predictor, payload, summary


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_torch_thread, probe_data):
    """Each (run, seed) trained and probed once for the module, on first use."""
    cache: dict[tuple[str, int], Probed] = {}

    def get(name: str, seed: int) -> Probed:
        if (name, seed) not in cache:
            cfg = with_overrides(preset("tiny_cpu"), {**COMMON, **RUNS[name], "run.seed": seed})
            store = LocalStore(tmp_path_factory.mktemp(f"{name.split()[0]}-{seed}"))
            online, shipped, predictor, payload, summary = trained(store, cfg)
            direction, sign = score(lambda c: embed(shipped, c, "mean"), probe_data)
            online_direction = direction if payload["target_encoder"] is None else \
                score(lambda c: embed(online, c, "mean"), probe_data)[0]
            masks = MaskGenerator(cfg.mask, cfg.model)(1, 0)[0]
            spread = prediction_spread(online, predictor, shipped, probe_data[2][:256], masks.context, masks.target)
            cache[name, seed] = Probed(direction, sign, summary.collapse, online_direction, spread)
        return cache[name, seed]

    return lambda name: [get(name, seed) for seed in SEEDS]


def _row(name: str, results: list[Probed]) -> str:
    def cell(values: list[float]) -> str:
        spread = f" +- {statistics.stdev(values):.1%}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.1%}{spread} ({', '.join(f'{x:.1%}' for x in values)})"

    return (f"| {name} | {cell([r.direction for r in results])} | {cell([r.sign for r in results])} | "
            f"{cell([r.online_direction for r in results])} | "
            f"std {statistics.mean(r.collapse['std_mean'] for r in results):.3f}, rankme "
            f"{statistics.mean(r.collapse['rankme'] for r in results):.1f}, content "
            f"{statistics.mean(r.collapse['content_share'] for r in results):.2f} raw, "
            f"{statistics.mean(r.collapse['content_share_normed'] for r in results):.4f} layer-normed | "
            f"{statistics.mean(r.spread for r in results):.1e} |")


def _print_table(objective: str, table: dict[str, list[Probed]], baselines) -> None:
    randoms, pixels = baselines
    print(f"\n{objective}, {STEPS} steps, seeds {SEEDS}; probe on the shipped encoder's mean-pooled features "
          f"(direction 8-way, sign 2-way); mean +- std (per seed)")
    print("| run | direction | sign | direction, online encoder | collapse (online, raw) | prediction spread |")
    for name, results in table.items():
        print(_row(name, results))
    print(f"| random init x3 | {statistics.mean(r[0] for r in randoms):.1%} | "
          f"{statistics.mean(r[1] for r in randoms):.1%} | | | |")
    print(f"| frame-difference pixels | {pixels[0]:.1%} | {pixels[1]:.1%} | | | |")


def separated(real: list[Probed], control: list[Probed], field: str = "direction") -> bool:
    """The margin rule: the control's mean is MARGIN below the real mean and its best seed below the real worst."""
    r, c = [getattr(x, field) for x in real], [getattr(x, field) for x in control]
    return statistics.mean(c) <= statistics.mean(r) - MARGIN and max(c) < min(r)


def test_the_margin_rule():
    real = [Probed(0.45, 0.8, {}), Probed(0.42, 0.85, {})]
    assert separated(real, [Probed(0.30, 0.7, {}), Probed(0.33, 0.7, {})])
    assert not separated(real, [Probed(0.30, 0.7, {}), Probed(0.43, 0.7, {})])  # one seed above the worst real
    assert not separated(real, [Probed(0.36, 0.7, {}), Probed(0.37, 0.7, {})])  # under 10 points on the mean


def test_the_panning_camera_moves_as_its_label_says_and_every_token_moves():
    from training.synthetic import DIRECTIONS, SyntheticReader, make_panning_clip

    for label in range(DIRECTIONS):
        clip = make_panning_clip(label, seed=label, frames=8, size=32)
        frames, imu = clip.frames.astype(np.int16), clip.sensors["imu"]
        angle = np.arctan2(imu[:, 1].mean(), imu[:, 0].mean())  # the camera's (vx, -vy)
        assert clip.meta["label"] == label and abs(np.angle(np.exp(1j * (angle - label * np.pi / 4)))) < 0.1
        # the image moves against the camera: frame i + 1 at (y, x) is frame i at (y + dy, x + dx)
        for i in range(7):
            errors = {}
            for dy in range(-4, 5):
                for dx in range(-4, 5):
                    a = frames[i][max(dy, 0):32 + min(dy, 0), max(dx, 0):32 + min(dx, 0)]
                    b = frames[i + 1][max(-dy, 0):32 + min(-dy, 0), max(-dx, 0):32 + min(-dx, 0)]
                    errors[dy, dx] = np.abs(a - b).mean()
            dy, dx = min(errors, key=errors.get)
            assert errors[dy, dx] == 0 and (dy, dx) != (0, 0)
            assert np.sign(dx) == np.sign(np.round(imu[i + 1, 0])) or abs(imu[i + 1, 0]) < 1.5
    stream = iter(SyntheticReader(frames=8, size=32, world="panning"))
    assert [next(stream).key.split("-")[0] for _ in range(2)] == ["panning", "panning"]
    with pytest.raises(ValueError, match="synthetic world 'spiral'"):
        SyntheticReader(world="spiral")


def test_context_order_sensitivity_is_zero_when_the_order_cannot_matter():
    """A context of identical frames reads the same backwards; the untrained model is measured beside it."""
    cfg = with_overrides(preset("tiny_cpu"), PANNING)
    torch.manual_seed(0)
    encoder, predictor = VideoEncoder(cfg.model), Predictor(cfg.model, 1)
    masks = MaskGenerator(cfg.mask, cfg.model)(1, 0)[0]
    clips, _ = labelled_set(16, seed=3, frames=8, size=32, world="panning")
    still = np.repeat(clips[:, :1], 8, axis=1)
    assert context_order_sensitivity(encoder, predictor, encoder, still, masks.context, masks.target) == 0.0
    moving = context_order_sensitivity(encoder, predictor, encoder, clips, masks.context, masks.target)
    assert moving != 0.0 and abs(moving) < ORDER_FLOOR  # untrained: the order reaches the loss, barely


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["ema_l1", "sigreg"])
def test_jepa_learns_the_motion_and_its_controls_do_not(runs, baselines, objective):
    names = [objective, *CONTROLS[objective]] + (UNSEPARATED[objective] if FULL else [])
    table = {name: runs(name) for name in names}
    _print_table(objective, table, baselines)
    real = table[objective]
    randoms, _ = baselines
    assert statistics.mean(r.direction for r in real) >= statistics.mean(r[0] for r in randoms) + 0.15
    assert statistics.mean(r.sign for r in real) >= statistics.mean(r[1] for r in randoms) + 0.15
    for r in real:  # std and RankMe on the online encoder's raw output hold; the content share, printed, shows the
        # layer-normed features are mostly shared by every clip (module docstring, docs/training.md)
        assert r.collapse["std_min"] > 0.01 and r.collapse["rankme"] > 16, r.collapse
    for control in CONTROLS[objective]:
        assert separated(real, table[control]), (control, table[control], real)


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="these controls run in the full table: ALLIANCE_LEARNING=full (make reliability)")
@pytest.mark.xfail(reason="measured, 3 seeds: not clearly below the real run on the direction probe (docstring); "
                          "the order test separates both (EMA and SIGReg)", strict=False)
@pytest.mark.parametrize("control", [c for cs in UNSEPARATED.values() for c in cs])
def test_shuffled_frames_learn_less(runs, control):
    real = runs(control.split()[0])
    assert separated(real, runs(control), "direction") or separated(real, runs(control), "sign")


@dataclass(frozen=True)
class OrderProbed:
    sensitivity: float  # context_order_sensitivity: the rise of the prediction loss with the context reversed
    spread: float
    direction: float  # the shipped encoder's mean-pooled features, panning direction (8 ways); printed only


def order_run(tmp_path_factory, objective: str, shuffled: bool, seed: int) -> OrderProbed:
    cfg = with_overrides(preset("tiny_cpu"), {**PANNING, **ORDER_OBJECTIVES[objective], "data.shuffle_time": shuffled,
                                              "run.seed": seed})
    store = LocalStore(tmp_path_factory.mktemp(f"order-{objective}-{seed}"))
    online, shipped, predictor, _, _ = trained(store, cfg)
    m = cfg.model
    train_clips, train_y = labelled_set(1024, seed=1, frames=m.frames, size=m.size, world="panning")
    test_clips, test_y = labelled_set(512, seed=2, frames=m.frames, size=m.size, world="panning")
    masks = MaskGenerator(cfg.mask, m)(1, 0)[0]
    clips = test_clips[:256]
    return OrderProbed(
        context_order_sensitivity(online, predictor, shipped, clips, masks.context, masks.target),
        prediction_spread(online, predictor, shipped, clips, masks.context, masks.target),
        linear_probe(embed(shipped, train_clips, "mean"), torch.from_numpy(train_y), embed(shipped, test_clips, "mean"),
                     torch.from_numpy(test_y)))


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not FULL, reason="6 runs of 1000 steps, 2 min each: ALLIANCE_LEARNING=full (make reliability)")
@pytest.mark.parametrize("objective", list(ORDER_OBJECTIVES))
def test_the_predictor_uses_the_order_of_its_past_and_the_frames_shuffled_control_does_not(tmp_path_factory,
                                                                                          one_torch_thread, objective):
    """The frames-shuffled control, where the direction probe cannot separate it: after pretraining on clips in
    order, the predictor predicts the rest of a clip clearly worse from its past shown backwards; trained on frames
    shuffled in time, it does not care. Margin rule: the real run's rise is at least ORDER_FLOOR on every seed, every
    control seed lies below the real run's worst and the control's mean is under a quarter of the real mean."""
    table = {f"{objective}{', frames shuffled' if shuffled else ''}":
             [order_run(tmp_path_factory, objective, shuffled, seed) for seed in SEEDS] for shuffled in (False, True)}
    print(f"\n{objective}, panning camera, one-frame tubelets, context 4 of 8 frames, init_gain 0.64, {ORDER_STEPS} "
          f"steps, seeds {SEEDS}")
    print("| run | loss rise, context reversed | prediction spread | direction (shipped, mean-pooled) |")
    for name, results in table.items():
        print(f"| {name} | {', '.join(f'{r.sensitivity:.2%}' for r in results)} | "
              f"{', '.join(f'{r.spread:.2f}' for r in results)} | {', '.join(f'{r.direction:.1%}' for r in results)} |")
    real, control = ([r.sensitivity for r in results] for results in table.values())
    assert min(real) >= ORDER_FLOOR, real
    assert max(control) < min(real) and statistics.mean(control) < statistics.mean(real) / 4, (control, real)
