"""Security: plant a payload and prove it does not run.

Each payload creates a marker file when it is unpickled.  A control step first shows the
payload is live (plain unpickling creates the marker); then the CLI must refuse the input
in one sentence (exit 2) and the marker must not exist.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import generators as gen
import numpy as np
import pytest
import torch
from harness import Case, invoke, problems


class Payload:
    """Unpickling this runs ``exec`` of code that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"import pathlib; pathlib.Path({self.marker!r}).write_text('the payload ran')",))


def _one_sentence(res, what: str) -> None:
    found = problems(Case(target="security", valid=False, argv=res.argv), res)
    assert not found, f"{what}: {found}; exit {res.rc}; stderr {res.err!r}; {res.tb}"


def _prove_live(marker: Path, load) -> None:
    """The control: loading the file the unsafe way does run the payload."""
    load()
    assert marker.exists(), "the payload did not run on a plain unpickle: the test proves nothing"
    marker.unlink()


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("layout", ["beside the weights", "inside model_state_dict", "the whole file"])
def test_eval_refuses_a_checkpoint_that_would_run_code(fuzz, tmp_path, layout):
    marker = tmp_path / "marker"
    sd = {k: v.clone() for k, v in fuzz.checkpoint["model_state_dict"].items()}
    if layout == "beside the weights":
        obj = {"model_state_dict": sd, "config": fuzz.checkpoint["config"], "extra": Payload(marker)}
    elif layout == "inside model_state_dict":
        sd["predictor.extra"] = Payload(marker)
        obj = {"model_state_dict": sd, "config": fuzz.checkpoint["config"]}
    else:
        obj = Payload(marker)
    path = tmp_path / "evil.pth"
    torch.save(obj, path)
    _prove_live(marker, lambda: torch.load(path, weights_only=False))

    res = invoke(["eval", "--checkpoint", str(path), "--device", "cpu", "-q", "--n-train", "20", "--n-test", "10",
                  "--out", str(tmp_path / "ev")])
    assert not marker.exists(), "the checkpoint's pickle code ran"
    _one_sentence(res, "eval of a crafted checkpoint")
    assert "exec" in res.err and "re-save" in res.err  # names the global and says what to do


def test_eval_still_loads_numpy_scalars_without_running_code(fuzz, tmp_path):
    """The one allowlisted extra: numpy scalars, e.g. an upstream best_val_loss."""
    path = tmp_path / "np.pth"
    torch.save({**fuzz.checkpoint, "best_val_loss": np.float64(0.25), "epoch": np.int64(2)}, path)
    res = invoke(["eval", "--checkpoint", str(path), "--device", "cpu", "-q", "--n-train", "20", "--n-test", "10"])
    assert res.engine, (res.rc, res.err, res.tb)  # loaded, config and model built: it would now evaluate


# --------------------------------------------------------------------------- CIFAR-10
def _cifar(folder: Path, marker: Path, evil: str) -> Path:
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": [int(x) for x in rng.integers(0, 10, 20)],
                 b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * 20}
        if name == evil:
            batch[b"data"] = Payload(marker)
        with open(root / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}
    if evil == "batches.meta":
        meta[b"label_names"] = Payload(marker)
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump(meta, fh)
    return root


@pytest.mark.parametrize("evil", ["data_batch_1", "batches.meta"])
@pytest.mark.parametrize("command", ["run", "validate", "eval"])
def test_cifar_reader_refuses_a_batch_that_would_run_code(fuzz, tmp_path, command, evil):
    marker = tmp_path / "marker"
    data = tmp_path / "data"
    root = _cifar(data, marker, evil)
    _prove_live(marker, lambda: pickle.load(open(root / evil, "rb"), encoding="bytes"))

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(gen.TINY_YAML)
    common = ["--device", "cpu", "--data", "cifar10", "--data-path", str(data)]
    argv = {"run": ["run", "--config", str(cfg), "--probes", "none", "-q", *common],
            "validate": ["validate", "--config", str(cfg), "--epochs", "1", "--out", str(tmp_path / "v"), "-q",
                         *common],
            "eval": ["eval", "--checkpoint", str(fuzz.golden / "ck.pth"), "-q", "--n-train", "20", "--n-test", "10",
                     *common]}[command]
    res = invoke(argv)
    assert not marker.exists(), f"{command}: the CIFAR-10 pickle's code ran"
    _one_sentence(res, f"{command} with a crafted {evil}")
    assert "CIFAR-10" in res.err and "not allowed" in res.err


def test_cifar_reader_still_reads_a_real_layout(fuzz, tmp_path):
    """The restricted unpickler reads what the python version of CIFAR-10 holds (protocol 2
    dicts of bytes, lists and uint8 arrays)."""
    data = tmp_path / "data"
    _cifar(data, tmp_path / "unused", evil="none")
    res = invoke(["run", "--config", str(fuzz.golden / "tiny.yaml"), "--probes", "none", "-q", "--device", "cpu",
                  "--data", "cifar10", "--data-path", str(data)])
    assert res.engine, (res.rc, res.err, res.tb)


# --------------------------------------------------------------------------- option names
@pytest.mark.parametrize("name", ["x/../../../F", "../F", "x/../../../../F", "..", "a b", "x" * 65, "F\\..\\G", ""])
@pytest.mark.parametrize("folder_exists", [False, True])
def test_option_names_cannot_write_outside_the_report_folder(fuzz, tmp_path, name, folder_exists):
    out = tmp_path / "a" / "b" / "rep"
    if folder_exists:  # the folder the traversal needs, as an earlier run or the attacker left it
        (out / "configs" / f"option_{name.split('/')[0]}").mkdir(parents=True, exist_ok=True)
    opts = tmp_path / "opts.yaml"
    opts.write_text(gen.dump({"options": [{**gen.TINY_OPTION, "name": name}]}))
    before = {p for p in tmp_path.rglob("*")}
    res = invoke(["report", str(fuzz.golden / "res"), "--no-charts", "--out", str(out / "report.md"),
                  "--options-file", str(opts)])
    written = [p for p in tmp_path.rglob("*") if p not in before]
    # the report folder, what is in it, and the folders above it (made for it) are fine
    outside = [p for p in written if not (p == out or out in p.parents or p in out.parents)]
    assert not outside, f"written outside the report folder: {outside}"
    assert not list(tmp_path.parent.glob("F*"))
    _one_sentence(res, f"option name {name!r}")
    assert "name" in res.err
    res = invoke(["sweep", "--device", "cpu", "--options", "all", "--options-file", str(opts), "--out",
                  str(tmp_path / "sw"), "-q"])
    _one_sentence(res, f"sweep with option name {name!r}")
    assert not os.path.exists(tmp_path / "sw" / "results.jsonl")
