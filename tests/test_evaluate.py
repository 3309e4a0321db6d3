"""``hjepa_bench.measure.evaluate``: checkpoint loading (``hjepa_bench.hjepa.checkpoint``, and its
one-sentence errors), the per-level features, the kNN / linear probes on hand-made data with known
answers, and an end-to-end evaluation of a tiny real checkpoint (64 px, encoder depth 2) on the CPU."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import UPSTREAM_STATE_DICTS, tiny_config

from hjepa_bench.analysis.evaluation import knn_accuracy, knn_predict, linear_probe_accuracy
from hjepa_bench.config import resolve_config
from hjepa_bench.errors import UserError
from hjepa_bench.hjepa.checkpoint import load_state_dict
from hjepa_bench.hjepa.model import HJEPA
from hjepa_bench.hjepa.training import level_features
from hjepa_bench.measure.evaluate import (
    EvalSettings,
    config_from_checkpoint,
    evaluate_checkpoint,
    infer_architecture,
    load_model,
)
from hjepa_bench.report.run_text import render_eval_markdown

UPSTREAM_TSV = UPSTREAM_STATE_DICTS["quick_val"]
N_TRAIN, N_TEST = 200, 100


def _model(seed: int, **overrides) -> tuple[dict, HJEPA]:
    values = tiny_config(**overrides)
    torch.manual_seed(seed)
    return values, HJEPA.from_config(values).eval()


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny 3-level model (seed 1) saved as {"model_state_dict", "epoch"} (no config: upstream style)."""
    values, model = _model(1, **{"model.num_hierarchies": 3})
    path = _save(tmp_path_factory.mktemp("ckpt") / "tiny.pt", {"model_state_dict": model.state_dict(), "epoch": 1})
    return values, model, path


@pytest.fixture(scope="module")
def tiny_result(tiny_ckpt):
    _values, _model, path = tiny_ckpt
    messages: list[str] = []
    overrides = {"data.image_size": 64, "model.encoder_depth": 2, "model.predictor.depth": 1,
                 "model.num_hierarchies": 3}
    result = evaluate_checkpoint(path, EvalSettings(overrides=overrides, n_train=N_TRAIN, n_test=N_TEST, batch_size=50,
                                                    progress=messages.append))
    return result, messages


# --------------------------------------------------------------------------- loading
def test_round_trip_gives_identical_tensors(tiny_ckpt):
    _values, model, path = tiny_ckpt
    sd, meta = load_state_dict(path)
    ref = model.state_dict()
    assert list(sd) == list(ref)
    for k, v in ref.items():
        assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
    assert meta["epoch"] == 1 and meta["format"] == "model_state_dict" and meta["weights_only"] is True
    assert "config" not in meta and meta["top_level_keys"] == ["model_state_dict", "epoch"]


def test_bare_state_dict_and_ddp_prefix(tmp_path):
    values, model = _model(0)
    bare = _save(tmp_path / "bare.pt", {f"module.{k}": v for k, v in model.state_dict().items()})
    sd, meta = load_state_dict(bare)
    assert meta["format"] == "bare state dict" and any("module." in n for n in meta["notes"])
    loaded = load_model(values, sd)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_checkpoint_with_numpy_scalars_loads_without_running_pickle_code(tmp_path):
    values, model = _model(0)
    path = _save(tmp_path / "np.pt", {"model_state_dict": model.state_dict(), "epoch": 3,
                                      "best_loss": np.float64(0.25), "config": dict(values)})
    _sd, meta = load_state_dict(path)  # numpy scalars are the one allowlisted extra: still weights_only=True
    assert meta["weights_only"] is True and not any("weights_only=False" in n for n in meta["notes"])
    assert meta["extra"] == {"best_loss": 0.25} and meta["epoch"] == 3
    assert meta["config"]["data"]["image_size"] == 64


def test_checkpoint_with_other_python_objects_is_refused(tmp_path):
    import argparse

    _values, model = _model(0)
    path = _save(tmp_path / "obj.pt", {"model_state_dict": model.state_dict(), "args": argparse.Namespace(lr=0.1)})
    with pytest.raises(UserError, match="argparse.Namespace") as exc:
        load_state_dict(path)
    assert "\n" not in str(exc.value)


