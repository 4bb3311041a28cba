"""One frozen, nested training configuration (model, masks, objective, optimizer, data, run) with presets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from alliance.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class ModelConfig:
    """The video ViT (context and target encoder) and the narrow predictor, as in V-JEPA."""

    frames: int = 16
    size: int = 32
    tubelet: int = 2
    patch: int = 8
    embed_dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    pred_dim: int = 48
    pred_depth: int = 2
    pred_heads: int = 4
    checkpoint_activations: bool = False  # recompute each block in backward: less memory, about 1/3 more compute
    # Linear weights: 0 keeps V-JEPA's fixed std 0.02; > 0 draws std = init_gain / sqrt(fan_in), the same gain at any
    # width (0.64 is what 0.02 gives at ViT-L's 1024). At the tiny preset's widths (48, 64) std 0.02 passes the
    # context to the predictor's output at ~1e-4 of its amplitude (docs/training.md, "Initialisation at small width")
    init_gain: float = 0.0

    @property
    def grid(self) -> tuple[int, int, int]:
        """Tokens along (time, height, width)."""
        return self.frames // self.tubelet, self.size // self.patch, self.size // self.patch

    @property
    def tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w


@dataclass(frozen=True)
class MaskSetConfig:
    """One V-JEPA mask set: `num_blocks` spatial blocks, each repeated over a temporal span, unioned into the target."""

    num_blocks: int = 8
    spatial_scale: tuple[float, float] = (0.15, 0.15)
    temporal_scale: tuple[float, float] = (1.0, 1.0)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)


@dataclass(frozen=True)
class MaskConfig:
    """Multiblock 3D masking (short-range + long-range sets) or `future` (context = the first tubelets)."""

    kind: str = "multiblock"  # multiblock | future
    sets: tuple[MaskSetConfig, ...] = (
        MaskSetConfig(num_blocks=8, spatial_scale=(0.15, 0.15)),
        MaskSetConfig(num_blocks=2, spatial_scale=(0.7, 0.7)),
    )
    future_context: float = 0.5  # `future`: fraction of tubelets the context sees


@dataclass(frozen=True)
class ObjectiveConfig:
    """`ema_l1` (V-JEPA), `sigreg` (LeJEPA: no teacher, SIGReg on per-clip embeddings) or `action` (V-JEPA 2-AC:
    an IMU-conditioned, block-causal next-step predictor, teacher-forcing + rollout L1 against the EMA teacher).

    `encoder_from` starts the encoder (and the target encoder) from another run's checkpoint, a key in the same store
    (its target encoder, the one V-JEPA exports). `freeze_encoder` (`action` only) trains the predictor alone on that
    fixed encoder, which is then its own target, as V-JEPA 2-AC trains on a frozen V-JEPA 2 encoder."""

    kind: str = "ema_l1"
    ema_start: float = 0.998
    ema_end: float = 1.0
    sigreg_lambda: float = 0.05
    sigreg_slices: int = 256
    sigreg_points: int = 17
    sigreg_tmax: float = 3.0
    sigreg_projector: tuple[int, ...] = ()  # LeJEPA's head: widths of an MLP (BatchNorm, GELU) on pooled embeddings
    sigreg_stop_grad: bool = False  # `sigreg`: no gradient through the per-token targets (docs/training.md)
    action_dim: int = 12  # per tubelet: mean and change of each of 6 IMU channels
    action_stream: str = "imu"
    rollout_steps: int = 2  # `action`: autoregressive steps of the rollout loss, as in V-JEPA 2-AC
    encoder_from: str = ""  # a checkpoint key (checkpoints/RUN/step-K.pt) or a run id (its latest): its target encoder
    freeze_encoder: bool = False  # `action`: only the predictor learns; the fixed encoder gives the targets


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then cosine for lr, cosine for weight decay, gradient clipping."""

    lr_start: float = 2e-4
    lr_peak: float = 1e-3
    lr_final: float = 1e-5
    warmup_steps: int = 30
    wd_start: float = 0.04
    wd_end: float = 0.4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0


