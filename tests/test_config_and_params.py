"""Upstream configs load unchanged, the presets are upstream's values, and they give the exact
parameter counts and the upstream state-dict layout."""
from __future__ import annotations

import pytest
import torch
import yaml
from helpers import UPSTREAM_CONFIGS, UPSTREAM_STATE_DICTS

from hjepa_bench.config import DEFAULTS, preset_names, preset_path, resolve_config, resolve_model_name
from hjepa_bench.errors import UserError
from hjepa_bench.hjepa.model import HJEPA

#: upstream H-JEPA's parameter counts (total with the EMA target encoder, trainable) per preset
EXPECTED = {
    "quick_val": (12_051_264, 6_526_848),
    "full_20epoch": (12_940_992, 7_416_576),
    "full_100epoch": (54_573_312, 32_907_648),
}
#: the upstream file each preset carries the values of
UPSTREAM_FILE = {name: UPSTREAM_CONFIGS / f"m1_max_{name}.yaml" for name in EXPECTED}


def test_the_presets_are_the_upstream_files():
    """Each preset holds exactly the keys and values of the upstream file it is named after."""
    assert preset_names() == sorted(EXPECTED)
    for name, upstream in UPSTREAM_FILE.items():
        assert yaml.safe_load(preset_path(name).read_text()) == yaml.safe_load(upstream.read_text()), name


def test_quick_val_is_the_default_config():
    """Every default value is the quick_val preset's (the preset also holds keys without a default)."""
    values = resolve_config("quick_val").values

    def leaves(d, prefix=""):
        for k, v in d.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]

    flat = dict(leaves(values))
    assert {k: flat[k] for k, _ in leaves(DEFAULTS)} == dict(leaves(DEFAULTS))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_upstream_configs_give_exact_parameter_counts(name):
    for spec in (UPSTREAM_FILE[name], name):  # the upstream file unchanged, and the preset by name
        rc = resolve_config(spec)
        assert rc.unknown_keys == []
        with torch.device("meta"):
            counts = HJEPA.from_config(rc.values).param_counts()
        assert (counts["total"], counts["trainable"]) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(UPSTREAM_STATE_DICTS))
def test_state_dict_layout_matches_upstream(name):
    rc = resolve_config(name)
    with torch.device("meta"):
        sd = HJEPA.from_config(rc.values).state_dict()
    upstream = {}
    for line in UPSTREAM_STATE_DICTS[name].read_text().splitlines():
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
    rc = resolve_config("quick_val",
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


def test_a_preset_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = resolve_config("full_100epoch")
    assert rc.values["model"]["encoder_type"] == "vit_small_patch16_224" and rc.unknown_keys == []
    (tmp_path / "quick_val").write_text("data:\n  batch_size: 8\n")  # an existing file of that name wins
    assert resolve_config("quick_val").values["data"]["batch_size"] == 8


@pytest.mark.parametrize("spec, fragment", [
    ("quick_vall", "unknown preset 'quick_vall'; the presets are full_100epoch, full_20epoch, quick_val"),
    ("nope.yaml", "config file not found: nope.yaml"),
    ("some/dir/quick_val", "config file not found: some/dir/quick_val"),
])
def test_an_unknown_preset_or_missing_file_is_one_sentence(tmp_path, monkeypatch, spec, fragment):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        resolve_config(spec)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_presets_ship_as_package_data(tmp_path):
    """What setuptools installs (build_py, as a wheel build runs it) holds every preset."""
    import subprocess
    import sys

    from helpers import REPO
    code = ("import sys; from setuptools import setup; "
            "sys.argv[1:] = ['-q', 'build_py', '--build-lib', sys.argv[1]]; setup()")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, check=True, capture_output=True, timeout=120)
    shipped = sorted(p.stem for p in (tmp_path / "hjepa_bench" / "presets").glob("*.yaml"))
    assert shipped == preset_names() == sorted(EXPECTED)
