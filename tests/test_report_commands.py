"""End to end on CPU: the sweep's decision report, `report`, `analyze`, `validate` and `eval`
through the real console entry."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import pytest
import torch
import yaml
from helpers import run_cli
from test_logparse import build_log

from hjepa_bench.config import resolve_config

TINY_OPTION = """options:
  - name: T
    title: Tiny smoke option
    hours: [0, 1000]
    priority: 7
    model: {encoder_depth: 2, predictor: {depth: 1}}
    data: {image_size: 64, batch_size: 4, num_workers: 0}
    training: {epochs: 2, warmup_epochs: 1}
"""
# at least 5 measured steps: an option whose step-time CV was not measured is never recommended
TINY_SWEEP = ["--device", "cpu", "--img-size", "64", "--encoder-depth", "2", "--predictor-depths", "1",
              "--batch-sizes", "4,8", "--workers", "0", "--warmup-steps", "1", "--min-steps", "5", "--max-steps", "6",
              "--max-time", "10", "-q"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    (root / "opts.yaml").write_text(TINY_OPTION)
    out = root / "sweep"
    res = run_cli("sweep", *TINY_SWEEP, "--options", "T", "--options-file", str(root / "opts.yaml"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    return root, out


def _images(report: Path) -> list[Path]:
    text = report.read_text()
    rels = [line.split("](", 1)[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    return [report.parent / r for r in rels]


@pytest.mark.slow
def test_sweep_report_has_matrix_projection_criteria_and_charts(swept):
    _root, out = swept
    report = out / "report.md"
    text = report.read_text()
    for heading in ("## Recommendation", "## Decision matrix", "## Time-to-train projections", "## Recommendations",
                    "## Success criteria", "## Post-validation checklist", "## Lessons learned", "## Charts",
                    "## Reference baselines", "## Thresholds", "## Measurements"):
        assert heading in text, heading
    # option T's model config was measured at batch 4 and 8; A, B, C were not measured
    row = next(line for line in text.splitlines() if line.startswith("| T "))
    assert ("b4 w0" in row or "b8 w0" in row) and "not measured: no number" not in row
    assert "| A        | vit_tiny, 2 levels, predictor depth 4" in text and "not measured: no number" in text
    assert "published (BYOL paper, Table 3)" in text and "target (the guide's), not a result" in text
    images = _images(report)
    assert {p.name for p in images} >= {"throughput_vs_batch.png", "step_time_over_run.png", "memory_vs_batch.png",
                                        "loss_curve.png"}
    for p in images:
        assert mpimg.imread(p).ndim == 3  # a real image, opened from the relative path
    analysis = json.loads((out / "report.json").read_text())
    t_row = next(r for r in analysis["matrix"] if r["option"] == "T")
    proj = t_row["projection"]
    batch = t_row["batch"]
    assert batch == t_row["batch_choice"]["batch"] in (4, 8)  # the larger batch only if it gains >= 5 %
    assert proj["steps_per_epoch"] == 50_000 // batch and proj["total_steps"] == 2 * (50_000 // batch)
    assert proj["overheads_s"]["validation"] > 0  # measured by the epoch_costs probe in the sweep child
    assert t_row["hours"] == pytest.approx(proj["total_s"]["mid"] / 3600)


@pytest.mark.slow
def test_option_configs_are_ready_to_run_upstream_yaml(swept):
    _, out = swept
    cfg = out / "configs" / "option_T.yaml"
    data = yaml.safe_load(cfg.read_text())
    row = next(r for r in json.loads((out / "report.json").read_text())["matrix"] if r["option"] == "T")
    # the config carries the report's one worker advice (the measured 0 workers, or what the advice says
    # when the data wait of this machine calls for more)
    advised = (row.get("workers_choice") or {}).get("workers", row["workers"])
    assert "bench" not in data and data["data"]["batch_size"] == row["batch"]
    assert data["data"]["num_workers"] == advised
    assert f"# num_workers {advised}: " in cfg.read_text()
    values = resolve_config(cfg).values  # loads as an upstream config
    assert values["training"]["epochs"] == 2 and values["model"]["encoder_depth"] == 2
    b = yaml.safe_load((out / "configs" / "option_B.yaml").read_text())
    assert b["model"]["encoder_type"] == "vit_small_patch16_224" and b["training"]["warmup_epochs"] == 10


@pytest.mark.slow
def test_report_command_merges_dirs_and_applies_the_budget(swept, tmp_path):
    root, out = swept
    dest = tmp_path / "r" / "report.md"
    # a few tiny steps on a shared machine can vary a lot: judge this test on the budget alone
    loose = tmp_path / "loose.yaml"
    loose.write_text("max_step_cv_pct: 100000\n")
    res = run_cli("report", str(out), "--out", str(dest), "--options-file", str(root / "opts.yaml"),
                  "--budget-hours", "100000", "--thresholds", str(loose))
    assert res.returncode == 0, res.stderr
    text = dest.read_text()
    assert "**Run option T**" in text, text[:2000]
    assert "Budget: 100000 h" in text and "| max_step_cv_pct       | 100000" in text
    assert all(p.exists() for p in _images(dest))
    tight = run_cli("report", str(out), "--out", str(tmp_path / "t" / "report.md"), "--options-file",
                    str(root / "opts.yaml"), "--budget-hours", "0.0001", "--no-charts", "--thresholds", str(loose))
    assert tight.returncode == 0, tight.stderr
    assert "**No option is recommended**" in (tmp_path / "t" / "report.md").read_text()


@pytest.mark.slow
def test_report_command_bad_input_is_one_sentence(tmp_path):
    res = run_cli("report", str(tmp_path / "missing"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "does not exist" in res.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.jsonl").write_text('{"a": 1}\n{"b": 2}\n')
    res = run_cli("report", str(bad))  # each bad line is named, then one error: nothing is left
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 3 and "line 1: not a valid record" in lines[0]
    assert lines[2].startswith("hjepa-bench: error: no valid result records in")
    th = tmp_path / "th.yaml"
    th.write_text("not_a_threshold: 3\n")
    res = run_cli("report", str(bad), "--thresholds", str(th))
    assert res.returncode == 2


# --------------------------------------------------------------------------- analyze
@pytest.mark.slow
def test_analyze_upstream_log(tmp_path):
    log = tmp_path / "training_run.log"
    log.write_text(build_log())
    out = tmp_path / "an"
    res = run_cli("analyze", "--log", str(log), "--out", str(out))
    assert res.returncode == 0, res.stderr
    data = json.loads((out / "analysis.json").read_text())
    e1 = data["epochs"][0]
    assert {"epoch", "steps", "elapsed_s", "it_per_s"} <= set(e1)
    assert e1["steps"] == 300 and e1["elapsed_s"] == 165 and e1["it_per_s"] == pytest.approx(300 / 165)
    assert e1["bar_it_per_s"] == pytest.approx(2.5)  # what tqdm showed, not what is used
    assert data["loss"]["points"][0] == [0, 1.0] and data["loss"]["decrease_pct"] > 20
    verdicts = {c["id"]: c["status"] for c in data["criteria"]}
    assert verdicts["stability"] == "fail"  # the log stops in epoch 2 of 2
    assert verdicts["learning"] == "pass" and verdicts["performance"] == "fail"
    text = (out / "report.md").read_text()
    assert "truncated file" in text and "## Training log" in text
    assert (out / "charts" / "log_loss.png").exists() and (out / "charts" / "log_speed.png").exists()
    # the logged config is projected (9,600 images per epoch, as the log says), never recommended
    row = next(r for r in data["matrix"] if r["option"] == "L")
    assert row["projection"]["steps_per_epoch"] == 9600 // 32 and row["candidate"] is False


@pytest.mark.parametrize("content,needle", [
    (b"", "empty"),
    (b"\x00\x01\x02binary\x00" * 50, "binary"),
    (b"# My project\n\nSome README text.\n", "does not look like"),
])
@pytest.mark.slow
def test_analyze_bad_files_exit_2(tmp_path, content, needle):
    log = tmp_path / "x.log"
    log.write_bytes(content)
    res = run_cli("analyze", "--log", str(log))
    assert res.returncode == 2 and needle in res.stderr.lower() and res.stderr.count("\n") == 1


# --------------------------------------------------------------------------- validate + eval
@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "run"
    res = run_cli("validate", "--device", "cpu", "--epochs", "2", "--img-size", "64", "--encoder-depth", "2",
                  "--predictor-depth", "1", "--batch-size", "4", "--workers", "0", "--limit-samples", "24",
                  "--features-n", "24", "--out", str(out), "-q")
    assert res.returncode == 0, res.stderr
    return out, res


@pytest.mark.slow
def test_validate_writes_checkpoints_and_a_report_with_criteria(validated):
    out, res = validated
    result = json.loads((out / "validation.json").read_text())
    assert result["status"] == "ok" and result["epochs_completed"] == 2
    assert (out / "checkpoints" / "checkpoint_latest.pth").exists()
    assert (out / "checkpoints" / "checkpoint_best.pth").exists()
    data = json.loads((out / "report.json").read_text())
    verdicts = {c["id"]: c for c in data["criteria"]}
    assert verdicts["stability"]["status"] == "pass" and "2/2 epochs" in verdicts["stability"]["evidence"]
    assert verdicts["performance"]["value"] is not None
    # measured on the EMA target encoder, after far fewer steps than min_quality_steps: shown, not judged
    steps = len(result["steps"]["loss"])
    assert verdicts["quality"]["status"] == "not measured"
    assert f"untrained: {steps} steps, not judged" in verdicts["quality"]["evidence"]
    assert "Stability" in res.stdout and "report:" in res.stdout
    v_row = next(r for r in data["matrix"] if r["option"] == "V")
    assert v_row["projection"]["epochs"] == 2 and v_row["hours"] > 0
    assert "## Validation run" in (out / "report.md").read_text()


@pytest.mark.slow
def test_eval_on_a_validate_checkpoint_against_random_init(validated, tmp_path):
    out, _ = validated
    res = run_cli("eval", "--checkpoint", str(out / "checkpoints" / "checkpoint_latest.pth"), "--device", "cpu",
                  "--n-train", "60", "--n-test", "30", "--out", str(tmp_path / "ev"), "-q")
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert len(result["levels"]) == 2
    for level in result["levels"]:
        for side in ("trained", "random_init"):
            assert 0.0 <= level[side]["knn_top1"] <= 1.0 and 0.0 <= level[side]["linear_top1"] <= 1.0
            assert level[side]["feature_quality"]["rankme"] > 0
    assert "kNN" in res.stdout


@pytest.mark.slow
def test_eval_limit_samples_selects_the_first_training_images(validated, tmp_path):
    """--limit-samples means on eval what it means on run and validate: only the first N images of the
    training split; --n-train then takes at most N of them, and the test split is not cut."""
    out, _ = validated
    ckpt = str(out / "checkpoints" / "checkpoint_latest.pth")
    res = run_cli("eval", "--checkpoint", ckpt, "--device", "cpu", "--limit-samples", "40", "--n-train", "60",
                  "--n-test", "30", "--out", str(tmp_path / "ev"), "-q")
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert result["data"]["n_train"] == 40 and result["data"]["n_test"] == 30
    assert result["data"]["limit_samples"] == 40
    assert any("--limit-samples 40" in n and "asked for 60" in n for n in result["notes"])


@pytest.mark.slow
def test_eval_names_the_first_mismatching_keys(validated, tmp_path):
    out, _ = validated
    ck = torch.load(out / "checkpoints" / "checkpoint_latest.pth", weights_only=False)
    sd = ck["model_state_dict"]
    sd["predictor.extra_weight"] = sd.pop("predictor.head.weight")
    broken = tmp_path / "broken.pth"
    torch.save({"model_state_dict": sd, "config": ck["config"]}, broken)
    res = run_cli("eval", "--checkpoint", str(broken), "--device", "cpu", "-q")
    assert res.returncode == 2
    assert "predictor.head.weight" in res.stderr and "predictor.extra_weight" in res.stderr


@pytest.mark.slow
def test_validate_ctrl_c_keeps_checkpoint_and_writes_the_report(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import REPO

    out = tmp_path / "int"
    args = [sys.executable, "-m", "hjepa_bench", "validate", "--device", "cpu", "--epochs", "50", "--img-size", "64",
            "--encoder-depth", "2", "--predictor-depth", "1", "--batch-size", "4", "--workers", "0",
            "--limit-samples", "40", "--features-n", "16", "--feature-every", "0", "--out", str(out), "-q"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "validation.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (out / "validation.json").exists(), "no epoch finished in time"
    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    result = json.loads((out / "validation.json").read_text())
    assert result["status"] == "interrupted" and 1 <= result["epochs_completed"] < 50
    assert (out / "checkpoints" / "checkpoint_latest.pth").exists()
    text = (out / "report.md").read_text()
    assert "status **interrupted**" in text and "## Success criteria" in text
