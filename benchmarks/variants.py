"""Benchmark: the ``efficient`` vs the ``reference`` H-JEPA step, side by side in one run.

Both steps get the same pre-augmented batches (real upstream augmentation, made
once before timing) and run interleaved (reference, efficient, reference, ...),
so a busy or throttling machine slows both alike and the ratio stays honest.
A loaded CPU can switch between a fast and a several-times slower regime in the
middle of a run; medians taken over each variant separately can then land in
different regimes, so the script also prints the median of the per-round
ratios (each round's efficient step over the same round's reference step).
Each step is timed with a device sync at both ends (device events where the
backend has them).  FLOPs per step come from ``hjepa-bench inspect``'s counter.

Then the same side by side on the real data path, once per ``--loader-workers``
count (default: 0): each variant is the registered ``hjepa`` workload with its
own DataLoader (upstream augmentation; the ``efficient`` one builds masks in its
collator, which with 0 workers runs in the main process), and each timed step
includes ``next(batches)``.  Rounds interleave the variants as above.

    python benchmarks/variants.py --device cpu                 # quick_val: batch 32, 224 px
    python benchmarks/variants.py --device cpu --loader-workers 0,2,4
    python benchmarks/variants.py --device cuda --rounds 30 --json variants.json

Prints markdown tables (the ones recorded in docs/step.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from hjepa_bench import stats
from hjepa_bench.config import resolve_config, resolve_precision
from hjepa_bench.hjepa.data import build_dataset, build_transform
from hjepa_bench.hjepa.inspection import count_step_flops
from hjepa_bench.hjepa.masks import MaskCollator, MaskSpec
from hjepa_bench.hjepa.model import HJEPA
from hjepa_bench.hjepa.step import HJEPAStep
from hjepa_bench.measure.env import environment_fingerprint
from hjepa_bench.plugin.manager import build_plugins, select_backend


def make_batches(values: dict[str, Any], n: int) -> list[tuple]:
    d = values["data"]
    transform = build_transform(d["image_size"], d["augmentation"]["color_jitter"])
    ds = build_dataset("synthetic", size=n * d["batch_size"], seed=values["seed"], transform=transform)
    collate = MaskCollator(MaskSpec.from_config(values))
    b = d["batch_size"]
    return [collate([ds[i * b + j] for j in range(b)]) for i in range(n)]


def interleaved(run: dict[str, Any], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Warm-up, then ``rounds`` rounds of one timed call per variant, the order
    alternating (reference, efficient / efficient, reference) so noise hits both alike."""
    for i in range(warmup):
        for v in run:
            run[v](i)
    times: dict[str, list[float]] = {v: [] for v in run}
    for i in range(rounds):
        order = list(run) if i % 2 == 0 else list(reversed(list(run)))
        for v in order:
            times[v].append(run[v](i))
    return times


def paired_ratio(times: dict[str, list[float]]) -> float:
    """Median over rounds of efficient / reference within the same round."""
    return stats.summarize([e / r for e, r in zip(times["efficient"], times["reference"])])["median"]


