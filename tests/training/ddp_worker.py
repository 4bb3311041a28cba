"""One rank of the two-process DDP test (gloo on CPU): three DDP steps, then a short `train` run; prints JSON."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from alliance.store import LocalStore
from tests.training.conftest import small_config
from training.data import ClipLoader, reader_factory
from training.loop import build, jepa_step, prepare, train
from training.masks import MaskGenerator


def main(store_root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = small_config(**{"run.steps": 2, "run.checkpoint_every": 2})
    device = torch.device("cpu")
    torch.manual_seed(cfg.run.seed)  # every rank builds the same initial model, as train() does
    masker = MaskGenerator(cfg.mask, cfg.model, seed=rank)
    model, teacher, optimizer = build(cfg, device, masker.num_sets)
    initial = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    parts = prepare(model, teacher, optimizer, cfg, device, world_size=world)
    loader = ClipLoader(reader_factory(cfg, rank=rank, world_size=world), cfg)
    batches, keys = iter(loader), []
    for step in range(3):
        batch = next(batches).batch
        keys.extend(batch.keys)
        jepa_step(parts, batch.clip(device), batch.actions, masker(batch.frames.shape[0], step), step)
    loader.close()
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    teacher_params = torch.cat([p.detach().flatten() for p in teacher.parameters()])
    summary = train(LocalStore(store_root), "synthetic", 0, cfg, echo=lambda _: None)
    print(json.dumps({"rank": rank, "world": world, "keys": keys, "params": params.double().sum().item(),
                      "params_abs": params.double().abs().sum().item(), "teacher": teacher_params.double().sum().item(),
                      "moved": (params - initial).abs().max().item(), "losses": list(summary.losses),
                      "checkpoint": summary.checkpoint_key}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