@dataclass(frozen=True)
class DataConfig:
    """Where clips come from (`shards` via sharding's ShardReader, or the built-in `synthetic` task) and how many."""

    source: str = "shards"  # shards | synthetic
    batch_size: int = 16
    workers: int = 2  # loader processes, each owning its own reader
    prefetch: int = 4  # batches queued per worker
    shuffle_buffer: int = 64
    hflip: bool = False  # a flipped clip's IMU is mirrored too (ax, gy, gz change sign)
    imu_channels: int = 6
    shuffle_time: bool = False  # negative control only: each clip's frames (and IMU) in a random order
    synthetic_world: str = "square"  # `synthetic` source: square (moving object) | panning (moving camera)


@dataclass(frozen=True)
class RunConfig:
    """How long, how often to log and checkpoint, which seed, and which device features to use."""

    name: str = ""  # empty: derived from dataset, version and config
    steps: int = 300
    log_every: int = 25
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = True  # only on CUDA
    bf16: bool = True  # only on CUDA
    keep_checkpoints: int = 3


@dataclass(frozen=True)
class TrainConfig:
    """The whole configuration of a training run; saved next to every checkpoint."""

    model: ModelConfig = ModelConfig()
    mask: MaskConfig = MaskConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    run: RunConfig = RunConfig()
    preset: str = "tiny_cpu"

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def digest(self) -> str:
        """A content hash of everything but the run's name and length, for content-derived run ids."""
        data = self.to_dict()
        data["run"] = {k: v for k, v in data["run"].items() if k not in ("name", "steps", "log_every",
                                                                           "checkpoint_every", "keep_checkpoints")}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def validate(self) -> "TrainConfig":
        m = self.model
        if m.frames % m.tubelet or m.size % m.patch:
            raise ConfigError(f"model: frames ({m.frames}) must divide by tubelet ({m.tubelet}) and size ({m.size}) "
                              f"by patch ({m.patch})")
        if m.init_gain < 0:
            raise ConfigError(f"model.init_gain {m.init_gain}: use 0 (V-JEPA's std 0.02) or a positive gain")
        if m.embed_dim % m.heads or m.pred_dim % m.pred_heads:
            raise ConfigError(f"model: embed_dim {m.embed_dim} / pred_dim {m.pred_dim} must divide by their heads")
        if self.objective.kind not in ("ema_l1", "sigreg", "action"):
            raise ConfigError(f"objective.kind {self.objective.kind!r}: use ema_l1, sigreg or action")
        if self.objective.freeze_encoder and self.objective.kind != "action":
            raise ConfigError(f"objective.freeze_encoder is for the action objective (V-JEPA 2-AC's predictor on a "
                              f"fixed encoder); {self.objective.kind} with a frozen encoder would train only its "
                              f"predictor")
        if self.mask.kind not in ("multiblock", "future"):
            raise ConfigError(f"mask.kind {self.mask.kind!r}: use multiblock or future")
        self._validate_masks()
        if self.data.source not in ("shards", "synthetic"):
            raise ConfigError(f"data.source {self.data.source!r}: use shards or synthetic")
        from training.synthetic import DIRECTIONAL_WORLDS  # synthetic builds on nothing of this module

        if self.data.synthetic_world not in DIRECTIONAL_WORLDS:
            raise ConfigError(f"data.synthetic_world {self.data.synthetic_world!r}: use "
                              f"{' or '.join(DIRECTIONAL_WORLDS)} (the action objective always trains on the turning "
                              f"camera)")
        if self.data.batch_size < 1 or self.run.steps < 1:
            raise ConfigError("data.batch_size and run.steps must be at least 1")
        return self

    def _validate_masks(self) -> None:
        from training.masks import covers_the_grid  # masks builds on this module

        grid = self.model.grid
        if self.mask.kind == "future":
            if grid[0] < 2 or not 0.0 < self.mask.future_context < 1.0:
                raise ConfigError(f"mask.future_context {self.mask.future_context} on {grid[0]} tubelets: a future "
                                  f"mask needs at least 2 tubelets and a context share strictly between 0 and 1")
            return
        if not self.mask.sets:
            raise ConfigError("mask.sets is empty: a multiblock mask needs at least one set")
        for i, s in enumerate(self.mask.sets):
            ranges = {"spatial_scale": s.spatial_scale, "temporal_scale": s.temporal_scale}
            for name, (lo, hi) in ranges.items():
                if not 0.0 < lo <= hi <= 1.0:
                    raise ConfigError(f"mask.sets[{i}].{name} {[lo, hi]}: use 0 < low <= high <= 1")
            if not 0.0 < s.aspect_ratio[0] <= s.aspect_ratio[1] or s.num_blocks < 1:
                raise ConfigError(f"mask.sets[{i}]: aspect_ratio {list(s.aspect_ratio)} must be 0 < low <= high and "
                                  f"num_blocks ({s.num_blocks}) at least 1")
            if covers_the_grid(grid, s):
                raise ConfigError(f"mask.sets[{i}] masks the whole {grid} token grid with every block it can draw, "
                                  f"leaving no context to predict from: lower its spatial_scale or temporal_scale")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _vit(name: str, embed_dim: int, depth: int, heads: int) -> TrainConfig:
    """V-JEPA's GPU recipe: 16 x 224 px clips in 2x16x16 tubelets, predictor 12 deep and 384 wide, batch 24 a GPU."""
    return TrainConfig(
        model=ModelConfig(frames=16, size=224, tubelet=2, patch=16, embed_dim=embed_dim, depth=depth, heads=heads,
                          pred_dim=384, pred_depth=12, pred_heads=12),
        optim=OptimConfig(lr_start=2e-4, lr_peak=6.25e-4, lr_final=1e-6, warmup_steps=12000),
        data=DataConfig(batch_size=24, workers=8, shuffle_buffer=1000, hflip=True),
        run=RunConfig(steps=90000, log_every=50, checkpoint_every=1000),
        preset=name,
    )


