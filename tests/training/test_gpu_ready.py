"""What a GPU run needs, checked without a GPU: the ViT-L preset's size and FLOPs (meta device), activation
checkpointing, bf16 autocast (on CPU), and DDP across two processes (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.training.conftest import small_config
from training.config import preset
from training.step import JEPA, build, jepa_step, prepare
from training.masks import MaskGenerator
from training.model import Predictor, VideoEncoder, count_parameters

ROOT = Path(__file__).resolve().parents[2]


def test_vit_l_preset_matches_vjepa_in_parameters_and_flops():
    """Built on the meta device (no memory, no init time). ViT-L/16 is about 304M parameters (303.3M in 2D; the
    2x16x16 tubelet doubles the patch embedding); one 16x224 clip (1568 tokens) costs 597 GMACs forward, the figure
    VideoMAE reports for the same backbone and input (V-JEPA's); the predictor is 12 deep and 384 wide (~22M)."""
    cfg = preset("vit_l")
    with torch.device("meta"):
        encoder = VideoEncoder(cfg.model)
        predictor = Predictor(cfg.model, mask_sets=2)
        clip = torch.empty(1, 3, cfg.model.frames, cfg.model.size, cfg.model.size)
    assert 303e6 < count_parameters(encoder) < 305e6
    assert 21e6 < count_parameters(predictor) < 23e6
    counter = FlopCounterMode(display=False)
    with counter:
        tokens = encoder(clip)
    assert tokens.shape == (1, 1568, 1024) and tokens.device.type == "meta"
    flops = counter.get_total_flops()
    assert 2 * 597e9 * 0.98 < flops < 2 * 597e9 * 1.02, flops / 1e9
    # the MFU formula of the benchmark (nanoGPT / torchtitan): 2N per token + attention 4 * l * T * d, forward
    n, layers, t, d = count_parameters(encoder), cfg.model.depth, cfg.model.tokens, cfg.model.embed_dim
    assert flops == pytest.approx(t * (2 * n + 4 * layers * t * d), rel=0.02)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    grads = []
    for checkpointed in (False, True):
        cfg = small_config(**{"model.checkpoint_activations": checkpointed, "objective.kind": "sigreg"})
        masks = MaskGenerator(cfg.mask, cfg.model)(2, 0)
        torch.manual_seed(0)
        model = JEPA(cfg, len(masks))
        clip = torch.rand(2, 3, cfg.model.frames, cfg.model.size, cfg.model.size,
                          generator=torch.Generator().manual_seed(1))
        loss, _ = model(clip, masks, torch.zeros(2, cfg.model.grid[0], 12), None, torch.Generator().manual_seed(2))
        loss.backward()
        grads.append((float(loss.detach()), [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = grads
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_a, grads_b))


@pytest.mark.parametrize("objective", ["ema_l1", "sigreg", "action"])
def test_a_bf16_autocast_step_runs_and_keeps_fp32_weights(objective):
    """The CUDA step's precision (bf16 autocast, fp32 weights, optimizer and EMA) exercised on the CPU."""
    cfg = small_config(**{"objective.kind": objective})
    device = torch.device("cpu")
    masker = MaskGenerator(cfg.mask, cfg.model)
    torch.manual_seed(0)
    model, teacher, optimizer = build(cfg, device, masker.num_sets)
    parts = prepare(model, teacher, optimizer, cfg, device, cpu_bf16=True)
    assert parts.autocast.fast_dtype == torch.bfloat16 and parts.autocast._enabled
    clip = torch.rand(4, 3, cfg.model.frames, cfg.model.size, cfg.model.size)
    actions = torch.randn(4, cfg.model.grid[0], cfg.objective.action_dim)
    before = [p.detach().clone() for p in model.parameters()]
    out = jepa_step(parts, clip, actions, masker(4, 0), 0)
    assert torch.isfinite(torch.tensor(out.loss)) and 0.1 < out.loss < 50
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    if teacher is not None:
        assert all(p.dtype == torch.float32 for p in teacher.parameters())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_keep_one_model_and_read_disjoint_clips(tmp_path):
    """Two ranks over gloo: every rank reads its own clips, gradients are averaged, so the weights (and the EMA
    teacher) stay identical; `train` under torchrun's variables gathers both ranks' loader states; SIGReg sees the
    samples of both ranks, as in LeJEPA."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.training.ddp_worker", str(tmp_path / "store")],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    a, b = sorted(outs, key=lambda o: o["rank"])
    assert a["world"] == b["world"] == 2
    assert not set(a["keys"]) & set(b["keys"])  # each rank its own clips
    assert a["moved"] > 0 and a["params"] == b["params"] and a["params_abs"] == b["params_abs"]
    assert a["teacher"] == b["teacher"]
    for rank in (a, b):  # SIGReg over both ranks' 8 samples is the statistic of all 16, gradient included
        assert abs(rank["sigreg_ddp"] - rank["sigreg_single"]) < 1e-4 * rank["sigreg_single"]
        assert rank["sigreg_grad_gap"] < 1e-5 * rank["sigreg_grad_scale"]
        assert abs(rank["sigreg_local_only"] - rank["sigreg_single"]) > 1e-3  # a rank's own half differs
    from alliance.store import LocalStore
    from training.checkpoint import load_checkpoint

    payload = load_checkpoint(LocalStore(tmp_path / "store"), a["checkpoint"])
    assert payload["step"] == 2 and len(payload["loader"]) == 2  # both ranks' resume points
