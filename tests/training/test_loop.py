"""The loop end to end on synthetic clips: run record, checkpoint round trip, exact resume, every objective, export."""

from __future__ import annotations

import json

import pytest
import torch

from tests.training.conftest import small_config
from training.checkpoint import load_checkpoint, read_run
from training.export import export_encoder
from training.loop import train
from training.step import lr_at, wd_at
from training.model import VideoEncoder


def test_schedules_warm_up_then_cosine(small):
    lrs = [lr_at(s, small) for s in range(small.run.steps + 1)]
    assert lrs[0] == small.optim.lr_start and lrs[2] == pytest.approx(small.optim.lr_peak)
    assert lrs[-1] == pytest.approx(small.optim.lr_final) and all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert wd_at(0, small) == pytest.approx(small.optim.wd_start)
    assert wd_at(small.run.steps, small) == pytest.approx(small.optim.wd_end)


def test_run_record_and_checkpoint_round_trip(file_store, small):
    summary = train(file_store, "synthetic", 0, small, echo=lambda _: None)
    assert summary.finished and summary.steps == 6 and len(summary.losses) == 6
    record = read_run(file_store, summary.run)
    assert record.dataset == "synthetic" and record.version == 0 and record.steps == 6
    assert record.checkpoints[-1] == summary.checkpoint_key == f"checkpoints/{summary.run}/step-6.pt"
    assert record.config["model"]["embed_dim"] == 32 and record.finished_at
    assert json.loads(file_store.get_bytes(f"checkpoints/{summary.run}/config.json")) == small.to_dict()
    lines = file_store.get_bytes(f"checkpoints/{summary.run}/metrics.jsonl").decode().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "ema", "clips_per_s", "tokens_per_s", "collapse_std_mean", "collapse_rankme"} <= set(
        json.loads(lines[-1]))

    payload = load_checkpoint(file_store, summary.checkpoint_key)
    # the checkpoint holds the trained weights: a fresh encoder from the run's seed (the network the run started
    # from) differs in every matrix and gives other features until the checkpoint is loaded into it
    torch.manual_seed(small.run.seed)
    encoder = VideoEncoder(small.model).eval()
    start = {k: v.clone() for k, v in encoder.state_dict().items()}
    assert set(start) == set(payload["encoder"])
    assert all(not torch.equal(start[k], v) for k, v in payload["encoder"].items() if v.ndim >= 2)
    clip = torch.rand(2, 3, small.model.frames, small.model.size, small.model.size)
    with torch.no_grad():
        before = encoder(clip)
        encoder.load_state_dict(payload["encoder"])
        after = encoder(clip)
    assert not torch.allclose(before, after, atol=1e-4)
    # the step-6 weights are the step-3 weights plus three more steps: resuming from step 3 rebuilds them exactly
    # (test_resume_after_kill...), and they differ from step 3's
    step3 = load_checkpoint(file_store, f"checkpoints/{summary.run}/step-3.pt")["encoder"]
    assert any(not torch.equal(step3[k], v) for k, v in payload["encoder"].items())
    assert payload["step"] == 6 and payload["dataset"] == "synthetic" and payload["loader"][0]["workers"] == 1

    again = train(file_store, "synthetic", 0, small, echo=lambda _: None)  # finished: nothing trained or written
    assert again.losses == () and again.checkpoint_key == summary.checkpoint_key


@pytest.mark.parametrize("objective", ["ema_l1", "sigreg", "sigreg+projector", "action", "action+frozen"])
def test_resume_after_kill_continues_the_same_loss_curve(tmp_path, objective):
    from alliance.store import LocalStore

    overrides = {"objective.kind": objective.split("+")[0], "data.workers": 2}
    if objective.endswith("+projector"):  # LeJEPA's head (BatchNorm statistics included) resumes exactly too
        overrides["objective.sigreg_projector"] = (32, 8)
    if objective.endswith("+frozen"):  # V-JEPA 2-AC's predictor alone on a fixed encoder
        overrides["objective.freeze_encoder"] = True
    whole = train(LocalStore(tmp_path / "a"), "synthetic", 0, small_config(**overrides), echo=lambda _: None)
    store = LocalStore(tmp_path / "b")
    first = train(store, "synthetic", 0, small_config(**overrides), stop_after=3, echo=lambda _: None)
    assert not first.finished and first.steps == 3 and read_run(store, first.run).finished_at is None
    rest = train(store, "synthetic", 0, small_config(**overrides), echo=lambda _: None)
    assert rest.resumed_from == 3 and rest.finished
    assert torch.allclose(torch.tensor(first.losses + rest.losses), torch.tensor(whole.losses), rtol=1e-5, atol=1e-6)
    a = load_checkpoint(LocalStore(tmp_path / "a"), whole.checkpoint_key)
    b = load_checkpoint(store, rest.checkpoint_key)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a["encoder"].values(), b["encoder"].values()))


def test_export_writes_torchscript_and_contract(store, small):
    summary = train(store, "synthetic", 0, small, echo=lambda _: None)
    key = export_encoder(store, summary.checkpoint_key)
    assert key == f"checkpoints/{summary.run}/encoder.pt"
    contract = json.loads(store.get_bytes(f"checkpoints/{summary.run}/encoder.json"))
    assert contract == {"frames": 8, "size": 16, "embed_dim": 32, "input": "float32 [B, 3, T, S, S] in [0, 1]",
                        "output": "float32 [B, D] mean-pooled tokens", "dataset": "synthetic@v0", "step": 6,
                        "encoder": "target"}
    import io

    payload = load_checkpoint(store, summary.checkpoint_key)

    def encoder_of(weights):
        encoder = VideoEncoder(small.model).eval()
        encoder.load_state_dict(weights)
        return encoder

    target, context = encoder_of(payload["target_encoder"]), encoder_of(payload["encoder"])
    scripted = torch.jit.load(io.BytesIO(store.get_bytes(key)))
    for batch in (1, 5):  # the EMA target encoder by default, as V-JEPA's evaluations load it
        clip = torch.rand(batch, 3, 8, 16, 16)
        out = scripted(clip)
        assert out.shape == (batch, 32) and out.dtype == torch.float32
        assert torch.allclose(out, target(clip).mean(1), atol=1e-5)
        assert not torch.allclose(out, context(clip).mean(1), atol=1e-5)  # the two differ after 6 steps
    export_encoder(store, summary.checkpoint_key, which="context")
    assert json.loads(store.get_bytes(f"checkpoints/{summary.run}/encoder.json"))["encoder"] == "context"
    clip = torch.rand(2, 3, 8, 16, 16)
    assert torch.allclose(torch.jit.load(io.BytesIO(store.get_bytes(key)))(clip), context(clip).mean(1), atol=1e-5)
