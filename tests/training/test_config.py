"""The config tree: presets, overrides from files and flags, refusal of unknown or inconsistent settings."""

from __future__ import annotations

import json

import pytest

from alliance.errors import ConfigError
from training.config import PRESETS, from_dict, load_config, preset, with_overrides


def test_presets_are_valid_and_vit_sizes_follow_vjepa():
    for config in PRESETS.values():
        config.validate()
    vit_l = preset("vit_l")
    assert (vit_l.model.embed_dim, vit_l.model.depth, vit_l.model.heads) == (1024, 24, 16)
    assert vit_l.model.tokens == 1568  # 16 frames at 224 px in 2x16x16 tubelets
    assert (vit_l.model.pred_dim, vit_l.model.pred_depth) == (384, 12)
    assert preset("vit_h").model.embed_dim == 1280


def test_overrides_dotted_and_nested_and_roundtrip():
    config = with_overrides(preset("tiny_cpu"), {"run.steps": "12", "optim": {"lr_peak": 3e-4}, "data.hflip": "true"})
    assert config.run.steps == 12 and config.optim.lr_peak == 3e-4 and config.data.hflip is True
    assert from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.digest() == with_overrides(config, {"run.steps": 99}).digest()  # length is not identity
    assert config.digest() != with_overrides(config, {"optim.lr_peak": 1e-4}).digest()


def test_load_toml_file_with_preset(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "vit_l"\n[run]\nsteps = 5\n[objective]\nkind = "sigreg"\n')
    config = load_config(path, overrides={"data.batch_size": 2})
    assert config.preset == "vit_l" and config.model.embed_dim == 1024
    assert (config.run.steps, config.objective.kind, config.data.batch_size) == (5, "sigreg", 2)


def test_unknown_and_inconsistent_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting 'stpes'"):
        with_overrides(preset("tiny_cpu"), {"run.stpes": 3})
    with pytest.raises(ConfigError, match="must divide"):
        with_overrides(preset("tiny_cpu"), {"model.size": 30})
    with pytest.raises(ConfigError, match="objective.kind"):
        with_overrides(preset("tiny_cpu"), {"objective.kind": "mae"})
    with pytest.raises(ConfigError, match="data.synthetic_world 'turning'"):
        with_overrides(preset("tiny_cpu"), {"data.synthetic_world": "turning"})
    with pytest.raises(ConfigError, match="init_gain"):
        with_overrides(preset("tiny_cpu"), {"model.init_gain": -1})
    with pytest.raises(ConfigError, match="unknown training preset"):
        preset("vit_z")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
