"""Checkpoints and the run record in the store: checkpoints/{run}/step-{k}.pt, run.json and config.json."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from alliance.errors import AllianceError, KeyNotFound
from alliance.store import ObjectStore
from training.config import TrainConfig, from_dict


class CheckpointError(AllianceError):
    """A checkpoint or run record that is missing, unreadable, or from another run."""


def run_prefix(run: str) -> str:
    return f"checkpoints/{run}"


def checkpoint_key(run: str, step: int) -> str:
    return f"{run_prefix(run)}/step-{step}.pt"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RunRecord:
    """checkpoints/{run}/run.json: what a run consumed and wrote (read by sharding's ledger and redaction)."""

    run: str
    dataset: str
    version: int
    config: dict[str, Any]
    checkpoints: list[str] = field(default_factory=list)
    started_at: str = ""
    finished_at: str | None = None
    steps: int = 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()


def read_run(store: ObjectStore, run: str) -> RunRecord | None:
    try:
        data = json.loads(store.get_bytes(f"{run_prefix(run)}/run.json"))
    except KeyNotFound:
        return None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{store.describe(run_prefix(run) + '/run.json')}: not valid JSON ({e}); delete it to "
                              f"start the run over") from e
    known = RunRecord.__dataclass_fields__
    return RunRecord(**{k: v for k, v in data.items() if k in known})


def write_run(store: ObjectStore, record: RunRecord) -> None:
    store.put_bytes(f"{run_prefix(record.run)}/run.json", record.to_json())


def save_checkpoint(store: ObjectStore, key: str, payload: dict[str, Any]) -> int:
    """torch.save into the store through a streaming writer; the object appears only when complete."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    buffer.seek(0)
    return store.put_stream(key, buffer)


def load_checkpoint(store: ObjectStore, key: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's payload; it holds only tensors, numbers, strings and numpy RNG state."""
    try:
        data = store.get_bytes(key)
    except KeyNotFound as e:
        raise CheckpointError(f"{store.describe(key)}: no such checkpoint; `alliance store ls checkpoints/` lists "
                              f"them, and checkpoints/RUN/run.json names each run's checkpoints") from e
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{store.describe(key)}: not a readable torch checkpoint ({e})") from e
    if not isinstance(payload, dict) or "encoder" not in payload or "config" not in payload:
        raise CheckpointError(f"{store.describe(key)}: not an Alliance training checkpoint (no encoder/config)")
    return payload


ENCODERS = ("target", "context")


def encoder_weights(payload: dict[str, Any], which: str = "target") -> tuple[dict[str, Any], str]:
    """(state dict, which) of the encoder a checkpoint ships: by default the EMA target encoder, the one V-JEPA's
    evaluations load (checkpoint_key='target_encoder'); the context encoder when asked, or when the run has no
    teacher (SIGReg)."""
    if which not in ENCODERS:
        raise CheckpointError(f"encoder {which!r}: use one of {', '.join(ENCODERS)}")
    if which == "target" and payload.get("target_encoder") is not None:
        return payload["target_encoder"], "target"
    return payload["encoder"], "context"


def checkpoint_config(payload: dict[str, Any]) -> TrainConfig:
    return from_dict(payload["config"])


def resolve_checkpoint(store: ObjectStore, ref: str) -> str:
    """A checkpoint key from a key (`checkpoints/RUN/step-K.pt`), a run's prefix, or a run id (its latest)."""
    if ref.endswith(".pt"):
        return ref
    run = ref.removeprefix("checkpoints/").strip("/")
    record = read_run(store, run)
    if record is None or not record.checkpoints:
        raise CheckpointError(f"{ref}: no run.json with checkpoints at {store.describe(run_prefix(run))}/; pass a "
                              f"checkpoint key like checkpoints/RUN/step-K.pt")
    return record.checkpoints[-1]
