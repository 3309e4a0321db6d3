"""Upstream configs load unchanged, give the exact parameter counts and the upstream state-dict layout."""
from __future__ import annotations

import pytest
import torch

from hjepa_bench.config import resolve_config, resolve_model_name
from hjepa_bench.errors import UserError
from hjepa_bench.hjepa.model import HJEPA

from helpers import CONFIGS, SHARED

EXPECTED = {
    "m1_max_quick_val": (12_051_264, 6_526_848),
    "m1_max_full_20epoch": (12_940_992, 7_416_576),
    "m1_max_full_100epoch": (54_573_312, 32_907_648),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_upstream_configs_give_exact_parameter_counts(name):
    rc = resolve_config(CONFIGS / f"{name}.yaml")
    assert rc.unknown_keys == []
    with torch.device("meta"):
        counts = HJEPA.from_config(rc.values).param_counts()
    assert (counts["total"], counts["trainable"]) == EXPECTED[name]


@pytest.mark.parametrize("name", ["m1_max_quick_val", "m1_max_full_100epoch"])
def test_state_dict_layout_matches_upstream(name):
    rc = resolve_config(CONFIGS / f"{name}.yaml")
    with torch.device("meta"):
        sd = HJEPA.from_config(rc.values).state_dict()
    upstream = {}
    for line in (SHARED / f"upstream-state-dict-{name}.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _ = line.split("\t")
        upstream[key] = tuple(int(x) for x in shape.split("x"))
    assert list(sd) == list(upstream)  # same keys, same order
    assert {k: tuple(v.shape) for k, v in sd.items()} == upstream


def test_no_effect_and_unknown_keys_are_listed(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  encoder_type: vit_small\n  frobnicate: 3\nlogging:\n  log_frequency: 10\n"
                   "  experiment_name: x\nloss:\n  vicreg_weight: 0.2\n")
    rc = resolve_config(cfg)
    assert rc.unknown_keys == ["model.frobnicate"]
    text = " ".join(rc.warnings())
    assert "model.frobnicate" in text and "logging.experiment_name" in text and "loss.vicreg_weight" in text
    # log_frequency sets the trainer's periodic work in the projections: used, not listed
    assert "log_frequency" not in text and rc.values["logging"]["log_frequency"] == 10
    assert rc.values["model"]["encoder_type"] == "vit_small_patch16_224"
    assert rc.values["model"]["embed_dim"] == 384


def test_overrides_and_model_names():
    rc = resolve_config(CONFIGS / "m1_max_quick_val.yaml",
                        {"model.encoder_type": "vit_base", "model.num_hierarchies": 3, "data.batch_size": 24})
    v = rc.values
    assert v["model"]["encoder_type"] == "vit_base_patch16_224" and v["model"]["embed_dim"] == 768
    assert v["loss"]["hierarchy_weights"] == [1.0, 0.5, 0.25]
    assert v["data"]["batch_size"] == 24
    assert resolve_model_name("vit_tiny_patch16_224") == resolve_model_name("vit_tiny")


@pytest.mark.parametrize("text,fragment", [
    ("model: [unclosed\n", "not valid YAML at line"),
    ("- just\n- a list\n", "must hold a mapping"),
    ("data:\n  batch_size: many\n", "data.batch_size must be a whole number"),
    ("model:\n  encoder_type: vit_gigantic\n", "unknown model 'vit_gigantic'"),
    ("data:\n  image_size: 100\n", "multiple of the patch size"),
    ("loss:\n  hierarchy_weights: [1.0]\n", "one weight per hierarchy level"),
    ("training:\n  optimizer: sgd\n", "not supported"),
    ("model:\n  predictor:\n    num_heads: 5\n", "must divide the width"),
])
def test_broken_configs_give_one_clear_sentence(tmp_path, text, fragment):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(UserError) as info:
        resolve_config(cfg)
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        resolve_config(tmp_path / "nope.yaml")
