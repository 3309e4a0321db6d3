"""Bad input (readers, YAML, config values, flags, grids, output paths) gets one sentence and
exit 2 before any work, never a traceback or a hang.  The fuzz suite (tests/fuzz) draws such
input at random; the cases here name one example of each kind of bad input, run in-process."""
from __future__ import annotations

import json
import os
import signal
import time
import types
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from helpers import QUICK_VAL, TINY_FLAGS, UPSTREAM_CONFIGS
from test_logparse import build_log

from hjepa_bench import errors
from hjepa_bench.cli import main
from hjepa_bench.config import DEFAULTS, SCHEMA, _flatten_keys, resolve_config
from hjepa_bench.errors import UserError, input_file, output_path, parse_yaml, read_text, read_yaml

TINY_YAML = {"model": {"encoder_depth": 1, "predictor": {"depth": 1}}, "data": {"image_size": 32, "batch_size": 2,
                                                                                "num_workers": 0},
             "bench": {"synthetic_size": 16, "warmup_steps": 0, "min_steps": 1, "max_steps": 2}}


@contextmanager
def deadline(seconds: float = 10):
    """Fail instead of hanging (a reader that opens a FIFO blocks forever)."""
    def on_alarm(signum, frame):
        raise AssertionError(f"no answer within {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def cli(capsys, *args):
    """main() in this process, as the console script calls it; argparse exits become the code."""
    with deadline(60):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
    captured = capsys.readouterr()
    return types.SimpleNamespace(code=code, out=captured.out, err=captured.err)


def one_error(res, fragment: str = "") -> str:
    """Exit 2 and exactly one line on stderr, the error sentence (containing ``fragment``)."""
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert res.code == 2, res.err
    assert len(lines) == 1 and "error:" in lines[0], res.err
    assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """The work of every command fails the test if it starts: bad input must stop before it."""
    def forbidden(*a, **k):
        raise AssertionError("the work started although the input is bad")

    # (a command imports its work when it runs, so the work is replaced where it is defined)
    for module, name in (("hjepa_bench.measure.runner", "run_benchmark"),
                         ("hjepa_bench.measure.evaluate", "evaluate_checkpoint"),
                         ("hjepa_bench.measure.validation_run", "run_validation"),
                         ("hjepa_bench.measure.log_record", "analyze_log_file"),
                         ("hjepa_bench.measure.sweep", "run_in_child"),
                         ("hjepa_bench.report.benchmarks", "load_benchmark_json"),
                         ("hjepa_bench.measure.results", "load_results")):
        monkeypatch.setattr(f"{module}.{name}", forbidden)


@pytest.fixture
def tiny_yaml(tmp_path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY_YAML))
    return p


# --------------------------------------------------------------------------- the readers
def special(tmp_path: Path, kind: str) -> Path:
    """A path that is not a readable regular file of sane size."""
    p = tmp_path / f"special-{kind}"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "folder":
        p.mkdir()
    elif kind == "under-a-file":
        (tmp_path / "reg").write_text("a file\n")
        p = tmp_path / "reg" / "F"
    elif kind == "symlink-loop":
        os.symlink(p, p)
    elif kind == "huge":
        with open(p, "wb") as fh:
            fh.truncate(3 * 2**30)  # sparse: no disk used
    elif kind == "not-utf8":
        p.write_bytes(b"seed: \xff\xfe\n")
    return p


@pytest.mark.parametrize("kind,fragment", [
    ("fifo", "not a regular file"), ("folder", "is a folder"), ("under-a-file", "a part of its path is a file"),
    ("symlink-loop", "cannot be read"), ("huge", "the limit for a grid file is 1.00 MiB"),
    ("not-utf8", "is not UTF-8 text"), ("missing", "grid file not found"),
])
def test_read_text_refuses_what_is_not_a_sane_text_file(tmp_path, kind, fragment):
    p = special(tmp_path, kind)
    with deadline(5), pytest.raises(UserError, match=fragment):
        read_text(p, "grid file", errors.YAML_MAX_BYTES)


