"""A tiny JEPA learns what JEPA should: the motion of an object, checked against same-seed controls.

Each run: 150 CPU steps (16 frames of 32x32, width 64, 4 layers, batch 16) on the moving-square clips with `future`
masks whose context is the first tubelet only (frames 0-1; the target is the other 7 tubelets): the predictor cannot
work the motion out from positions across the context, so the encoder itself must hold the velocity to place the
square 2-14 frames ahead. Then a frozen linear probe on the online encoder's features averaged over every token (no
time order left for the probe), trained on 1024 fresh clips and tested on 512:
- `direction`: the 8 directions (chance 12.5%);
- `sign`: which half-plane the motion points to (directions 0-3 against 4-7, chance 50%).

The margin rule, on the direction probe: a control's mean over the seeds is at least 10 points below the real run's
mean, and every seed of the control is below the real run's worst seed. The real runs must also beat random-init
encoders by 15 points on both probes, and the online encoder must not collapse.

Measured (direction / sign, mean +- std over seeds 0, 1, 2; 3 random-init encoders 16.4% / 57.3%):
| ema_l1                  | 43.4 +- 1.7 (45.3, 42.4, 42.4) | 83.2 +- 2.6 (80.7, 85.9, 83.0) |
| ema_l1 frozen teacher   | 36.8 +- 3.2 (33.8, 36.5, 40.2) | 79.8 +- 5.7 (73.2, 83.6, 82.6) |
| ema_l1 frames shuffled  | 43.0 +- 1.3 (42.8, 41.8, 44.3) | 83.7 +- 3.7 (79.7, 86.9, 84.6) |
| sigreg (lambda 0.05)    | 43.2 +- 0.8 (43.4, 42.4, 43.9) | 83.3 +- 2.9 (84.4, 85.5, 80.1) |
| sigreg lambda 1         | 21.3 +- 2.5 (24.0, 19.1, 20.7) | 62.1 +- 2.6 (64.3, 59.2, 62.7) |
| sigreg frames shuffled  | 38.3 +- 1.7 (39.5, 39.1, 36.3) | 79.1 +- 2.5 (77.7, 82.0, 77.7) |
Only "lambda 1" meets the rule (21.9 points, every seed below), and it is the one control asserted. The frozen
teacher (6.6 points, seeds overlap) and frames shuffled (0.4 and 4.9 points) do not: they run in the full table
and xfail there, so the day they separate shows up as XPASS.

Why frames shuffled cannot separate with this probe: with tubelet 2 every token embeds an ordered pair of frames,
so an encoder that learned to place the square in both frames of a pair (which shuffled pretraining teaches as
well: the other frames lie along the same line) holds the sense of motion for a linear probe whether or not it ever
saw frames in order. Seed 0, real against shuffled: context = first half of the clip (the previous setting)
39.5/77.7 against 41.8/76.6 (probe 512/256); first tubelet 45.3/80.7 against 42.8/79.7; 450 steps 41.6/80.9
against 41.8/83.0; a background panning with the square 54.7/90.4 against 50.8/87.5. With tubelet 1 (one frame a
token) the control would be clean, but no real run learned anything a pooled probe reads (16.2/52.0 with a context
of 2 of 8 frames, 12.9/52.0 with 4 of 8).

`make test` runs seed 0 and the asserted runs (3 runs); ALLIANCE_LEARNING=full (what `make reliability` sets) runs
seeds 0, 1, 2 and every control, and prints the whole table.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

import pytest
import torch

from alliance.store import LocalStore
from training.checkpoint import load_checkpoint
from training.config import preset, with_overrides
from training.loop import train
from training.model import VideoEncoder
from training.probe import embed, linear_probe, pixel_features
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
CONTROLS = {"ema_l1": [], "sigreg": ["sigreg lambda 1 (no prediction)"]}  # asserted: clearly below on every seed
UNSEPARATED = {"ema_l1": ["ema_l1 frozen teacher (EMA 1.0)", "ema_l1 frames shuffled"],  # measured: they are not
               "sigreg": ["sigreg frames shuffled"]}

@dataclass(frozen=True)
class Probed:
    direction: float
    sign: float
    collapse: dict


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
            encoder = VideoEncoder(cfg.model)
            encoder.load_state_dict(load_checkpoint(store, summary.checkpoint_key)["encoder"])
            direction, sign = score(lambda c: embed(encoder, c, "mean"), probe_data)
            cache[name, seed] = Probed(direction, sign, summary.collapse)
        return cache[name, seed]

    return lambda name: [get(name, seed) for seed in SEEDS]


def _row(name: str, results: list[Probed]) -> str:
    def cell(values: list[float]) -> str:
        spread = f" +- {statistics.stdev(values):.1%}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.1%}{spread} ({', '.join(f'{x:.1%}' for x in values)})"

    return (f"| {name} | {cell([r.direction for r in results])} | {cell([r.sign for r in results])} | "
            f"std {statistics.mean(r.collapse['std_mean'] for r in results):.3f}, rankme "
            f"{statistics.mean(r.collapse['rankme'] for r in results):.1f} |")


def _print_table(objective: str, table: dict[str, list[Probed]], baselines) -> None:
    randoms, pixels = baselines
    print(f"\n{objective}, {STEPS} steps, seeds {SEEDS}; probe on mean-pooled online features (direction 8-way, "
          f"sign 2-way); mean +- std (per seed)")
    print("| run | direction | sign | collapse (online, raw) |")
    for name, results in table.items():
        print(_row(name, results))
    print(f"| random init x3 | {statistics.mean(r[0] for r in randoms):.1%} | "
          f"{statistics.mean(r[1] for r in randoms):.1%} | |")
    print(f"| frame-difference pixels | {pixels[0]:.1%} | {pixels[1]:.1%} | |")


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
    for r in real:  # no collapse on the online encoder's raw output
        assert r.collapse["std_min"] > 0.01 and r.collapse["rankme"] > 16, r.collapse
    for control in CONTROLS[objective]:
        assert separated(real, table[control]), (control, table[control], real)


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="these controls run in the full table: ALLIANCE_LEARNING=full (make reliability)")
@pytest.mark.xfail(reason="measured, 3 seeds: not clearly below the real run (see the module docstring)", strict=False)
@pytest.mark.parametrize("control", [c for cs in UNSEPARATED.values() for c in cs])
def test_frozen_teacher_and_shuffled_frames_learn_less(runs, control):
    real = runs(control.split()[0])
    assert separated(real, runs(control), "direction") or separated(real, runs(control), "sign")
