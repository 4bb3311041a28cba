"""A tiny JEPA learns what JEPA should: the motion of an object, checked against same-seed controls.

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
  of 2 ordered frames), which shuffled pretraining teaches as well. One cause found: V-JEPA's init std 0.02 at these
  widths lets the context reach the predictor's output at ~1e-4 of its amplitude; `model.init_gain` fixes that, and
  the predictor then uses its context, but the shuffled control still learns as much (docs/training.md,
  "Initialisation at small width").

`make test` runs seed 0 and the asserted runs (4 runs); ALLIANCE_LEARNING=full (what `make reliability` sets) runs
seeds 0, 1, 2 and every control, and prints the whole table.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

import pytest
import torch

from alliance.store import LocalStore
from training.checkpoint import encoder_weights, load_checkpoint
from training.config import preset, with_overrides
from training.loop import train
from training.masks import MaskGenerator
from training.model import Predictor, VideoEncoder
from training.probe import embed, linear_probe, pixel_features, prediction_spread
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


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_torch_thread, probe_data):
    """Each (run, seed) trained and probed once for the module, on first use."""
    cache: dict[tuple[str, int], Probed] = {}

    def get(name: str, seed: int) -> Probed:
        if (name, seed) not in cache:
            cfg = with_overrides(preset("tiny_cpu"), {**COMMON, **RUNS[name], "run.seed": seed})
            store = LocalStore(tmp_path_factory.mktemp(f"{name.split()[0]}-{seed}"))
            summary = train(store, "synthetic", 0, cfg, echo=lambda _: None)
            payload = load_checkpoint(store, summary.checkpoint_key)
            online, shipped, predictor = VideoEncoder(cfg.model), VideoEncoder(cfg.model), Predictor(cfg.model, 1)
            online.load_state_dict(payload["encoder"])
            shipped.load_state_dict(encoder_weights(payload)[0])
            predictor.load_state_dict(payload["predictor"])
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
@pytest.mark.xfail(reason="measured, 3 seeds: not clearly below the real run (see the module docstring)", strict=False)
@pytest.mark.parametrize("control", [c for cs in UNSEPARATED.values() for c in cs])
def test_shuffled_frames_learn_less(runs, control):
    real = runs(control.split()[0])
    assert separated(real, runs(control), "direction") or separated(real, runs(control), "sign")
