"""Frozen-encoder linear probe on the 8-direction synthetic task, against a random-init encoder and a pixel baseline."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from alliance.store import ObjectStore
from training.checkpoint import checkpoint_config, encoder_weights, load_checkpoint
from training.config import ModelConfig
from training.model import VideoEncoder, gather_tokens
from training.objectives import layer_normed
from training.synthetic import DIRECTIONS, labelled_set


@dataclass(frozen=True)
class ProbeResult:
    """Test accuracy of the same linear probe on the trained encoder, on random-init encoders of the same shape, and
    on frame-difference pixels; chance is 1/8."""

    checkpoint: str
    step: int
    accuracy: float
    random_init_accuracy: float  # the mean over `random_init_accuracies`
    pixel_baseline_accuracy: float
    chance: float
    n_train: int
    n_test: int
    pool: str
    random_init_accuracies: tuple[float, ...] = ()  # one per random initialization (they vary by 10-30 points)
    encoder: str = ""  # probe_checkpoint: which of the checkpoint's encoders, target (the EMA teacher) or context


@torch.no_grad()
def embed(encoder: torch.nn.Module, clips: np.ndarray, pool: str = "time", batch_size: int = 64) -> torch.Tensor:
    """Features of uint8 clips [N, T, S, S, 3]: `mean` over all tokens (the exported form), `time` (the mean over
    space of each tubelet, concatenated in time order: the default, see `probe_encoder`) or `tokens` (every token,
    in (t, h, w) order)."""
    encoder.eval()
    grid_t = encoder.cfg.grid[0]
    out = []
    for i in range(0, len(clips), batch_size):
        tokens = encoder(_as_input(clips[i:i + batch_size]))
        if pool == "mean":
            out.append(tokens.mean(1))
        elif pool == "tokens":
            out.append(tokens.flatten(1))
        else:
            out.append(tokens.reshape(tokens.shape[0], grid_t, -1, tokens.shape[-1]).mean(2).flatten(1))
    return torch.cat(out)


@torch.no_grad()
def prediction_spread(encoder: VideoEncoder, predictor: torch.nn.Module, target_encoder: VideoEncoder,
                      clips: np.ndarray, context: torch.Tensor, target: torch.Tensor) -> float:
    """How much the predictor's output differs between clips at one target position, over how much its targets
    (the target encoder's layer-normed features) do. Near 0: the predictor ignores its context and predicts each
    position's mean; a predictor that tracks what happens in each clip comes near 1. `context`/`target`: token
    indices [K] shared by every clip."""
    x = _as_input(clips)
    predicted = _predictions(encoder, predictor, x, context, target)
    targets = _targets(target_encoder, x, target)
    return float(predicted.var(0).mean() / targets.var(0).mean().clamp_min(1e-12))


@torch.no_grad()
def context_order_sensitivity(encoder: VideoEncoder, predictor: torch.nn.Module, target_encoder: VideoEncoder,
                              clips: np.ndarray, context: torch.Tensor, target: torch.Tensor) -> float:
    """How much worse the predictor predicts the rest of each clip when its context (the first tubelets: a `future`
    mask) is shown in reverse frame order: the relative rise of its L1 against the target encoder's layer-normed
    features of the true clip. Near 0: the prediction does not depend on the order of the past (a predictor that
    ignores its context, or one trained on frames shuffled in time); a predictor that learned how things move on
    gets clearly worse."""
    _, h, w = encoder.cfg.grid
    tokens = context.reshape(-1)
    if tokens.numel() % (h * w) or not torch.equal(tokens, torch.arange(tokens.numel())):
        raise ValueError("context_order_sensitivity takes a `future` context: every token of the first tubelets")
    frames = tokens.numel() // (h * w) * encoder.cfg.tubelet
    backwards = clips.copy()
    backwards[:, :frames] = clips[:, frames - 1::-1]
    x = _as_input(clips)
    targets = _targets(target_encoder, x, target)
    loss = (_predictions(encoder, predictor, x, context, target) - targets).abs().mean()
    backwards_loss = (_predictions(encoder, predictor, _as_input(backwards), context, target) - targets).abs().mean()
    return float((backwards_loss - loss) / loss.clamp_min(1e-12))


def _as_input(clips: np.ndarray) -> torch.Tensor:
    """uint8 clips [N, T, S, S, 3] as the encoder's float input [N, 3, T, S, S] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(clips)).permute(0, 4, 1, 2, 3).float().div_(255.0)


def _predictions(encoder: VideoEncoder, predictor: torch.nn.Module, x: torch.Tensor, context: torch.Tensor,
                 target: torch.Tensor) -> torch.Tensor:
    """The predictor's output at the target tokens from the context tokens (indices [K] shared by every clip)."""
    encoder.eval()
    predictor.eval()
    ctx, tgt = context.expand(len(x), -1), target.expand(len(x), -1)
    return predictor(encoder(x, ctx), ctx, tgt, 0)


def _targets(target_encoder: VideoEncoder, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The target encoder's layer-normed features at the target tokens."""
    target_encoder.eval()
    return gather_tokens(layer_normed(target_encoder(x)), target.expand(len(x), -1))


def pixel_features(clips: np.ndarray, cells: int = 8) -> torch.Tensor:
    """The frame-difference baseline: signed differences of consecutive grey frames, averaged to cells x cells."""
    grey = clips.astype(np.float32).mean(-1) / 255.0  # [N, T, S, S]
    n, t, s, _ = grey.shape
    small = grey.reshape(n, t, cells, s // cells, cells, s // cells).mean((3, 5))
    return torch.from_numpy(np.diff(small, axis=1).reshape(n, -1))


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 l2: float = 1e-3, iterations: int = 200) -> float:
    """Multinomial logistic regression (standardized features, L2, full-batch L-BFGS); test accuracy."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    layer = torch.nn.Linear(a.shape[1], DIRECTIONS)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=0.5, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(a), train_y) + l2 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return float((layer(b).argmax(1) == test_y).float().mean())


def probe_encoder(encoder: VideoEncoder, model: ModelConfig, *, n_train: int = 512, n_test: int = 256,
                  seed: int = 0, pool: str = "time", checkpoint: str = "", step: int = 0,
                  random_inits: int = 3) -> ProbeResult:
    """Probe `encoder` and `random_inits` random-init encoders of the same shape (torch seeds seed * 1000 + i: with
    seed 0 the first is the very network a run with run.seed=0 starts from) on fresh synthetic clips.

    The default `time` pool averages each tubelet's tokens over space, so the probe cannot read the object's place
    per token off a random projection of the pixels (with `tokens`, a random encoder reads direction almost as
    well as a trained one): what is left is what the encoder itself made of the motion.
    """
    train_clips, train_y = labelled_set(n_train, seed=seed * 2 + 1, frames=model.frames, size=model.size)
    test_clips, test_y = labelled_set(n_test, seed=seed * 2 + 2, frames=model.frames, size=model.size)
    train_y, test_y = torch.from_numpy(train_y), torch.from_numpy(test_y)

    def score(features_of) -> float:
        return linear_probe(features_of(train_clips), train_y, features_of(test_clips), test_y)

    randoms = []
    for i in range(max(1, random_inits)):
        torch.manual_seed(seed * 1000 + i)
        random_encoder = VideoEncoder(model)
        randoms.append(score(lambda c: embed(random_encoder, c, pool)))
    return ProbeResult(
        checkpoint=checkpoint, step=step,
        accuracy=score(lambda c: embed(encoder, c, pool)),
        random_init_accuracy=sum(randoms) / len(randoms),
        pixel_baseline_accuracy=score(pixel_features),
        chance=1.0 / DIRECTIONS, n_train=n_train, n_test=n_test, pool=pool,
        random_init_accuracies=tuple(randoms))


def probe_checkpoint(store: ObjectStore, checkpoint_key: str, *, n_train: int = 512, n_test: int = 256,
                     seed: int = 0, pool: str = "time", random_inits: int = 3, which: str = "target") -> ProbeResult:
    """Probe one encoder of a checkpoint: by default the one `export` writes (the EMA target encoder, or the context
    encoder of a run without a teacher)."""
    payload = load_checkpoint(store, checkpoint_key)
    cfg = checkpoint_config(payload)
    encoder = VideoEncoder(cfg.model)
    weights, chosen = encoder_weights(payload, which)
    encoder.load_state_dict(weights)
    result = probe_encoder(encoder, cfg.model, n_train=n_train, n_test=n_test, seed=seed, pool=pool,
                           checkpoint=checkpoint_key, step=int(payload["step"]), random_inits=random_inits)
    return replace(result, encoder=chosen)
