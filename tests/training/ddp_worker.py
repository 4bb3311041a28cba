"""One rank of the two-process DDP test (gloo on CPU): three DDP steps, a short `train` run, and SIGReg over both
ranks' samples against one process holding them all; prints JSON."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from alliance.store import LocalStore
from tests.training.conftest import small_config
from training.data import ClipLoader, reader_factory
from training.loop import train
from training.masks import MaskGenerator
from training.objectives import sigreg
from training.step import build, jepa_step, prepare


def sigreg_across_ranks(rank: int, world: int) -> dict[str, float]:
    """A projector under DDP, each rank with its half of 16 samples, against the same projector and all 16 samples
    in one process: the SIGReg value and the averaged gradient must be the single process's."""
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(7)
    samples, projector = torch.randn(16, 12) * 1.5 + 0.3, torch.nn.Linear(12, 8)
    single = torch.nn.Linear(12, 8)
    single.load_state_dict(projector.state_dict())
    whole = sigreg(single(samples), 32, torch.Generator().manual_seed(3), across_ranks=False)
    whole.backward()
    ddp = DistributedDataParallel(projector)
    mine = samples.chunk(world)[rank]
    spread = sigreg(ddp(mine), 32, torch.Generator().manual_seed(3))  # across ranks: torch.distributed runs
    spread.backward()
    return {"sigreg_single": whole.item(), "sigreg_ddp": spread.item(),
            "sigreg_grad_gap": (projector.weight.grad - single.weight.grad).abs().max().item(),
            "sigreg_grad_scale": single.weight.grad.abs().max().item(),
            "sigreg_local_only": sigreg(single(mine), 32, torch.Generator().manual_seed(3), across_ranks=False).item()}


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
    print(json.dumps({**sigreg_across_ranks(rank, world), "rank": rank, "world": world, "keys": keys,
                      "params": params.double().sum().item(),
                      "params_abs": params.double().abs().sum().item(), "teacher": teacher_params.double().sum().item(),
                      "moved": (params - initial).abs().max().item(), "losses": list(summary.losses),
                      "checkpoint": summary.checkpoint_key}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