def loader_side_by_side(values: dict[str, Any], backend: Any, init: dict[str, Any], workers: int,
                        rounds: int, warmup: int) -> dict[str, Any]:
    """Both variants on the real data path with ``workers`` DataLoader workers.

    Each variant is the registered ``hjepa`` workload (its own loader, same
    starting weights); a timed step is ``next(batches)`` plus the step."""
    workload = build_plugins().workloads()["hjepa"]
    prepared, batches, waits = {}, {}, {}
    try:
        for variant in ("reference", "efficient"):
            cfg = {**values, "data": {**values["data"], "num_workers": workers},
                   "bench": {**values["bench"], "variant": variant}}
            prepared[variant] = workload.prepare(cfg, backend)
            prepared[variant].model().load_state_dict(init)  # same starting weights
            batches[variant], waits[variant] = iter(prepared[variant].batches()), []

        def timed(variant: str) -> float:
            start, end = backend.event(), backend.event()
            start.record()
            t0 = time.perf_counter()
            batch = next(batches[variant])
            waits[variant].append(time.perf_counter() - t0)
            prepared[variant].step(batch)
            end.record()
            return start.elapsed_s(end)

        times = interleaved({v: (lambda i, v=v: timed(v)) for v in prepared}, rounds, warmup)
    finally:
        for w in prepared.values():
            w.close()
    rows = {v: {"median_s": stats.summarize(times[v])["median"], "iqr_s": stats.summarize(times[v])["iqr"],
                "data_wait_median_s": stats.summarize(waits[v][warmup:])["median"]} for v in times}
    return {"workers": workers, "rows": rows, "times_s": times,
            "time_ratio": rows["efficient"]["median_s"] / rows["reference"]["median_s"],
            "paired_ratio": paired_ratio(times)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--config", default=None, help="YAML (default: built-in quick_val)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--encoder-depth", type=int, default=None)
    p.add_argument("--precision", default="auto")
    p.add_argument("--rounds", type=int, default=8, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    p.add_argument("--batches", type=int, default=4, help="distinct pre-augmented batches cycled through")
    p.add_argument("--loader-workers", default="0",
                   help="DataLoader worker counts for the real-data-path side by side, e.g. 0,2,4 ('' skips it)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    loader_workers = [int(w) for w in args.loader_workers.split(",") if w.strip()]

    backend = select_backend(build_plugins(), args.device)
    values = resolve_config(args.config, {"data.batch_size": args.batch_size, "data.image_size": args.img_size,
                                          "model.encoder_depth": args.encoder_depth,
                                          "bench.precision": args.precision}).values
    precision = resolve_precision(values, backend.name)
    batches = make_batches(values, args.batches)
    torch.manual_seed(values["seed"])
    init = HJEPA.from_config(values).state_dict()
    steps = {}
    for variant in ("reference", "efficient"):
        cfg = {**values, "bench": {**values["bench"], "variant": variant}}
        model = HJEPA.from_config(cfg)
        model.load_state_dict(init)  # same starting weights
        steps[variant] = HJEPAStep(cfg, backend, precision, steps_per_epoch=1000, model=model)

    def timed(variant: str, i: int) -> float:
        images, labels, masks = batches[i % len(batches)]
        batch = (images, labels, masks) if variant == "efficient" else (images, labels)
        start, end = backend.event(), backend.event()
        start.record()
        steps[variant](batch)
        end.record()
        return start.elapsed_s(end)

    times = interleaved({v: (lambda i, v=v: timed(v, i)) for v in steps}, args.rounds, args.warmup)

    flops = {v: count_step_flops(values, v, args.batch_size)["total"] for v in steps}
    rows = {}
    for v in steps:
        s = stats.summarize(times[v])
        rows[v] = {"median_s": s["median"], "iqr_s": s["iqr"], "n": s["n"], "it_per_s": 1 / s["median"],
                   "gflop_per_step": flops[v] / 1e9, "achieved_gflop_per_s": flops[v] / 1e9 / s["median"]}
    ratio = rows["efficient"]["median_s"] / rows["reference"]["median_s"]
    env = environment_fingerprint(backend)
    print(f"device: {backend.name} ({env.get('device_name')}), torch {env['torch']}, {precision}, "
          f"batch {args.batch_size}, {args.img_size} px, {args.rounds} interleaved rounds")
    print("| variant | GFLOP/step | median step (s) | IQR (s) | it/s | achieved GFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for v, r in rows.items():
        print(f"| {v} | {r['gflop_per_step']:.1f} | {r['median_s']:.3f} | {r['iqr_s']:.3f} | "
              f"{r['it_per_s']:.2f} | {r['achieved_gflop_per_s']:.1f} |")
    paired = paired_ratio(times)
    print(f"efficient / reference step time: {ratio:.2f} (FLOPs ratio "
          f"{flops['efficient'] / flops['reference']:.2f}); median of per-round ratios: {paired:.2f}")
    steps.clear()  # free the pre-augmented side by side before the loader ones

    loaders = [loader_side_by_side(values, backend, init, w, args.rounds, args.warmup) for w in loader_workers]
    if loaders:
        print(f"\nreal data path (DataLoader + augmentation, masks where each variant builds them), "
              f"{args.rounds} interleaved rounds per worker count; step = next(batches) + step")
        print("| workers | reference median (s) | efficient median (s) | data wait ref / eff (s) "
              "| efficient / reference (medians) | per-round ratio (median) |")
        print("|---:|---:|---:|---:|---:|---:|")
        for r in loaders:
            ref, eff = r["rows"]["reference"], r["rows"]["efficient"]
            print(f"| {r['workers']} | {ref['median_s']:.3f} | {eff['median_s']:.3f} | "
                  f"{ref['data_wait_median_s']:.3f} / {eff['data_wait_median_s']:.3f} | {r['time_ratio']:.2f} | "
                  f"{r['paired_ratio']:.2f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": env, "precision": precision, "rows": rows, "time_ratio": ratio,
                       "paired_ratio": paired, "times_s": times, "loader": loaders}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