def test_missing_file_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found") as exc:
        load_state_dict(tmp_path / "nope.pt")
    assert str(exc.value).count(".") >= 1 and "\n" not in str(exc.value)


def test_corrupt_and_truncated_files_raise_user_error(tmp_path, tiny_ckpt):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 50)
    with pytest.raises(UserError, match="corrupt or not a PyTorch checkpoint"):
        load_state_dict(garbage)
    data = tiny_ckpt[2].read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_state_dict(truncated)
    with pytest.raises(UserError, match="not a file"):
        load_state_dict(tmp_path)


def test_file_without_model_state_dict_raises_user_error(tmp_path):
    with pytest.raises(UserError, match=r"no model_state_dict .*top-level keys: epoch, optimizer"):
        load_state_dict(_save(tmp_path / "a.pt", {"epoch": 1, "optimizer": {"lr": 0.1}}))
    with pytest.raises(UserError, match="model_state_dict that is empty"):
        load_state_dict(_save(tmp_path / "b.pt", {"model_state_dict": {}}))
    with pytest.raises(UserError, match="holds a list"):
        load_state_dict(_save(tmp_path / "c.pt", [torch.zeros(2)]))


def test_renamed_and_removed_keys_name_the_first_of_each(tiny_ckpt):
    values, model, _path = tiny_ckpt
    sd = dict(model.state_dict())
    del sd["context_encoder.vit.cls_token"]  # the first key of the layout
    sd["predictor.final_norm.weight"] = sd.pop("predictor.norm.weight")
    sd["predictor.final_norm.bias"] = sd.pop("predictor.norm.bias")
    with pytest.raises(UserError) as exc:
        load_model(values, sd)
    msg = str(exc.value)
    assert "3 missing keys (first: context_encoder.vit.cls_token)" in msg
    assert "2 unexpected keys (first: predictor.final_norm.weight)" in msg
    assert "upstream H-JEPA layout" in msg and "\n" not in msg


