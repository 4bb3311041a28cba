"""Embeddings as a Beam stage: RunInference with a PyTorch handler that loads the exported TorchScript encoder."""

from __future__ import annotations

import tempfile
from pathlib import Path

import apache_beam as beam
import numpy as np
import torch
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor

from alliance.settings import Settings, StoreAddress
from alliance.store import LocalStore, validate_key
from curation.embed import EncoderSpec, fetch_encoder


class StoreTorchScriptHandler(PytorchModelHandlerTensor):
    """Loads checkpoints/{run}/encoder.pt from the Alliance store (any backend) once per worker, then Beam's
    PyTorch handler does the batching and the forward pass, on CUDA when present."""

    def __init__(self, settings: Settings | StoreAddress, spec: EncoderSpec, *, min_batch_size: int = 1,
                 max_batch_size: int = 16, device: str | None = None):
        # no I/O here: the handler is built where the job is launched and pickled to the workers, where load_model
        # opens the store (with the worker's own credentials) and finds the model
        super().__init__(torch_script_model_path=spec.model_key, device=device or "CPU",
                         min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._pick_device = device is None
        self._store_address = StoreAddress.of(settings)
        self._spec = spec

    def local_model_path(self) -> Path:
        """The TorchScript file on this machine: in place in a file:// store, else a cached copy fetched once."""
        store = self._store_address.open()
        if isinstance(store, LocalStore):
            return store.root / validate_key(self._spec.model_key)
        return fetch_encoder(store, self._spec.model_key, Path(tempfile.gettempdir()) / "alliance-encoders")

    def load_model(self) -> torch.nn.Module:
        if self._pick_device:  # decided where the model runs (a worker), not where the job was launched
            self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._torch_script_model_path = str(self.local_model_path())
        return super().load_model()


def _to_tensor(item: tuple[str, np.ndarray]) -> tuple[str, torch.Tensor]:
    clip_id, array = item
    return clip_id, torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _to_vector(item) -> tuple[str, list[float]]:
    clip_id, result = item
    return clip_id, result.inference.detach().float().cpu().numpy().astype(np.float32).tolist()


class EmbedClips(beam.PTransform):
    """(clip id, float32 [3, T, S, S]) -> (clip id, [D] embedding)."""

    def __init__(self, settings: Settings | StoreAddress, spec: EncoderSpec, max_batch_size: int = 16):
        super().__init__()
        self.handler = KeyedModelHandler(StoreTorchScriptHandler(settings, spec, max_batch_size=max_batch_size))

    def expand(self, tensors):
        return (tensors
                | "ToTorch" >> beam.Map(_to_tensor)
                | "RunInference" >> RunInference(self.handler)
                | "ToVector" >> beam.Map(_to_vector))