PRESETS: dict[str, TrainConfig] = {
    "tiny_cpu": TrainConfig(),
    "vit_l": _vit("vit_l", 1024, 24, 16),
    "vit_h": _vit("vit_h", 1280, 32, 16),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown training preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def with_overrides(base: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """`base` with nested overrides applied, e.g. {"run": {"steps": 10}} or {"run.steps": 10}; unknown keys fail."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        target = nested
        *head, last = key.split(".")
        for part in head:
            target = target.setdefault(part, {})
        if isinstance(value, Mapping) and isinstance(target.get(last), dict):
            target[last].update(value)
        else:
            target[last] = value
    return _apply(base, nested, "config").validate()


def _apply(obj: Any, changes: Mapping[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(obj)}
    updates: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in known:
            raise ConfigError(f"{where}: unknown setting {name!r}; known: {', '.join(sorted(known))}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            updates[name] = _apply(current, value, f"{where}.{name}")
        elif name == "sets" and isinstance(value, (list, tuple)):
            updates[name] = tuple(v if isinstance(v, MaskSetConfig) else _apply(MaskSetConfig(), v, f"{where}.sets")
                                  for v in value)
        elif isinstance(current, tuple) and isinstance(value, (list, tuple)):
            updates[name] = tuple(value)
        else:
            updates[name] = _coerce(current, value, f"{where}.{name}")
    return dataclasses.replace(obj, **updates)


def _coerce(current: Any, value: Any, where: str) -> Any:
    if isinstance(current, bool):
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    try:
        return type(current)(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: expected {type(current).__name__}, got {value!r}") from e


def from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a config from `to_dict()` output (a checkpoint's or run.json's), starting from its preset."""
    data = dict(data)
    base = preset(str(data.pop("preset", "tiny_cpu")))
    return with_overrides(base, data)


def load_config(path: str | Path | None = None, *, preset_name: str | None = None,
                overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """A preset (the file's `preset` key, else `preset_name`, else tiny_cpu), the TOML/JSON file, then overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: training config not found") from e
        try:
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from e
    name = str(data.pop("preset", None) or preset_name or "tiny_cpu")
    config = with_overrides(preset(name), data)
    if overrides:
        config = with_overrides(config, overrides)
    return dataclasses.replace(config, preset=name)

