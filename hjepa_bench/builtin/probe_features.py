"""Probe ``features`` (costly): collapse and quality metrics of the target encoder.

After the timed loop (in ``finish``) the model's EMA target encoder, in eval
mode and without gradients, embeds N held-out synthetic images (``train=False``,
the deterministic eval transform at the run's image size) on the run's device;
the pooled features (mean of the patch tokens, what I-JEPA evaluates) go to the
CPU in float64 and through :func:`hjepa_bench.analysis.features.feature_quality`
(RankMe uncentred and centred, per-dimension std, mean cosine, uniformity and the
collapse flags; definitions and thresholds there, and in every entry).

N is ``bench.features_n`` when the config has it, else max(4 D, 256): RankMe
needs N >= 4D.  Keep N fixed across runs that are compared.

The benchmark trains for a few steps only, so these are the features of a model
close to its initialisation: they check the pipeline (encoder, pooling, data),
not the quality of a trained model.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from hjepa_bench.analysis.features import feature_quality, judge_features
from hjepa_bench.format import finite, fmt_or_dash
from hjepa_bench.plugin.api import Probe, RunContext
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.record import device_name, lookup, model_short, probe
from hjepa_bench.record_model import MISSING, Count, JudgedEntry, NonNeg, PositiveInt, RecordModel
from hjepa_bench.report.sections import ProbeTable, probe_table
from hjepa_bench.thresholds import DEFAULTS

#: default N: max(MIN_N_PER_D * D, MIN_N)
MIN_N_PER_D = 4
MIN_N = 256
#: images per forward pass of the extraction
EXTRACT_BATCH = 64
NOTE = ("Features of the model after only the benchmark's few training steps (close to its "
        "initialisation): they characterise the pipeline (encoder, pooling, data), not a trained model.")


def features_n(config: Mapping[str, Any], d: int) -> int:
    """N images to embed: ``bench.features_n`` if set, else max(4 D, 256)."""
    value = (config.get("bench") or {}).get("features_n")
    n = max(MIN_N_PER_D * d, MIN_N) if value is None else int(value)
    if n < 2:
        raise ValueError(f"bench.features_n must be at least 2, got {n}")
    return n


def _steps_trained(record: Mapping[str, Any]) -> int | None:
    times = (record.get("series") or {}).get("step_time_s")
    return None if times is None else len(times)


class Collapse(RecordModel):
    collapsed: bool | MISSING | None = MISSING


class FeaturesEntry(JudgedEntry):
    """The fields of the features entry that the report and the verdicts read."""

    collapse: Collapse | MISSING | None = MISSING
    rankme_ratio: float | MISSING | None = MISSING
    effective_rank: float | MISSING | None = MISSING
    d: PositiveInt | MISSING | None = MISSING
    mean_cosine: float | MISSING | None = MISSING
    std_below_floor_frac: NonNeg | MISSING | None = MISSING
    steps_trained: Count | MISSING | None = MISSING
    quality_judged: bool | MISSING = MISSING
    quality_note: str | MISSING | None = MISSING


class FeaturesProbe(Probe):
    name = "features"
    entry_model = FeaturesEntry
    headline = ("effective_rank", "rankme_ratio", "mean_cosine", "collapse.collapsed", "quality_judged")
    cost = "costly"
    description = "collapse metrics (RankMe, std, cosine, uniformity) of the target encoder's pooled features"

    def finish(self, ctx: RunContext, record: Mapping[str, Any]) -> dict[str, Any] | None:
        from hjepa_bench.hjepa.data import build_dataset, build_eval_transform  # (training only)
        from hjepa_bench.hjepa.training import extract_features

        model = ctx.workload.model()
        if model is None:
            return {"measured": False, "reason": "the workload has no model (PreparedWorkload.model() is None)"}
        encoder = getattr(model, "target_encoder", None)
        if encoder is None:
            return {"measured": False, "reason": f"the model ({type(model).__name__}) has no target_encoder"}
        config = ctx.config
        d = int(getattr(encoder, "embed_dim", None) or config["model"]["embed_dim"])
        n = features_n(config, d)
        image_size = int(config["data"]["image_size"])
        seed = int(config.get("seed", 0))
        was_training = encoder.training
        t0 = time.perf_counter()
        dataset = build_dataset("synthetic", size=n, seed=seed, train=False,
                                transform=build_eval_transform(image_size))
        encoder.eval()
        try:
            batches = (torch.stack([dataset[i][0] for i in range(start, min(start + EXTRACT_BATCH, n))])
                       for start in range(0, n, EXTRACT_BATCH))
            feats, forward_s = extract_features(encoder, batches, ctx.backend.synchronize)
        finally:
            encoder.train(was_training)
        extract_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        quality = feature_quality(feats.numpy())
        metrics_s = time.perf_counter() - t1
        return self.judge({
            "measured": True,
            "encoder": "target_encoder (EMA), eval mode, no_grad, float32",
            "pooling": "mean of patch tokens (CLS excluded)",
            "data": f"synthetic held-out images (train=False, seed {seed}), eval transform at {image_size} px",
            "n_images": n,
            "image_size": image_size,
            "extract_batch": EXTRACT_BATCH,
            "steps_trained": _steps_trained(record),
            "extract_s": extract_s,
            "forward_s": forward_s,
            "metrics_s": metrics_s,
            "timing_note": ("extract_s: image generation + eval transform + forward passes + copy to the CPU; "
                            "forward_s: the synced forward passes only; metrics_s: feature_quality on the CPU "
                            "in float64"),
            **quality,
            "note": NOTE,
        }, DEFAULTS)

    def judge(self, entry, thresholds, record=None):
        """The collapse flags against ``low_rank_frac``, judged only after ``min_quality_steps``."""
        if "collapse" not in entry:
            return entry
        return judge_features(entry, thresholds.low_rank_frac, thresholds.min_quality_steps)

    def facts(self, entry, record):
        """The collapse flags with the metrics behind them, when the features were measured."""
        if not entry.get("measured", True):
            return {}
        return {"collapse": {**(entry.get("collapse") or {}), "rankme_ratio": finite(entry.get("rankme_ratio")),
                             "effective_rank": finite(entry.get("effective_rank")), "d": entry.get("d"),
                             "mean_cosine": finite(entry.get("mean_cosine")),
                             "note": f"measured after {entry.get('steps_trained')} training steps",
                             "quality_judged": entry.get("quality_judged", True),
                             "quality_note": entry.get("quality_note")}}

    def validation_entry(self, record, result):
        """The last feature measurement of the validation run (its training step so far)."""
        feats = [f for f in result.get("features") or [] if f.get("rankme") is not None]
        if not feats:
            return None
        return judge_features({"status": "ok", "measured": True, **feats[-1],
                               "steps_trained": feats[-1].get("global_step")})

    def summarize(self, entry):
        if not entry.get("measured") or entry.get("rankme_centred_ratio") is None:
            return None
        flags = [k for k, v in (entry.get("collapse") or {}).items() if v and k != "collapsed"]
        return (f"RankMe/D {entry['rankme_ratio']:.2f} (centred {entry['rankme_centred_ratio']:.2f}), "
                f"mean cosine {entry['mean_cosine']:.2f}, N={entry['n']}; "
                + ("collapse: " + ", ".join(flags) if flags else "no collapse flags")
                + (f" ({entry['quality_note']})" if entry.get("quality_note") else ""))


class FeaturesSection(ProbeTable):
    name = "features"
    title = "Feature quality (collapse checks)"
    order = 60
    fill = ""

    def label(self, r: Mapping[str, Any]) -> dict[str, Any]:
        return {"device": device_name(r), "model": model_short(r), "variant": lookup(r, "config", "bench", "variant"),
                "img px": lookup(r, "config", "data", "image_size")}

    def row(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        if not entry.get("measured"):
            return {"result": f"not measured: {entry.get('reason')}"}
        flags = entry.get("collapse") or {}
        raised = [k for k in ("low_rank", "low_variance", "all_alike") if flags.get(k)]
        result = "not computed" if flags.get("collapsed") is None else ", ".join(raised) or "no flag"
        if entry.get("quality_note"):
            result += f" ({entry['quality_note']})"
        return {
            "steps": entry.get("steps_trained"),
            "N": entry.get("n"),
            "D": entry.get("d"),
            "RankMe/D": fmt_or_dash(entry.get("rankme_ratio"), ".3f", dash="n/a"),
            "centred RankMe/D": fmt_or_dash(entry.get("rankme_centred_ratio"), ".3f", dash="n/a"),
            "std x sqrt(D)": fmt_or_dash(entry.get("std_mean_rel"), ".3f", dash="n/a"),
            "dims < floor %": fmt_or_dash(None if entry.get("std_below_floor_frac") is None
                                          else entry["std_below_floor_frac"] * 100, ".1f", dash="n/a"),
            "mean cos": fmt_or_dash(entry.get("mean_cosine"), ".3f", dash="n/a"),
            "uniformity": fmt_or_dash(entry.get("uniformity"), ".2f", dash="n/a"),
            "result": result,
        }

    def render(self, records: Iterable[Mapping[str, Any]]) -> str | None:
        records = list(records)
        measured = [e for r in records for e in [probe(r, "features")]
                    if e and e.get("status") in (None, "ok") and e.get("measured")]
        thresholds = next((e.get("thresholds") for e in measured if e.get("thresholds")), None)
        lines = [NOTE]
        if thresholds:
            lines.append(
                "Flags: low_rank = effective rank (centred RankMe; uncentred when the samples' spread is "
                f"below {thresholds['min_spread_frac']:g}) < {thresholds['low_rank_frac']:g} D; "
                f"low_variance = more than {thresholds['low_variance_dim_frac']:g} of the dimensions have a std "
                f"below {thresholds['std_floor_rel']:g}/sqrt(D) (L2-normalised features, healthy ~1/sqrt(D)); "
                f"all_alike = mean pairwise cosine > {thresholds['all_alike_cosine']:g}. RankMe needs "
                f"N >= {thresholds['min_n_over_d']:g} D; compare it only at equal N."
                + (f" Flags of a model trained fewer than {thresholds['min_quality_steps']:g} steps are those of its "
                   "random initialisation: shown, not judged." if thresholds.get("min_quality_steps") else ""))
        return probe_table(records, self.name, self.row, "\n\n".join(lines), label=self.label, fill=self.fill)


@hookimpl
def hjepa_bench_register_probes(register):
    register(FeaturesProbe())


@hookimpl
def hjepa_bench_register_report_sections(register):
    register(FeaturesSection())