@pytest.mark.parametrize("args", [
    ["sweep", "--grid", "{F}", "--out", "{d}/sw"],
    ["sweep", "--device", "cpu", "--options-file", "{F}", "--out", "{d}/sw"],
    ["analyze", "--log", "{d}/train.log", "--thresholds", "{F}"],
    ["report", "{F}", "--out", "{d}/r.md"],
    ["benchmark-report", "{F}"],
    ["analyze", "--log", "{F}"],
    ["eval", "--checkpoint", "{F}", "--device", "cpu"],
    ["run", "--device", "cpu", "--config", "{F}"],
])
@pytest.mark.parametrize("kind", ["fifo", "huge"])
def test_every_reader_refuses_a_fifo_and_a_huge_file(capsys, tmp_path, monkeypatch, args, kind):
    """A FIFO or a 3 GiB file given as a grid, options, thresholds, results, benchmark JSON, log,
    checkpoint or config file gets one sentence and exit 2, never a hang or a MemoryError (a
    checkpoint has no size limit, so only its FIFO is tried)."""
    if kind == "huge" and args[0] == "eval":
        pytest.skip("a checkpoint has no size limit (torch.load reads it lazily)")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.log").write_text(build_log(truncated=False))
    f = special(tmp_path, kind)
    res = cli(capsys, *[a.replace("{F}", str(f)).replace("{d}", str(tmp_path)) for a in args])
    one_error(res, "not a regular file" if kind == "fifo" else "the limit for a")


def test_a_checkpoint_fifo_is_refused_before_torch_load(tmp_path):
    from hjepa_bench.hjepa.checkpoint import load_state_dict

    with deadline(5), pytest.raises(UserError, match="checkpoint .* not a regular file"):
        load_state_dict(special(tmp_path, "fifo"))


def test_results_jsonl_that_is_a_fifo_or_folder_in_a_sweep_folder(capsys, tmp_path, no_work):
    """``sweep --out DIR`` whose DIR/results.jsonl is a FIFO, a folder or a symlink loop gets one
    sentence and exit 2: never a hang, and a symlink loop is never taken for "no results yet"."""
    for kind, fragment in (("fifo", "not a regular file"), ("folder", "is a folder"),
                           ("symlink-loop", "cannot be read")):
        out = tmp_path / kind
        out.mkdir()
        target = out / "results.jsonl"
        if kind == "fifo":
            os.mkfifo(target)
        elif kind == "folder":
            target.mkdir()
        else:
            os.symlink(target, target)
        res = cli(capsys, "sweep", "--device", "cpu", "--options", "none", "--batch-sizes", "2", "--out", out)
        one_error(res, fragment)


# --------------------------------------------------------------------------- YAML
def deep(n: int) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("text,fragment", [
    ("model: " + deep(1000), "nested more than 50 levels deep"),
    ("zzz: " + "{a: " * 5000 + "1" + "}" * 5000, "nested more than 50 levels deep"),
    ("".join(f"a{i}: &a{i} x\n" for i in range(101)) + "b: [" + ", ".join(f"*a{i}" for i in range(101)) + "]\n",
     "more than 100 aliases"),
    ('a0: &a0 ["x","x","x","x","x","x","x","x","x"]\n'
     + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)), "more than 100,000 values"),
    ("b0: &b0 {x1: 1, x2: 2, x3: 3, x4: 4, x5: 5, x6: 6, x7: 7, x8: 8, x9: 9}\n"
     + "".join(f"b{i}: &b{i} {{{', '.join(f'k{j}: *b{i - 1}' for j in range(1, 10))}}}\n" for i in range(1, 9)),
     "more than 100,000 values"),
    ("zzz: !!python/object/apply:os.system ['echo pwned']\n", "could not determine a constructor"),
    ("1: 2\n", "the key 1 is not a name"),
    ("? [1, 2]\n: x\n", "unhashable key"),
    ("seed: 1\n---\nseed: 2\n", "expected a single document"),
])
def test_yaml_limits_and_refusals(text, fragment):
    """Nesting deeper than 50 levels, alias bombs (over 100 aliases or 100,000 values), code tags,
    keys that are not names, unhashable keys and several documents each get one sentence within
    5 s: never a RecursionError, a hang, or code run."""
    t0 = time.perf_counter()
    with deadline(10), pytest.raises(UserError, match=fragment):
        parse_yaml(text, "config file c.yaml")
    assert time.perf_counter() - t0 < 5


