"""Export a checkpoint's encoder (by default the EMA target) as TorchScript + encoder.json for curation's embedding."""

from __future__ import annotations

import io
import json

import torch
from torch import nn

from alliance.store import ObjectStore
from training.checkpoint import checkpoint_config, encoder_weights, load_checkpoint, run_prefix
from training.model import VideoEncoder


class PooledEncoder(nn.Module):
    """float32 [B, 3, T, S, S] in [0, 1] -> float32 [B, D], the mean of the encoder's output tokens."""

    def __init__(self, encoder: VideoEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.encoder(clip).mean(dim=1).float()


def scripted_encoder(encoder: VideoEncoder) -> torch.jit.ScriptModule:
    """Traced on one example clip; batch size stays free (checked by the tests with other sizes)."""
    cfg = encoder.cfg
    module = PooledEncoder(encoder).eval()
    example = torch.rand(2, 3, cfg.frames, cfg.size, cfg.size)
    with torch.no_grad():
        return torch.jit.trace(module, example, check_inputs=[(torch.rand(3, 3, cfg.frames, cfg.size, cfg.size),)])


def export_encoder(store: ObjectStore, checkpoint_key: str, which: str = "target") -> str:
    """Write checkpoints/{run}/encoder.pt and encoder.json next to the checkpoint; returns the encoder key.

    `which`: the EMA target encoder (V-JEPA's choice; a SIGReg run has only the context encoder) or the context
    encoder; encoder.json says which. Re-exporting the same checkpoint rewrites the same two objects alike.
    """
    payload = load_checkpoint(store, checkpoint_key)
    cfg = checkpoint_config(payload)
    encoder = VideoEncoder(cfg.model)
    weights, chosen = encoder_weights(payload, which)
    encoder.load_state_dict(weights)
    scripted = scripted_encoder(encoder.eval())
    prefix = run_prefix(str(payload["run"]))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    key = f"{prefix}/encoder.pt"
    store.put_stream(key, buffer)
    contract = {
        "frames": cfg.model.frames, "size": cfg.model.size, "embed_dim": cfg.model.embed_dim,
        "input": "float32 [B, 3, T, S, S] in [0, 1]", "output": "float32 [B, D] mean-pooled tokens",
        "dataset": f"{payload['dataset']}@v{payload['version']}", "step": int(payload["step"]), "encoder": chosen,
    }
    store.put_bytes(f"{prefix}/encoder.json", json.dumps(contract, indent=2).encode())
    return key