def test_shape_mismatch_names_key_and_both_shapes(tiny_ckpt):
    values, model, _path = tiny_ckpt
    sd = dict(model.state_dict())
    sd["hierarchy_projections.1.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(UserError) as exc:
        load_model(values, sd)
    msg = str(exc.value)
    assert ("1 shape mismatch (first: hierarchy_projections.1.0.weight is 3x3 in the checkpoint but 192x192 "
            "in the model)") in msg
    assert "missing" not in msg and "unexpected" not in msg


def test_other_model_config_suggests_config(tiny_ckpt):
    _values3, model3, _path = tiny_ckpt  # 3 levels, 64 px
    with pytest.raises(UserError) as exc:
        load_model(tiny_config(), model3.state_dict())  # config says 2 levels
    msg = str(exc.value)
    assert "1 unexpected key" not in msg and "4 unexpected keys (first: hierarchy_projections.2.0.weight)" in msg
    assert "hierarchy levels 3 in the checkpoint vs 2 in the config" in msg and "--config" in msg
    with pytest.raises(UserError) as exc:
        load_model(tiny_config(**{"data.image_size": 32, "model.num_hierarchies": 3}), model3.state_dict())
    msg = str(exc.value)
    assert "context_encoder.vit.pos_embed is 1x17x192 in the checkpoint but 1x5x192 in the model" in msg
    assert "image size 64 in the checkpoint vs 32 in the config" in msg and "--config" in msg


def test_infer_architecture(tiny_ckpt):
    _values, model, _path = tiny_ckpt
    arch = infer_architecture(model.state_dict())
    assert arch == {"embed_dim": 192, "encoder_depth": 2, "image_size": 64, "num_hierarchies": 3,
                    "predictor_depth": 1, "predictor_mlp_ratio": 4.0}


def test_config_from_checkpoint_precedence(tmp_path):
    values = config_from_checkpoint({}, None, None)
    assert values["data"]["image_size"] == 224 and values["model"]["encoder_type"] == "vit_tiny_patch16_224"
    assert values["model"]["encoder_depth"] == 12 and values["model"]["predictor"]["depth"] == 2
    meta = {"config": tiny_config()}
    assert config_from_checkpoint(meta, None, None)["data"]["image_size"] == 64
    assert config_from_checkpoint(meta, None, {"data.image_size": 96})["data"]["image_size"] == 96
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("data:\n  image_size: 128\nmodel:\n  num_hierarchies: 3\n"
                         "loss:\n  hierarchy_weights: [1.0, 0.5, 0.25]\n")
    from_file = config_from_checkpoint(meta, yaml_path, None)  # --config wins over the checkpoint's config
    assert from_file["data"]["image_size"] == 128 and from_file["model"]["num_hierarchies"] == 3
    assert from_file["model"]["encoder_depth"] == 12  # the file, not the checkpoint's tiny config


@pytest.mark.parametrize("config, needle", [
    ({"model": 5}, "config key model must be a mapping, not 5"),
    (5, "is not a mapping of sections (it holds 5)"),
    ({"model": {"predictor": 5}}, "config key model.predictor must be a mapping, not 5"),
    ({"data": {"image_size": "32"}}, "data.image_size must be a whole number"),
])
def test_an_embedded_config_that_does_not_validate_is_one_sentence(tmp_path, capsys, config, needle):
    """The config saved in a checkpoint is checked like a config file before it is merged over the
    defaults: {model: 5} and the like get one sentence that names the checkpoint and --config."""
    from hjepa_bench.cli import main

    _, model = _model(0)
    path = _save(tmp_path / "c.pt", {"model_state_dict": model.state_dict(), "config": config, "epoch": 1})
    _, meta = load_state_dict(path)
    with pytest.raises(UserError) as exc:
        config_from_checkpoint(meta)
    assert needle in str(exc.value) and f"the config saved in checkpoint {path}" in str(exc.value)
    assert "--config" in str(exc.value) and "\n" not in str(exc.value)
    assert main(["eval", "--checkpoint", str(path), "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hjepa-bench: error: the config saved in checkpoint")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, capsys, value):
    """A checkpoint from a diverged run (NaN/inf weights) is not evaluated: one sentence names the
    tensor, exit 2."""
    from hjepa_bench.cli import main

    values, model = _model(0)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    name = "target_encoder.vit.blocks.0.attn.qkv.weight"
    sd[name].view(-1)[3] = value
    path = _save(tmp_path / "nan.pt", {"model_state_dict": sd, "config": values, "epoch": 1})
    with pytest.raises(UserError, match=rf"holds non-finite weights \(NaN or inf in {name}\): the run that saved "
                                        "it diverged"):
        load_state_dict(path)
    assert main(["eval", "--checkpoint", str(path), "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite weights" in err[0]


def test_the_refusal_of_python_objects_says_how_to_re_save(tmp_path):
    import fractions

    _, model = _model(0)
    path = _save(tmp_path / "f.pt", {"model_state_dict": model.state_dict(), "ratio": fractions.Fraction(1, 3)})
    with pytest.raises(UserError, match=r"\(fractions.Fraction\).*torch.save\(\{'model_state_dict': model.state_dict"):
        load_state_dict(path)


def test_upstream_state_dict_layout_matches_reference_tsv():
    rows = [line.rstrip("\n").split("\t") for line in UPSTREAM_TSV.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert all(len(r) == 3 for r in rows)  # key, shape (AxB, scalar), dtype
    sd = HJEPA.from_config(resolve_config(None).values).state_dict()
    assert [r[0] for r in rows] == list(sd)
    for key, shape, dtype in rows:
        assert shape == "x".join(str(s) for s in sd[key].shape), key
        assert dtype == str(sd[key].dtype).removeprefix("torch."), key


# --------------------------------------------------------------------------- features
def test_level_features_match_the_loss_pooling():
    # 48 px -> 9 patches: level 1 (k=2) and level 2 (k=4) pool the first 8 patches only
    _values, model = _model(2, **{"data.image_size": 48, "model.num_hierarchies": 3})
    images = torch.randn(3, 3, 48, 48)
    feats = level_features(model, images)
    assert [tuple(f.shape) for f in feats] == [(3, 192)] * 3
    with torch.no_grad():
        tokens = model.target_encoder(images)[:, 1:]
        assert tokens.shape[1] == 9
        torch.testing.assert_close(feats[0], tokens.mean(1))
        for level in (1, 2):
            projected = model.hierarchy_projections[level](tokens)
            torch.testing.assert_close(feats[level], projected[:, :8].mean(1), rtol=1e-5, atol=1e-6)
            assert not torch.allclose(feats[level], projected.mean(1), atol=1e-4)  # the 9th patch is dropped


def test_level_features_use_the_target_encoder():
    _values, model = _model(3)
    images = torch.randn(2, 3, 64, 64)
    before = [f.clone() for f in level_features(model, images)]
    with torch.no_grad():
        for p in model.context_encoder.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, level_features(model, images)))
    with torch.no_grad():
        model.target_encoder.vit.blocks[0].mlp.fc2.bias.add_(1.0)
    assert not torch.allclose(before[0], level_features(model, images)[0])


# --------------------------------------------------------------------------- probes on hand-made data
def _clusters(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = np.eye(num_classes, dim) * 5.0
    y = np.repeat(np.arange(num_classes), n_per_class)
    z = centres[y] + spread * rng.standard_normal((y.size, dim))
    return z, y


def test_probes_on_separable_clusters_are_perfect():
    tr_z, tr_y = _clusters(40, 5, 16, 0.3, 0)
    te_z, te_y = _clusters(20, 5, 16, 0.3, 1)
    assert knn_accuracy(tr_z, tr_y, te_z, te_y) == 1.0
    assert knn_accuracy(torch.from_numpy(tr_z).float(), torch.from_numpy(tr_y), torch.from_numpy(te_z),
                        torch.from_numpy(te_y)) == 1.0
    assert linear_probe_accuracy(tr_z, tr_y, te_z, te_y) == 1.0


def test_probes_on_random_labels_are_at_chance():
    rng = np.random.default_rng(5)
    tr_z, te_z = rng.standard_normal((2000, 32)), rng.standard_normal((2000, 32))
    tr_y, te_y = rng.integers(0, 4, 2000), rng.integers(0, 4, 2000)
    # chance = 0.25; the std of an accuracy over 2000 test samples is ~0.01
    assert abs(knn_accuracy(tr_z, tr_y, te_z, te_y) - 0.25) < 0.05
    assert abs(linear_probe_accuracy(tr_z, tr_y, te_z, te_y) - 0.25) < 0.05


def _unit(angle_deg: float) -> list[float]:
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)]


def test_knn_weighting_breaks_a_tie_towards_the_closer_neighbour():
    # test point at angle 0; class 0 at 40 degrees (cos 0.77), class 1 at 30 degrees (cos 0.87)
    train_z = np.array([_unit(40), _unit(30)])
    train_y = np.array([0, 1])
    test_z = np.array([_unit(0)])
    # k = 2: one vote each.  exp(sim / 0.07) gives the closer class 1 ~4x the weight ...
    assert knn_predict(train_z, train_y, test_z, k=2).tolist() == [1]
    assert knn_accuracy(train_z, train_y, test_z, np.array([1]), k=2) == 1.0
    # ... swapping the labels swaps the answer (the weight decides, not the class index) ...
    assert knn_predict(train_z, np.array([1, 0]), test_z, k=2).tolist() == [0]
    # ... and only an exact tie in weight (both at +-30 degrees) goes to the lowest class index
    symmetric = np.array([_unit(30), _unit(-30)])
    assert knn_predict(symmetric, np.array([1, 0]), test_z, k=2).tolist() == [0]
    assert knn_predict(symmetric, np.array([1, 2]), test_z, k=2).tolist() == [1]


def test_knn_weighting_can_outvote_a_majority():
    # two class-0 neighbours at 25 degrees (cos 0.906) vs one class-1 neighbour at 5 degrees (cos 0.996):
    # 2 exp(0.906 / 0.07) < exp(0.996 / 0.07) since 0.09 > 0.07 ln 2 = 0.049
    train_z = np.array([_unit(25), _unit(-25), _unit(5), _unit(120)])
    train_y = np.array([0, 0, 1, 2])
    test_z = np.array([_unit(0)])
    assert knn_predict(train_z, train_y, test_z, k=3).tolist() == [1]
    assert knn_predict(train_z, train_y, test_z, k=3, temperature=10.0).tolist() == [0]
    assert knn_predict(train_z, train_y, test_z, k=1).tolist() == [1]


def test_knn_matches_a_brute_force_reference():
    rng = np.random.default_rng(7)
    tr_z, te_z = rng.standard_normal((60, 6)), rng.standard_normal((25, 6))
    tr_y = rng.integers(0, 3, 60)
    pred = knn_predict(tr_z, tr_y, te_z, k=7, temperature=0.1, num_classes=3)
    trn = tr_z / np.linalg.norm(tr_z, axis=1, keepdims=True)
    for i, x in enumerate(te_z):
        sim = trn @ (x / np.linalg.norm(x))
        top = np.argsort(-sim)[:7]
        votes = np.zeros(3)
        for j in top:
            votes[tr_y[j]] += math.exp(sim[j] / 0.1)
        assert pred[i] == int(np.argmax(votes))


def test_probe_input_validation():
    with pytest.raises(ValueError, match="two classes"):
        linear_probe_accuracy(np.ones((4, 2)), np.zeros(4), np.ones((2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="labels must have shape"):
        knn_accuracy(np.ones((4, 2)), np.zeros(3), np.ones((2, 2)), np.zeros(2))


# --------------------------------------------------------------------------- end to end
def test_evaluate_checkpoint_reports_every_level(tiny_result):
    result, messages = tiny_result
    json.dumps(result, allow_nan=False)  # JSON-serialisable, no NaN
    assert result["config_source"].startswith("defaults")
    assert any("carry no config" in n for n in result["notes"])
    assert result["epoch"] == 1 and result["model"]["num_hierarchies"] == 3
    assert result["data"] == {**result["data"], "kind": "synthetic", "n_train": N_TRAIN, "n_test": N_TEST,
                              "image_size": 64, "num_classes": 10}
    assert [e["level"] for e in result["levels"]] == [0, 1, 2]
    for entry in result["levels"]:
        assert entry["dim"] == 192
        for name in ("trained", "random_init"):
            s = entry[name]
            for acc in ("knn_top1", "linear_top1"):
                assert math.isfinite(s[acc]) and 0.0 <= s[acc] <= 1.0
                assert s[acc] * N_TEST == pytest.approx(round(s[acc] * N_TEST))  # a count over the test split
            q = s["feature_quality"]
            assert q["n"] == N_TRAIN and q["d"] == 192 and q["finite"] is True
            assert 1.0 <= q["rankme_centred"] <= 192 and "collapsed" in q["collapse"]
        gain = entry["gain"]
        assert gain["knn_top1"] == pytest.approx(entry["trained"]["knn_top1"] - entry["random_init"]["knn_top1"])
        assert gain["rankme_ratio"] == pytest.approx(entry["trained"]["feature_quality"]["rankme_centred"]
                                                     / entry["random_init"]["feature_quality"]["rankme_centred"])
    # synthetic classes are learnable: even frozen features beat chance (10%) by far
    assert result["levels"][0]["trained"]["linear_top1"] > 0.3
    # the checkpoint (seed 1) and the random init (seed 0) are different weights
    assert result["levels"][0]["trained"]["feature_quality"] != result["levels"][0]["random_init"]["feature_quality"]
    assert result["protocol"]["knn"].startswith("k=20, T=0.07, cosine on L2-normalised features")
    assert set(result["timings_s"]) >= {"load_s", "extract_s", "knn_s", "linear_s", "total_s"}
    assert any(m.startswith("train: 200/200") for m in messages) and any(m.startswith("level 2") for m in messages)


def test_random_init_is_seeded_and_the_checkpoint_is_what_is_evaluated(tmp_path):
    # a checkpoint holding exactly the seed-0 random init: trained == random_init, gain 0, ratio 1
    values, model = _model(0)
    path = _save(tmp_path / "init.pt", {"model_state_dict": model.state_dict(), "config": values})
    result = evaluate_checkpoint(path, EvalSettings(n_train=60, n_test=30, seed=0, batch_size=30))
    assert result["config_source"] == "checkpoint" and result["model"]["num_hierarchies"] == 2
    for entry in result["levels"]:
        assert entry["trained"] == entry["random_init"]
        assert entry["gain"] == {"knn_top1": 0.0, "linear_top1": 0.0, "rankme_ratio": 1.0}


def test_evaluate_rejects_bad_arguments(tiny_ckpt, tmp_path):
    path = tiny_ckpt[2]
    with pytest.raises(UserError, match="device"):
        evaluate_checkpoint(path, EvalSettings(device="no-such-device"))
    with pytest.raises(UserError, match="n_train must be at least 2"):
        evaluate_checkpoint(path, EvalSettings(n_train=1))
    with pytest.raises(UserError, match="CIFAR-10 data not found"):
        evaluate_checkpoint(path, EvalSettings(overrides={"data.image_size": 64, "model.encoder_depth": 2,
                                                          "model.predictor.depth": 1, "model.num_hierarchies": 3},
                                               data="cifar10", data_path=tmp_path / "none"))
    with pytest.raises(UserError, match="does not match the model"):
        evaluate_checkpoint(path)  # quick_val defaults: 12 blocks, 224 px


def test_render_eval_markdown(tiny_result):
    result, _ = tiny_result
    md = render_eval_markdown(result)
    assert md.startswith("## Encoder evaluation")
    for level in (0, 1, 2):
        assert f"### Level {level} (D=192" in md
    assert md.count("| trained (EMA target) |") == 3 and md.count("| random init ") == 3
    header = "| features             | RankMe/D (centred)"
    assert md.count(header) == 3
    for col in ("mean cosine", "kNN top-1", "linear top-1"):
        assert col in md
    lvl0 = result["levels"][0]
    assert f"{100 * lvl0['trained']['knn_top1']:.1f}%" in md
    assert f"{100 * lvl0['gain']['linear_top1']:+.1f} pp" in md
    assert "- kNN: k=20, T=0.07" in md and "- Linear: scikit-learn LogisticRegression" in md
    assert "200 train / 100 test images at 64 px" in md


def test_a_comparison_that_says_nothing_says_so(tiny_result, tiny_ckpt, tmp_path):
    """Synthetic data, a CIFAR-10 folder that is not the standard 50,000 / 10,000 split, and a random-init
    baseline at the ceiling or at the trained model's accuracy are each named before the numbers."""
    import pickle

    from hjepa_bench.analysis.evaluation import BASELINE_CEILING_TOP1

    result, _ = tiny_result
    caveats = result["caveats"]
    assert any(c.startswith("synthetic images, not CIFAR-10") for c in caveats)
    for entry in result["levels"]:
        for key, name in (("knn_top1", "kNN"), ("linear_top1", "linear")):
            r, t = entry["random_init"][key], entry["trained"][key]
            said = any(c.startswith(f"level {entry['level']}: the random-init baseline scores {name}") for c in caveats)
            assert said == (r >= BASELINE_CEILING_TOP1 or r >= t), (entry["level"], name, r, t)
    assert "**The comparison below may say nothing:**" in render_eval_markdown(result)
    # a CIFAR-10 look-alike folder of 40 train / 10 test images
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{k}", 8) for k in range(1, 6)] + [("test_batch", 10)]:
        images = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"labels": rng.integers(0, 10, size=n).tolist(), b"data": images}, f)
    _values, _model, path = tiny_ckpt
    looks = evaluate_checkpoint(path, EvalSettings(overrides={"data.image_size": 64, "model.encoder_depth": 2,
                                                              "model.predictor.depth": 1, "model.num_hierarchies": 3},
                                                   data="cifar10", data_path=folder, n_train=30, n_test=10,
                                                   batch_size=10))
    assert looks["data"]["train_split_size"] == 40 and looks["data"]["test_split_size"] == 10
    assert any("40 train / 10 test images, not CIFAR-10's standard 50,000 / 10,000" in c for c in looks["caveats"])