def test_yaml_types_without_json_become_json_types():
    """A date, !!binary or !!set in a section the record keeps (checkpoint:) is read as a JSON type,
    so the record can be written after the run: ISO text, the base64 text, and a mapping to null
    (YAML's definition)."""
    data = parse_yaml("checkpoint: {when: 2001-12-14, at: 2001-12-14 21:59:43.10, blob: !!binary aGVs\n  bG8=,"
                      " tags: !!set {a, b}}\nz: &z {a: 1}\ny: *z\n", "config file c.yaml")
    assert data["checkpoint"] == {"when": "2001-12-14", "at": "2001-12-14T21:59:43.100000", "blob": "aGVsbG8=",
                                  "tags": {"a": None, "b": None}}
    json.dumps(data, allow_nan=False)
    data["y"]["a"] = 2
    assert data["z"] == {"a": 1}  # aliases are expanded into copies


def test_yaml_reader_is_the_only_one(tmp_path):
    """config, grid, options and thresholds files all go through errors.read_yaml."""
    from hjepa_bench import config, options, thresholds
    from hjepa_bench.measure import sweep

    for module in (config, options, thresholds, sweep):
        assert "safe_load" not in Path(module.__file__).read_text(), module.__name__
    big = tmp_path / "big.yaml"
    big.write_text("# a comment line of a huge file\n" * 2**19)  # 16 MiB: PyYAML needs > 16 s
    t0 = time.perf_counter()
    with deadline(5), pytest.raises(UserError, match="the limit for a config file"):
        resolve_config(big)
    assert time.perf_counter() - t0 < 2


