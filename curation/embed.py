"""The clip encoder behind one interface: the exported TorchScript JEPA encoder (torch is imported lazily)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from alliance.errors import AllianceError, KeyNotFound
from alliance.store import ObjectStore
from curation.media import resize_area, sample_indices


class EncoderError(AllianceError):
    """An exported encoder that is missing or does not follow the contract (checkpoints/{run}/encoder.json)."""


@dataclass(frozen=True)
class EncoderSpec:
    """What checkpoints/{run}/encoder.json promises: input frames T and size S, output width D."""

    run: str
    frames: int
    size: int
    embed_dim: int
    model_key: str
    dataset: str = ""
    step: int = 0

    @property
    def name(self) -> str:
        return f"{self.run} ({self.dataset or 'unknown dataset'}, step {self.step})"


def load_encoder_spec(store: ObjectStore, run: str) -> EncoderSpec:
    """The encoder exported by training run `run`; refuses one without encoder.pt or with a malformed json."""
    meta_key, model_key = f"checkpoints/{run}/encoder.json", f"checkpoints/{run}/encoder.pt"
    try:
        meta = json.loads(store.get_bytes(meta_key))
    except KeyNotFound as e:
        raise EncoderError(f"{store.describe(meta_key)}: no exported encoder for run {run!r}; export one from "
                           f"training (checkpoints/{{run}}/encoder.pt + encoder.json) or curate without "
                           f"--encoder") from e
    except json.JSONDecodeError as e:
        raise EncoderError(f"{store.describe(meta_key)}: not JSON ({e}); re-export the encoder") from e
    missing = [k for k in ("frames", "size", "embed_dim") if not isinstance(meta.get(k), int) or meta[k] <= 0]
    if missing:
        raise EncoderError(f"{store.describe(meta_key)}: {', '.join(missing)} must be positive integers; "
                           f"re-export the encoder")
    if not store.exists(model_key):
        raise EncoderError(f"{store.describe(model_key)}: encoder.json is there but the TorchScript file is not; "
                           f"re-export the encoder")
    return EncoderSpec(run, int(meta["frames"]), int(meta["size"]), int(meta["embed_dim"]), model_key,
                       str(meta.get("dataset", "")), int(meta.get("step", 0)))


def clip_tensor(frames: np.ndarray, spec: EncoderSpec) -> np.ndarray:
    """float32 [3, T, S, S] in [0, 1]: T frames spread over the clip, short side resized to S, centre crop."""
    picks = sample_indices(np.arange(len(frames)), spec.frames)
    picks = np.resize(picks, spec.frames) if len(picks) < spec.frames else picks  # short clips repeat frames
    h, w = frames.shape[1:3]
    scale = spec.size / min(h, w)
    rh, rw = max(spec.size, int(round(h * scale))), max(spec.size, int(round(w * scale)))
    y0, x0 = (rh - spec.size) // 2, (rw - spec.size) // 2
    out = np.empty((spec.frames, spec.size, spec.size, 3), np.float32)
    for t, index in enumerate(sorted(picks)):
        out[t] = resize_area(frames[index], rh, rw)[y0:y0 + spec.size, x0:x0 + spec.size]
    return np.ascontiguousarray(out.transpose(3, 0, 1, 2) / 255.0)


def fetch_encoder(store: ObjectStore, key: str, cache_dir: str | Path | None = None) -> Path:
    """A local copy of the TorchScript file (cached by key and size), for torch.jit.load."""
    cache = Path(cache_dir or os.environ.get("ALLIANCE_CACHE", Path.home() / ".cache" / "alliance" / "encoders"))
    name = hashlib.sha256(f"{store.url}/{key}:{store.size(key)}".encode()).hexdigest()[:24]
    path = cache / f"{name}.pt"
    if not path.exists():
        store.get_file(key, path)
    return path


def torch_device() -> str:
    """"GPU" when CUDA is usable, else "CPU" (the spelling Beam's PyTorch handlers take)."""
    import torch

    return "GPU" if torch.cuda.is_available() else "CPU"


class ClipEncoder:
    """The TorchScript encoder loaded once, on CUDA when present; embeds [B, 3, T, S, S] batches."""

    def __init__(self, path: str | Path, device: str | None = None):
        import torch

        self.torch = torch
        self.device = torch.device("cuda" if (device or torch_device()) == "GPU" else "cpu")
        self.model = torch.jit.load(str(path), map_location=self.device).eval()

    def embed(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.model(self.torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device))
        return out.float().cpu().numpy()

    def embed_all(self, tensors: Iterable[np.ndarray], batch_size: int = 8) -> np.ndarray:
        rows: list[np.ndarray] = []
        batch: list[np.ndarray] = []
        for tensor in tensors:
            batch.append(tensor)
            if len(batch) == batch_size:
                rows.append(self.embed(np.stack(batch)))
                batch = []
        if batch:
            rows.append(self.embed(np.stack(batch)))
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def write_tiny_encoder(store: ObjectStore, run: str, *, frames: int = 4, size: int = 32, embed_dim: int = 16,
                       seed: int = 0) -> EncoderSpec:
    """Export a tiny random TorchScript encoder that follows the training contract (for tests, benchmarks and
    smoke runs before a JEPA encoder exists): tubelets 2x8x8, a linear patch embedding, mean-pooled tokens."""
    import io

    import torch

    torch.manual_seed(seed)

    class TinyEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = torch.nn.Conv3d(3, 32, kernel_size=(2, 8, 8), stride=(2, 8, 8))
            self.head = torch.nn.Linear(32, embed_dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = torch.nn.functional.gelu(self.patch(x)).flatten(2).transpose(1, 2)
            return self.head(tokens).mean(dim=1)

    module = torch.jit.script(TinyEncoder().eval())
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    store.put_bytes(f"checkpoints/{run}/encoder.pt", buffer.getvalue())
    meta: dict[str, Any] = {"frames": frames, "size": size, "embed_dim": embed_dim,
                            "input": f"float32 [B, 3, {frames}, {size}, {size}] in [0, 1]",
                            "output": f"float32 [B, {embed_dim}] mean-pooled tokens", "dataset": "tiny-random@v0",
                            "step": 0}
    store.put_bytes(f"checkpoints/{run}/encoder.json", json.dumps(meta, indent=1).encode())
    return load_encoder_spec(store, run)
