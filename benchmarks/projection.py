"""Benchmark: how close is the projection to a real training run of the same config?

1. ``hjepa-bench run`` measures the config (the ``epoch_costs`` probe included) and its record
   projects a run of ``--epochs`` epochs over ``--images`` training images with a validation pass over
   a fifth of them (the validation run's 1:5 ratio) after every epoch: the projection a user reads.
2. Right after it, ``hjepa-bench validate`` trains that run for real: the same config, the same
   number of images (``--limit-samples``), the trainer's periodic work as the config's ``logging``
   asks (TensorBoard, collapse metrics), a validation pass and a checkpoint write every epoch.
3. The script prints both errors, projection against measurement: a steady epoch (the mean of the
   projected epochs without the one-time costs, against the mean of epochs 2.. as measured) and the
   whole run (everything but the model build, against the run from its first epoch's start to its
   last epoch's end; feature quality, which the upstream trainer does not do, left out), with the
   1-minute load average before, between and after, and the validation run's own self-check.

    python benchmarks/projection.py                       # 3 epochs of 1,280 images at 96 px, batch 16
    python benchmarks/projection.py --images 320 --img-size 64 --encoder-depth 4   # for a busy machine

Not a timed test: it prints numbers for docs/projection.md; on a shared machine they move with the
load of the other processes (the load averages say how much there was).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hjepa_bench.analysis.projection import project_record


def _load() -> float:
    return os.getloadavg()[0]


def _cli(*args: str) -> None:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "hjepa_bench", *args], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"hjepa-bench {args[0]} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    print(f"  hjepa-bench {args[0]}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--images", type=int, default=1280, help="training images (default 1,280)")
    ap.add_argument("--img-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--encoder-depth", type=int, default=12, help="ViT blocks (default 12, quick_val's)")
    ap.add_argument("--max-time", type=float, default=30.0, help="measuring time of the run (s)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="keep the record and the validation run here (default: a temporary folder)")
    args = ap.parse_args()
    cfg = ["--img-size", str(args.img_size), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
           "--encoder-depth", str(args.encoder_depth),
           "--device", args.device, "--limit-samples", str(args.images)]
    val_size = max(args.batch_size, round(0.2 * args.images))
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="hjepa-bench-projection-"))
    folder.mkdir(parents=True, exist_ok=True)
    loads = [_load()]
    _cli("run", *cfg, "--probes", "epoch_costs", "--max-time", str(args.max_time), "--json", str(folder / "run.json"),
         "--trace-dir", str(folder / "traces"), "-q")
    loads.append(_load())
    _cli("validate", *cfg, "--epochs", str(args.epochs), "--feature-every", "0", "--out", str(folder / "validate"),
         "-q")
    loads.append(_load())

    record = json.loads((folder / "run.json").read_text())
    result = json.loads((folder / "validate" / "validation.json").read_text())
    p = project_record(record, epochs=args.epochs, dataset_size=args.images, val_size=val_size)
    ov = p["overheads_s"]
    once = ov.get("one_time") or 0.0
    build = (record["probes"].get("epoch_costs") or {}).get("model_build_s") or 0.0
    proj_epoch = (p["total_s"]["mid"] - once) / args.epochs
    epochs = result["epochs"]
    steady = [e["wall_s"] for e in epochs[1:]] or [epochs[0]["wall_s"]]
    meas_epoch = sum(steady) / len(steady)
    proj_run = p["total_s"]["mid"] - build
    meas_run = result["train_wall_s"]

    def err(a: float, b: float) -> str:
        return f"{100 * (a - b) / b:+.1f}%"
    print(f"config: quick_val model ({args.encoder_depth} encoder blocks) at {args.img_size} px, batch "
          f"{args.batch_size}, {args.workers} worker(s), "
          f"{args.images:,} images ({p['steps_per_epoch']} steps/epoch), validation on {val_size} images, "
          f"{args.epochs} epochs, device {args.device}")
    print(f"1-minute load average: {' -> '.join(f'{x:.1f}' for x in loads)} (before run, after run, after "
          f"validate) on {os.cpu_count()} logical CPUs")
    print(f"run: {record['metrics']['it_per_s']:.2f} it/s over {record['metrics']['measured_steps']} steps; missing "
          f"from the projection: {', '.join(p['missing']) or 'nothing'}")
    print("projected parts (s): " + ", ".join(f"{k} {v:.1f}" for k, v in ov.items() if v is not None))
    walls = ", ".join(f"{e['wall_s']:.1f}" for e in epochs)
    print(f"steady epoch: projected {proj_epoch:.1f} s, measured {meas_epoch:.1f} s (epochs {walls}): error "
          f"{err(proj_epoch, meas_epoch)}")
    print(f"whole run: projected {proj_run:.1f} s (model build left out), measured {meas_run:.1f} s: error "
          f"{err(proj_run, meas_run)}")
    check = (result.get("self_check") or {}).get("check") or {}
    if check.get("run"):
        errs = ", ".join(f"{r['error_pct']:+.1f}%" for r in check["epochs"])
        print(f"validate's own self-check: epochs {errs}, whole run {check['run']['error_pct']:+.1f}%"
              + (f"; {check['unforeseen']['text']}" if check.get("unforeseen") else ""))
    print(f"files: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