# --------------------------------------------------------------------------- config values
def resolve_text(tmp_path: Path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return resolve_config(p)


@pytest.mark.parametrize("text,fragment", [
    ("training: {lr: .nan}", "training.lr must be a finite number, not nan"),
    ("training: {weight_decay: .nan}", "training.weight_decay must be a finite number"),
    ("training: {warmup_epochs: .nan}", "training.warmup_epochs must be a finite number"),
    ("model: {predictor: {mlp_ratio: .nan}}", "model.predictor.mlp_ratio must be a finite number"),
    ("training: {betas: [0.9, 1.0]}", "training.betas[1] = 1.0 is out of range [0, 1)"),
    ("training: {betas: [0.9]}", "training.betas must be a pair"),
    ("training: {betas: [a]}", "training.betas must be a pair [low, high], not ['a']"),
    ("training: {betas: [0.9, 0.95, 0.99]}", "training.betas must be a pair"),
    ("training: {lr: 1" + "0" * 400 + "}", "training.lr must be a finite number, not 1000"),
    ("training: {epochs: 3.0}", "training.epochs must be a whole number, not 3.0"),
    ("training: {optimizer: sgd}", "training.optimizer 'sgd' is not supported; the H-JEPA step uses adamw."),
    ("bench: {precision: fp64}", "bench.precision 'fp64' is not one of auto, fp32, fp16, bf16."),
    ("loss: {hierarchy_weights: [1]}", "loss.hierarchy_weights [1] must list one weight per hierarchy level (2)."),
    ("loss: {hierarchy_weights: [a, b]}", "loss.hierarchy_weights[0] must be a finite number"),
    ("loss: {hierarchy_weights: [.inf, 1]}", "loss.hierarchy_weights[0] must be a finite number"),
    ("masking: {mask_scale: [2, 5]}", "masking.mask_scale[0] = 2 is out of range (0, 1]"),
    ("masking: {mask_scale: [0, 0.2]}", "masking.mask_scale[0] = 0 is out of range (0, 1]"),
    ("masking: {mask_scale: [0.3, 0.2]}", "low <= high"),
    ("masking: {aspect_ratio: [0.5, .nan]}", "masking.aspect_ratio[1] must be a finite number"),
    ("masking: {aspect_ratio: [-1, 1]}", "masking.aspect_ratio[0] = -1 is out of range"),
    ("seed: 100000000000000000000", "seed = 100000000000000000000 is out of range [0, 4294967295]"),
    ("seed: -1", "seed = -1 is out of range"),
    ("bench: {workload: [1]}", "bench.workload must be text"),
    ("bench: {persistent_workers: 'no'}", "bench.persistent_workers must be true or false, not 'no'"),
    ("data: {pin_memory: 'yes'}", "data.pin_memory must be true or false"),
    ("data: {augmentation: {horizontal_flip: 1}}", "data.augmentation.horizontal_flip must be true or false"),
    ("data: {augmentation: {color_jitter: .nan}}", "data.augmentation.color_jitter must be a finite number"),
    ("loss: {normalize_embeddings: 'no'}", "loss.normalize_embeddings must be true or false"),
    ("model: {embed_dim: 384}", "model.embed_dim 384 does not match vit_tiny_patch16_224, whose width is 192"),
    ("model: {encoder_type: [1]}", "model.encoder_type must be text"),
    ("bench: {max_time_s: .inf}", "bench.max_time_s must be a finite number"),
    ("bench: {limit_samples: 8}\ndata: {batch_size: 16}", "data.batch_size 16 is above the 8 samples"),
    ("model: 5", "config key model must be a mapping"),
])
def test_config_values_are_checked(tmp_path, text, fragment):
    """Every config value is checked for type and range when the file is read, before a run
    starts: NaN and inf, betas >= 1, string weights, mask scales out of (0, 1], negative or huge
    seeds, non-text workloads, 'no' as a boolean and an embed_dim that does not match the encoder
    each get one sentence naming the key."""
    with pytest.raises(UserError, match=None) as exc:
        resolve_text(tmp_path, text)
    assert fragment in str(exc.value)


def test_every_config_key_has_a_type_and_range():
    assert set(_flatten_keys(DEFAULTS)) <= set(SCHEMA)


def test_a_flag_value_is_checked_like_a_file_value():
    """check_value checks one key against the same field as a config file's value."""
    from hjepa_bench.config import check_value

    check_value("masking.mask_scale", (0.1, 0.2))  # a tuple is a pair too
    with pytest.raises(UserError, match=r"^masking.mask_scale\[1\] = 1.5 is out of range \(0, 1\]\.$"):
        check_value("masking.mask_scale", [0.1, 1.5])
    with pytest.raises(UserError, match=r"^bench.limit_samples = 0 is out of range \[1, 100000000\]\.$"):
        check_value("bench.limit_samples", 0)
    check_value("bench.limit_samples", None)
    with pytest.raises(UserError, match="unknown model 'vit_huge'"):
        check_value("model.encoder_type", "vit_huge")


def test_one_list_of_precisions():
    from hjepa_bench import config
    from hjepa_bench.plugin import api

    assert api.PRECISIONS is config.PRECISIONS == ("fp32", "fp16", "bf16")
    assert ("auto", *config.PRECISIONS) == config.PRECISION_SETTINGS


def test_valid_configs_still_resolve(tmp_path):
    paths = sorted(UPSTREAM_CONFIGS.glob("*.yaml"))
    assert len(paths) == 3
    for path in paths:  # the upstream files load unchanged
        resolve_config(path)
    rc = resolve_text(tmp_path, "model: {encoder_type: vit_small_patch16_224}")  # embed_dim not set: the width
    assert rc.values["model"]["embed_dim"] == 384
    rc = resolve_text(tmp_path, "model: {encoder_type: vit_small_patch16_224, embed_dim: 384}\nseed: 4294967295")
    assert rc.values["seed"] == 2**32 - 1


# --------------------------------------------------------------------------- overrides before use
def test_a_huge_hierarchy_override_is_refused_before_building_weights():
    """``--hierarchies 99999999999999999999`` is refused by its range within 2 s, before a list of
    that many weights is built."""
    t0 = time.perf_counter()
    with deadline(5), pytest.raises(UserError, match=r"model.num_hierarchies = 100000000000000000000 is out of range"):
        resolve_config(None, {"model.num_hierarchies": 10**20})
    with pytest.raises(UserError, match="model.num_hierarchies must be a whole number"):
        resolve_config(None, {"model.num_hierarchies": [1]})
    assert time.perf_counter() - t0 < 2


# --------------------------------------------------------------------------- sweep grids
@pytest.mark.parametrize("grid,fragment", [
    ("devices: [[1]]", "devices must be a non-empty list of names"),
    ("models: [[1]]", "model.encoder_type must be text"),
    ("config: 5", "config must be a file name"),
    ("batch_sizes: [a, 1]", "data.batch_size must be a whole number, not 'a'"),
    ("batch_sizes: []", "batch_sizes must be a non-empty list"),
    ("hierarchies: [[1]]", "model.num_hierarchies must be a whole number"),
    ("hierarchies: [2, 7]", "model.num_hierarchies = 7 is out of range [1, 4]"),
    ("timeout_s: 'no'", "timeout_s must be a number of seconds"),
    ("timeout_s: .nan", "timeout_s must be a number of seconds"),
    ("probes: 0", "probes must be a list of names"),
    ("options: -1", "options must be a non-empty list of names"),
    ("options_file: [x]", "options_file must be a file name"),
    ("persistent_workers: 'no'", "bench.persistent_workers must be true or false"),
    ("encoder_depth: x", "model.encoder_depth must be a whole number"),
    ("skip_after_oom: [1]", "skip_after_oom must be true or false"),
    ("limit_samples: 4\nbatch_sizes: [8]", "data.batch_size 8 is above the 4 samples"),
    ("workload: nope\nbatch_sizes: [2]\nimg_sizes: [32]\noptions: [none]", "unknown workload 'nope'"),
])
def test_grid_files_are_typed_on_read(capsys, tmp_path, no_work, grid, fragment):
    """A grid file's values are typed when it is read: devices [[1]], models [[1]], config: 5,
    batch_sizes [a, 1], timeout_s 'no', probes 0, options -1, options_file [x] and the rest each get
    one sentence and exit 2, never a traceback, and no sweep starts."""
    g = tmp_path / "g.yaml"
    g.write_text(grid + "\n")
    res = cli(capsys, "sweep", "--grid", g, "--device", "cpu", "--out", tmp_path / "sw", "-q")
    one_error(res, fragment)
    assert not (tmp_path / "sw" / "results.jsonl").exists()


@pytest.mark.parametrize("flags,fragment", [
    (["--batch-sizes", "0", "--options", "none"], "data.batch_size = 0 is out of range"),
    (["--img-size", "33"], "data.image_size 33 must be a multiple of the patch size 16"),
    (["--img-size", "0"], "data.image_size = 0 is out of range"),
    (["--precisions", "fp64"], "bench.precision 'fp64' is not one of"),
    (["--variants", "fast"], "bench.variant 'fast' is not one of"),
    (["--max-time", "inf"], "bench.max_time_s must be a finite number, not inf"),
    (["--timeout", "nan"], "argument --timeout: 'nan' is not a finite number"),
    (["--budget-hours", "inf"], "argument --budget-hours: 'inf' is not a finite number"),
    (["--hierarchies", "2,7"], "model.num_hierarchies = 7 is out of range"),
    (["--batch-sizes", "1,,2"], "is not a comma-separated list"),
    (["--encoder-depth", "655891"], "model.encoder_depth = 655891 is out of range"),
])
def test_invalid_grid_values_are_usage_errors_not_unsupported(capsys, tmp_path, no_work, flags, fragment):
    """An invalid grid value given as a flag is a usage error (one sentence, exit 2) before the sweep
    starts, never an "unsupported" point recorded while the sweep goes on with the rest."""
    res = cli(capsys, "sweep", "--device", "cpu", "--options", "A", *flags, "--out", tmp_path / "sw", "-q")
    one_error(res, fragment)
    assert not (tmp_path / "sw").exists()


# --------------------------------------------------------------------------- output paths
@pytest.fixture
def places(tmp_path, monkeypatch):
    """A regular file ``reg``, a folder ``adir``, the golden inputs, and the cwd in tmp_path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reg").write_text("a regular file\n")
    (tmp_path / "adir" / "r.md").mkdir(parents=True)
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "results.jsonl").write_text("")
    (tmp_path / "train.log").write_text(build_log(truncated=False))
    (tmp_path / "now.json").write_text(json.dumps({"benchmarks": []}))
    return tmp_path


@pytest.mark.parametrize("args,fragment", [
    (["run", "--device", "cpu", "--json", "reg/x.json"], "--json reg/x.json cannot be created: "),
    (["run", "--device", "cpu", "--report", "reg/x.md"], "--report reg/x.md cannot be created"),
    (["run", "--device", "cpu", "--json", "adir"], "--json adir is a folder; give a file path"),
    (["run", "--device", "cpu", "--probes", "stability", "--trace-dir", "reg"], "--trace-dir reg is a file"),
    (["eval", "--checkpoint", "ck.pth", "--out", "reg"], "--out reg is a file, not a folder"),
    (["validate", "--device", "cpu", "--out", "reg"], "--out reg is a file, not a folder"),
    (["validate", "--device", "cpu", "--out", "reg/out"], "--out reg/out cannot be created"),
    (["report", "res", "--out", "reg/r.md"], "report reg/r.md cannot be created"),
    (["report", "res", "--out", "adir/r.md/"], "report adir/r.md is a folder"),
    (["analyze", "--log", "train.log", "--out", "reg"], "--out reg is a file, not a folder"),
    (["benchmark-report", "now.json", "--out", "reg/b.md"], "--out reg/b.md cannot be created"),
    (["benchmark-report", "now.json", "--out", "adir"], "--out adir is a folder"),
    (["sweep", "--device", "cpu", "--out", "reg"], "--out reg is a file, not a folder"),
])
def test_output_paths_are_checked_before_the_work(capsys, places, no_work, args, fragment):
    """An output path that cannot be written (under a regular file, a folder where a file goes, a
    file where a folder goes) gets one sentence and exit 2 before the work starts, so no run ends
    without its ``--json`` record and no sweep fails at its first append."""
    one_error(cli(capsys, *args), fragment)


def test_output_path_refuses_an_unwritable_folder(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write everywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(UserError, match="is not writable"):
        output_path(locked / "sub" / "x.json", "--json")


def test_output_path_accepts_new_and_existing_targets(tmp_path):
    (tmp_path / "old.json").write_text("{}")
    assert output_path(tmp_path / "a" / "b" / "x.json", "--json") == tmp_path / "a" / "b" / "x.json"
    output_path(tmp_path / "old.json", "--json")
    output_path(tmp_path, "--out", folder=True)
    assert not (tmp_path / "a").exists()  # checked, not created


# --------------------------------------------------------------------------- flags
@pytest.mark.parametrize("args,fragment", [
    (["report", "res", "--budget-hours", "nan"], "argument --budget-hours: 'nan' is not a finite number"),
    (["run", "--max-time", "nan"], "argument --max-time: bench.max_time_s must be a finite number, not nan"),
    (["run", "--target-precision", "inf"], "argument --target-precision: bench.target_rel_precision must be"),
    (["benchmark-report", "now.json", "--threshold", "inf"], "argument --threshold: 'inf' is not a finite number"),
    (["benchmark-report", "now.json", "--threshold", "nan"], "argument --threshold"),
    (["sweep", "--timeout", "inf"], "argument --timeout"),
    (["validate", "--epochs", "0"], "argument --epochs: 0 is out of range [1, 1000]"),
    (["eval", "--checkpoint", "ck.pth", "--workers", "100000"], "data.num_workers = 100000 is out of range"),
    (["eval", "--checkpoint", "ck.pth", "--seed", str(10**20)], "seed = 100000000000000000000 is out of range"),
    (["run", "--seed", str(10**20)], "seed = 100000000000000000000 is out of range"),
    (["run", "--hierarchies", "99999999999999999999"], "model.num_hierarchies = 99999999999999999999 is out of"),
    (["run", "--batch-size", "0"], "data.batch_size = 0 is out of range"),
    (["eval", "--checkpoint", "ck.pth", "--n-train", "1"], "argument --n-train: 1 is out of range"),
    (["analyze", "--log", "train.log", "--predictor-depth", "159"], "model.predictor.depth = 159 is out of range"),
    (["analyze", "--log", "train.log", "--dataset-size", "0"], "argument --dataset-size: 0 is out of range"),
])
def test_numeric_flags_are_finite_and_bounded(capsys, places, no_work, args, fragment):
    """Numeric flags are finite and in range before any work starts: NaN/inf, ``validate --epochs
    0``, huge worker counts and seeds beyond 32 bits each get one sentence and exit 2, and analyze
    checks its flags even where the log overrides them."""
    one_error(cli(capsys, *args), fragment)


def test_analyze_says_which_flags_the_log_overrides(capsys, places):
    res = cli(capsys, "analyze", "--log", "train.log", "--batch-size", "16", "--model", "vit_tiny",
              "--dataset-size", "50000")
    assert res.code == 0, res.err
    warnings = [ln for ln in res.err.splitlines() if ln.startswith("warning:")]
    assert "warning: --batch-size 16 is not used: the log shows the run used 32" in warnings
    assert "warning: --dataset-size 50000 is not used: the log shows the run used 9600" in warnings
    assert not any("--model" in w for w in warnings)  # vit_tiny is the log's encoder


# --------------------------------------------------------------------------- a run that fails
def test_a_failed_run_says_why_on_stderr_even_with_q(capsys, tmp_path, monkeypatch):
    """A failed ``run -q`` exits 1 with one line on stderr: the status and why."""
    monkeypatch.setenv("HJEPA_BENCH_TEST_FAULTS", json.dumps({"4": "nan"}))
    res = cli(capsys, "-p", "fault_plugin", "run", "--device", "cpu", "--workload", "hjepa_faults",
              "--config", QUICK_VAL, *TINY_FLAGS, "--probes", "none", "-q")
    lines = res.err.strip().splitlines()
    assert res.code == 1 and res.out == "" and len(lines) == 1, res.err
    assert lines[0].startswith("hjepa-bench run: status diverged: ") and "non-finite loss" in lines[0]


def test_input_file_names_what_it_reads(tmp_path):
    with pytest.raises(UserError, match="^options file not found: "):
        read_yaml(tmp_path / "nope.yaml", "options file")
    assert input_file(QUICK_VAL, "config file") == QUICK_VAL


def test_a_sweep_checks_its_base_config_on_its_own(capsys, tmp_path, no_work):
    """The grid's model (vit_tiny by default) replaces the config's encoder and its width: an
    embed_dim that does not fit the config's own encoder must still be an error."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {encoder_type: vit_tiny_patch16_224, embed_dim: 384}\n")
    res = cli(capsys, "sweep", "--config", cfg, "--device", "cpu", "--options", "none", "--out", tmp_path / "sw")
    one_error(res, "model.embed_dim 384 does not match vit_tiny_patch16_224")
