"""Training from a real dataset version (written through the sharding API) on file:// and SeaweedFS, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from alliance.cli.main import main
from alliance.store import LocalStore
from tests.training.conftest import first_keys, small_config
from training.checkpoint import read_run
from training.data import ClipLoader, reader_factory
from training.loop import train
from training.synthetic_shards import write_synthetic_version


def test_trains_from_shards_and_records_the_version(store):
    version = write_synthetic_version(store, "syn", 12, frames=8, size=16, samples_per_shard=4)
    assert write_synthetic_version(store, "syn", 12, frames=8, size=16, samples_per_shard=4) == version  # re-run
    cfg = small_config(**{"data.source": "shards", "data.workers": 2, "run.steps": 3})
    summary = train(store, "syn", version, cfg, echo=lambda _: None)
    assert summary.finished and all(0 < loss < 2 for loss in summary.losses)
    record = read_run(store, summary.run)
    assert (record.dataset, record.version, record.steps) == ("syn", version, 3)  # what the ledger reads


def test_a_bad_json_or_sensor_member_is_skipped_and_counted_not_fatal(tmp_path):
    from sharding.manifest import load_manifest
    from tests.sharding.test_reader import _rewrite_member

    store = LocalStore(tmp_path / "store")
    version = write_synthetic_version(store, "syn", 14, frames=8, size=16, samples_per_shard=7)
    shards = load_manifest(store, "syn", version).shards
    _rewrite_member(store.root / shards[0].key, ".json", b"{not json")
    _rewrite_member(store.root / shards[1].key, ".imu.npy", b"\x93NUMPY cut short")
    cfg = small_config(**{"data.source": "shards", "data.workers": 2, "data.batch_size": 2})
    loader = ClipLoader(reader_factory(cfg, store, "syn", version), cfg)
    batches = first_keys(loader, 6)  # one epoch: 2 workers x (7 clips - 1 bad) in 6 batches
    loader.close()
    assert len({k for batch in batches for k in batch}) == 12
    assert loader.skipped == {"bad_json": 1, "bad_sensor_array": 1}


def test_shard_loader_resumes_at_exactly_the_next_batch(tmp_path):
    store = LocalStore(tmp_path / "store")
    version = write_synthetic_version(store, "syn", 12, frames=8, size=16, samples_per_shard=3)
    cfg = small_config(**{"data.source": "shards", "data.workers": 2, "data.batch_size": 2,
                          "data.shuffle_buffer": 4})
    factory = reader_factory(cfg, store, "syn", version)
    keys = first_keys
    whole = keys(ClipLoader(factory, cfg), 10)  # 12 clips / 2 workers / batch 2: crosses an epoch boundary
    first = ClipLoader(factory, cfg)
    head = keys(first, 4)
    resumed = ClipLoader(factory, cfg)
    resumed.load_state_dict(first.state_dict())
    assert head + keys(resumed, 6) == whole
    assert len({k for batch in whole[:6] for k in batch}) == 12  # one epoch: every clip once


def test_cli_train_probe_export(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALLIANCE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ALLIANCE_STORE", raising=False)
    monkeypatch.delenv("ALLIANCE_CATALOG", raising=False)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**small_config().to_dict(), "run": {"steps": 3, "log_every": 1,
                                                                       "checkpoint_every": 3}}))
    main(["train", "--dataset", "synthetic@v0", "--config", str(config)])
    out = capsys.readouterr().out
    assert "finished" in out and "step-3.pt" in out
    run = next(line for line in out.splitlines() if line.startswith("run ")).split()[1].rstrip(":")
    assert (tmp_path / "home" / "runs" / run / "metrics.jsonl").read_text().count("\n") == 3

    main(["train", "probe", run, "--train-clips", "32", "--test-clips", "16"])
    assert "random-init encoder" in capsys.readouterr().out
    main(["train", "export", f"checkpoints/{run}/step-3.pt"])
    assert "encoder.pt" in capsys.readouterr().out
    store = LocalStore(tmp_path / "home" / "store")
    assert torch.jit.load(str(store.root / f"checkpoints/{run}/encoder.pt"))(torch.rand(1, 3, 8, 16, 16)).shape == (
        1, 32)

    with pytest.raises(SystemExit) as bad:
        main(["train", "--dataset", "ego"])
    assert bad.value.code == 1 and "use NAME@vN" in capsys.readouterr().out
