"""The CLI end to end in real child processes: run, inspect, devices, plugins and bad input."""
from __future__ import annotations

import json
import types

import pytest
from helpers import QUICK_VAL, TINY_FLAGS

from hjepa_bench.cli import main
from hjepa_bench.record import check_record


@pytest.mark.slow
def test_run_writes_a_valid_ok_record(cli, tmp_path):
    out, report = tmp_path / "out.json", tmp_path / "report.md"
    res = cli("run", "--device", "cpu", "--config", str(QUICK_VAL), *TINY_FLAGS, "--workers", "2",
              "--json", str(out), "--report", str(report))
    assert res.returncode == 0, res.stderr
    assert "status: ok" in res.stdout and "it/s" in res.stdout
    r = json.loads(out.read_text())
    check_record(r)
    assert r["status"] == "ok"
    m = r["metrics"]
    for key in ("it_per_s", "samples_per_s", "data_wait_frac", "peak_device_bytes"):
        assert m[key] is not None and m[key] >= 0
    assert set(m["step_time_s"]) >= {"median", "iqr", "cv", "p10", "p90", "n"}
    assert r["config"]["data"]["num_workers"] == 2 and r["config"]["bench"]["device"] == "cpu"
    assert r["config"]["bench"]["precision"] == "fp32"
    assert r["config"]["training"]["lr"] == 1.0e-4  # every value of the YAML is in the record
    assert r["env"]["torch"] and r["env"]["cpu_count_logical"] >= 1 and r["env"]["fingerprint_id"]
    assert any("no effect" in w for w in r["config_warnings"])
    text = report.read_text()
    assert "## Measured step speed" in text and "| ok " in text


@pytest.mark.slow
def test_run_efficient_variant(cli, tmp_path):
    out = tmp_path / "e.json"
    res = cli("run", "--device", "cpu", "--variant", "efficient", *TINY_FLAGS, "--json", str(out), "-q")
    assert res.returncode == 0, res.stderr
    r = json.loads(out.read_text())
    assert r["status"] == "ok" and r["config"]["bench"]["variant"] == "efficient"


def _one_sentence(res):
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def _in_process(capsys, *args):
    """The same main() the console script calls, in this process (fast for bad input)."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse errors
        code = exc.code
    captured = capsys.readouterr()
    return types.SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


@pytest.mark.parametrize("args,fragment", [
    (["run", "--device", "mps"], "device mps is not available"),
    (["run", "--device", "tpu"], "unknown device 'tpu'"),
    (["run", "--device", "cpu", "--model", "vit_gigantic"], "unknown model"),
    (["run", "--device", "cpu", "--batch-size", "many"], "data.batch_size must be a whole number, not 'many'"),
    (["run", "--device", "cpu", "--data", "cifar10", "--data-path", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["inspect", "--config", "/nonexistent.yaml"], "config file not found"),
    (["run", "--device", "cpu", "--config", "quick_vall"], "unknown preset 'quick_vall'; the presets are "),
    (["sweep", "--config", "full_20"], "unknown preset 'full_20'"),
    (["run", "--device", "cpu", "--frobnicate"], "unrecognized arguments"),
])
def test_bad_input_gets_one_sentence_and_exit_2(capsys, args, fragment):
    res = _in_process(capsys, *args)
    assert res.returncode == 2
    assert fragment in _one_sentence(res)


@pytest.mark.slow
def test_unavailable_device_names_the_available_ones(cli):
    res = cli("run", "--device", "mps")  # the real console entry, in a child process
    assert res.returncode == 2
    assert "available: cpu" in _one_sentence(res)


def test_broken_yaml_is_one_sentence(capsys, tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("model:\n  encoder_type: [vit_tiny\n")
    res = _in_process(capsys, "run", "--device", "cpu", "--config", str(bad))
    assert res.returncode == 2 and "not valid YAML" in _one_sentence(res)


@pytest.mark.slow
def test_inspect_reports_exact_counts_and_flops(cli):
    res = cli("inspect", "--config", str(QUICK_VAL), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["params"] == {"total": 12_051_264, "trainable": 6_526_848}
    ref = info["flops_per_step"]["reference"]["total"]
    assert abs(ref / 403e9 - 1) < 0.05  # upstream: ~403 GFLOP at batch 32, 224 px
    assert info["flops_per_step"]["efficient"]["total"] < 0.8 * ref
    assert info["attention_counted"] is True
    assert info["tokens_per_sample"]["reference"]["context_encoder"] == 197


@pytest.mark.slow
def test_run_a_preset_by_name_from_any_folder(cli, tmp_path):
    """--config takes the name of a built-in preset, wherever the command runs."""
    out = tmp_path / "r.json"
    res = cli("run", "--device", "cpu", "--config", "quick_val", *TINY_FLAGS, "--json", str(out), "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    r = json.loads(out.read_text())
    assert r["status"] == "ok" and r["config"]["training"]["epochs"] == 5  # quick_val's own value
    assert r["config"]["data"]["image_size"] == 64 and r["config"]["data"]["batch_size"] == 4


@pytest.mark.slow
def test_presets_lists_the_built_in_configs_with_counted_parameters(capsys):
    res = _in_process(capsys, "presets", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["quick_val"]["params"] == {"total": 12_051_264, "trainable": 6_526_848}
    assert rows["full_20epoch"]["params"] == {"total": 12_940_992, "trainable": 7_416_576}
    assert rows["full_100epoch"]["params"] == {"total": 54_573_312, "trainable": 32_907_648}
    assert rows["full_100epoch"]["model"] == "vit_small_patch16_224" and rows["full_100epoch"]["epochs"] == 100
    text = _in_process(capsys, "presets").stdout
    assert "54,573,312" in text and "quick_val" in text
    info = json.loads(_in_process(capsys, "inspect", "--config", "full_20epoch", "--json").stdout)
    assert info["params"] == rows["full_20epoch"]["params"]


def test_devices_and_plugins_listings(capsys):
    res = _in_process(capsys, "devices", "--json")
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["cpu"]["available"] and rows["cpu"]["precisions"]["fp32"] == "ok"
    assert not rows["mps"]["available"] and rows["mps"]["reason"]
    assert "--device auto picks:" in _in_process(capsys, "devices").stdout
    plg = _in_process(capsys, "plugins")
    assert plg.returncode == 0 and "hjepa_bench.builtin.backend_cpu" in plg.stdout


def _subparsers():
    from hjepa_bench.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def test_data_flags_have_the_same_names_and_meanings_on_every_command():
    """Every command that reads a data set takes the same data-selecting flags, from one definition
    (commands/common.add_data_args): --data, --data-path and --limit-samples; the commands that train
    through a DataLoader restarted every epoch also take --[no-]persistent-workers."""
    cmds = _subparsers()

    def flags(name):
        return {opt: a for a in cmds[name]._actions for opt in a.option_strings}

    readers = [name for name, p in cmds.items() if "--data" in flags(name)]
    assert sorted(readers) == ["eval", "run", "sweep", "validate"]
    for flag in ("--data", "--data-path", "--limit-samples"):
        seen = {(a.dest, a.help, tuple(a.choices or ()), a.type, a.metavar)
                for a in (flags(name)[flag] for name in readers)}
        assert len(seen) == 1, (flag, seen)
    assert all("--persistent-workers" in flags(n) and "--no-persistent-workers" in flags(n)
               for n in ("run", "sweep", "validate"))
    eval_help = cmds["eval"].format_help()
    assert "--limit-samples" in eval_help and "at most --limit-samples" in " ".join(eval_help.split())
