"""Embeddings as a Beam stage: RunInference with a PyTorch handler that loads the exported TorchScript encoder."""

from __future__ import annotations

import tempfile
from pathlib import Path

import apache_beam as beam
import numpy as np
import torch
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor

from alliance.settings import Settings
from alliance.store import LocalStore, open_store
from curation.embed import EncoderSpec, fetch_encoder


class StoreTorchScriptHandler(PytorchModelHandlerTensor):
    """Loads checkpoints/{run}/encoder.pt from the Alliance store (any backend) once per worker, then Beam's
    PyTorch handler does the batching and the forward pass, on CUDA when present."""

    def __init__(self, settings: Settings, spec: EncoderSpec, *, min_batch_size: int = 1, max_batch_size: int = 16,
                 device: str | None = None):
        store = open_store(settings=settings)
        local = store.root / spec.model_key if isinstance(store, LocalStore) else None
        super().__init__(torch_script_model_path=str(local or spec.model_key), device=device or "CPU",
                         min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._pick_device = device is None
        self._settings = settings
        self._spec = spec
        self._local = local is not None

    def load_model(self) -> torch.nn.Module:
        if self._pick_device:  # decided where the model runs (a worker), not where the job was launched
            self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if not self._local:
            cache = Path(tempfile.gettempdir()) / "alliance-encoders"
            self._torch_script_model_path = str(fetch_encoder(open_store(settings=self._settings),
                                                              self._spec.model_key, cache))
            self._local = True
        return super().load_model()


def _to_tensor(item: tuple[str, np.ndarray]) -> tuple[str, torch.Tensor]:
    clip_id, array = item
    return clip_id, torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _to_vector(item) -> tuple[str, list[float]]:
    clip_id, result = item
    return clip_id, result.inference.detach().float().cpu().numpy().astype(np.float32).tolist()


class EmbedClips(beam.PTransform):
    """(clip id, float32 [3, T, S, S]) -> (clip id, [D] embedding)."""

    def __init__(self, settings: Settings, spec: EncoderSpec, max_batch_size: int = 16):
        super().__init__()
        self.handler = KeyedModelHandler(StoreTorchScriptHandler(settings, spec, max_batch_size=max_batch_size))

    def expand(self, tensors):
        return (tensors
                | "ToTorch" >> beam.Map(_to_tensor)
                | "RunInference" >> RunInference(self.handler)
                | "ToVector" >> beam.Map(_to_vector))
