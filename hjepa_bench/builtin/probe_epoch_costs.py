"""Probe ``epoch_costs`` (cheap): what a real training run pays per epoch besides the steps.

Runs in ``finish`` (after the timed loop; the workload's endless iterator is
already shut down, the DataLoader itself can start a new one) and measures, on
the built-in ``hjepa`` workload (any workload whose prepared object has the optional
``PreparedWorkload.loader`` and ``.trainer``, like :class:`hjepa_bench.hjepa.step.HJEPAStep`):

1. **Worker start-up** (``worker_startup_s``): a non-persistent DataLoader
   starts fresh workers at every epoch.  Timed from ``iter(loader)`` to the
   first batch in hand, split into ``iter(loader)`` (worker processes started,
   first indices queued) and the wait in the first ``next()`` (workers import /
   unpickle the data set under ``spawn``, run ``worker_init_fn``, build one
   batch).  Then the iterator's workers are shut down (timed too, as
   ``worker_shutdown_s``).  Repeated ``STARTUP_REPEATS`` times, median
   reported.  With ``persistent_workers`` a real run pays it once, not per
   epoch (``paid_every_epoch``); with ``num_workers == 0`` nothing starts and
   the number is one batch built in the main process.
2. **Validation step** (``val_step_s``): the forward a validation pass runs on
   one batch: ``model.eval()``, ``torch.no_grad()``, the trainer's autocast,
   inputs moved to the device (masks sampled on the host for ``reference``,
   taken from the batch for ``efficient``) and ``trainer.loss(images,
   masks)``, synced with the backend.  1 untimed + ``VAL_REPEATS`` timed,
   median; the model's train/eval mode is restored.
3. **Checkpoint** (``checkpoint_save_s``, ``checkpoint_bytes``): ``torch.save``
   of the upstream checkpoint layout (epoch, model, optimizer and GradScaler
   state dicts) into a temporary folder under ``ctx.artifacts_dir`` (the
   system temp folder when the run keeps none), flushed and fsynced.
   ``CHECKPOINT_REPEATS`` saves, median; the files (and any folder the probe
   had to create) are removed.

4. **The trainer's periodic work** (``periodic``): the upstream trainer's read-backs, progress-bar
   postfix, TensorBoard scalars and gradient histograms (a real ``SummaryWriter`` in a temporary
   folder), collapse metrics with their SVD and ``empty_cache``, each timed once
   (:mod:`hjepa_bench.hjepa.periodic` says what each is and how often the trainer does it).
5. **Model build** (``model_build_s``): the model built from the config and moved to the device.

The measurements live in :mod:`hjepa_bench.measure.epoch_costs` (the validation run's self-check
makes the same ones).  A measurement that fails leaves its fields ``None`` and its error, one line,
under ``errors[<its main field>]``; the other measurements still come back.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from hjepa_bench.analysis.projection import costs_from_entry
from hjepa_bench.format import fmt_bytes, fmt_ms, fmt_or_dash
from hjepa_bench.measure.epoch_costs import (
    CHECKPOINT_REPEATS,
    STARTUP_REPEATS,
    VAL_REPEATS,
    _steady_wait,
    first_batch,
    measure_checkpoint,
    measure_epoch_costs,
    measure_val_step,
)
from hjepa_bench.plugin.api import Probe, RunContext, Trainer
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.record_model import MISSING, Count, NonNeg, PositiveInt, ProbeEntry
from hjepa_bench.report.sections import ProbeTable
from hjepa_bench.stats import median

__all__ = [
    "DEFINITIONS",
    "EpochCostsProbe",
    "EpochCostsSection",
    "first_batch",
    "measure_checkpoint",
    "measure_val_step",
]


DEFINITIONS = {
    "measured": "True when the workload exposes a DataLoader (.loader) and an H-JEPA trainer (.trainer)",
    "variant": "the step variant (reference: masks sampled on the host per batch; efficient: masks come "
               "with the batch from the DataLoader workers)",
    "steps_per_epoch": "len(loader): training steps in one epoch (drop_last=True)",
    "num_workers": "DataLoader worker processes",
    "persistent_workers": "config bench.persistent_workers",
    "persistent_workers_effective": "the loader's persistent_workers (False whenever num_workers is 0)",
    "multiprocessing_context": "start method of the worker processes (fork, spawn, forkserver); None without "
                               "workers",
    "multiprocessing_context_source": "'loader' when the DataLoader sets one, else 'platform default'",
    "paid_every_epoch": "True when a real run pays worker_startup_s at every epoch start (workers > 0, not "
                        "persistent); False: persistent workers start once per run, or there are no workers",
    "worker_startup_s": "median over repeats of the time from iter(loader) to the first batch in hand, with "
                        "fresh workers (s)",
    "worker_startup_runs_s": "worker_startup_s of each repeat, in order (s)",
    "first_batch_s": "medians of the two parts of worker_startup_s: start_workers_s = iter(loader) returning "
                     "(processes started, first indices queued), first_batch_wait_s = the first next() "
                     "(worker imports under spawn, worker_init_fn, one batch built and sent) (s)",
    "worker_shutdown_s": "median time of the iterator's _shutdown_workers() right after the first batch; an "
                         "upper bound of the shutdown at an epoch's end (workers may still be finishing a "
                         "prefetched batch here) (s)",
    "steady_batch_wait_s": "median series.data_wait_s over the run's measured (post-warm-up) steps: what a "
                           "batch costs to wait for once the workers run (s)",
    "startup_extra_s": "max(0, worker_startup_s - steady_batch_wait_s): what an epoch's first batch costs "
                       "beyond a steady one; paid every epoch when paid_every_epoch, else once per run (s)",
    "val_step_s": "median over timed repeats of one validation forward: inputs to the device (+ host mask "
                  "sampling in the reference variant) and trainer.loss under model.eval(), torch.no_grad() "
                  "and the trainer's autocast, synced (s)",
    "val_inputs_s": "median of the inputs part of val_step_s (to device, masks) (s)",
    "val_forward_s": "median of the trainer.loss part of val_step_s (s)",
    "val_step_runs_s": "val_step_s of each timed repeat (s)",
    "val_batch_size": "samples in the validation batch (one training batch)",
    "val_loss": "the loss of the last timed validation forward (a finite-ness check)",
    "val_precision": "the autocast precision of the validation forward (the trainer's)",
    "checkpoint_save_s": "median over repeats of building the upstream checkpoint dict (epoch, "
                         "model_state_dict, optimizer_state_dict, scaler_state_dict), torch.save into a file, "
                         "flush and os.fsync (s)",
    "checkpoint_runs_s": "checkpoint_save_s of each repeat (s)",
    "checkpoint_copy_s": "median time of one shutil.copy of the saved file (the upstream CheckpointManager copies "
                         "it to checkpoint_latest.pth, and to checkpoint_best.pth when the loss improved) (s)",
    "checkpoint_write_s": "checkpoint_save_s + 2 x checkpoint_copy_s: one upstream checkpoint write of a best "
                          "epoch (s)",
    "checkpoint_bytes": "size of the saved checkpoint file (bytes)",
    "checkpoint_dir_parent": "the folder the temporary checkpoint folder was made in (ctx.artifacts_dir, or "
                             "the system temp folder); its file system sets the fsync cost",
    "periodic": "the upstream trainer's periodic work, each kind timed on the run's model and device: "
                "readback_s (every step: .item() of each loss term and the LR set in every group), postfix_s "
                "(progress-bar postfix), scalar_s (one SummaryWriter.add_scalar), memory_read_s (one memory "
                "reading), histograms_s (add_histogram of every parameter's gradient), collapse_s (the "
                "collapse metrics with two SVDs), empty_cache_s (None on a device without an allocator cache); "
                "*_runs_s: each timed repeat (s); plan: the config's log_frequency and loggers",
    "model_build_s": "seconds to build the model from the config and move it to the device (paid once per run)",
    "errors": "measurement -> one-line error for each measurement that failed (its fields are then None)",
    "probe_time_s": "wall time of the whole probe (s)",
}




class EpochCostsEntry(ProbeEntry):
    """The fields of the epoch_costs entry that the projections read."""

    worker_startup_s: NonNeg | MISSING | None = MISSING
    val_step_s: NonNeg | MISSING | None = MISSING
    checkpoint_save_s: NonNeg | MISSING | None = MISSING
    paid_every_epoch: bool | MISSING = MISSING
    val_batch_size: PositiveInt | MISSING | None = MISSING
    checkpoint_bytes: Count | MISSING | None = MISSING


class EpochCostsProbe(Probe):
    name = "epoch_costs"
    entry_model = EpochCostsEntry
    headline = ("worker_startup_s", "val_step_s", "checkpoint_save_s", "checkpoint_bytes", "periodic.histograms_s",
                "periodic.collapse_s", "model_build_s")
    cost = "cheap"
    description = ("Per-epoch costs besides the steps: DataLoader worker start-up (fresh workers to the first "
                   "batch), one validation forward, and a checkpoint save (bytes, fsynced)")

    def finish(self, ctx: RunContext, record: Mapping[str, Any]) -> dict[str, Any] | None:
        t_start = time.perf_counter()
        work = ctx.workload
        loader, trainer = work.loader, work.trainer
        if loader is None or not isinstance(trainer, Trainer):
            return {"measured": False,
                    "reason": (f"the workload ({type(work).__name__}) exposes no DataLoader (.loader) and H-JEPA "
                               "trainer (.trainer with model, optimizer, loss, make_masks, autocast) to measure "
                               "epoch costs on"),
                    "definitions": {"measured": DEFINITIONS["measured"],
                                    "reason": "why the probe could not measure this workload"}}
        entry = measure_epoch_costs(trainer, loader, ctx.backend, ctx.config, artifacts_dir=ctx.artifacts_dir,
                                    steady_wait=_steady_wait(record))
        entry["definitions"] = dict(DEFINITIONS)
        entry["probe_time_s"] = time.perf_counter() - t_start
        return entry

    def facts(self, entry: Mapping[str, Any], record: Mapping[str, Any]) -> Mapping[str, Any]:
        """The per-epoch costs a projection adds to the steps."""
        return {"epoch_costs": costs_from_entry(entry)}

    def validation_entry(self, record: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any] | None:
        """The validation run's own epoch ends (worker start-up, validation step, checkpoint writes), the
        trainer's periodic work as measured before its first epoch and its set-up."""
        config = record.get("config") or {}
        epochs = result.get("epochs") or []
        checkpoints = result.get("checkpoints") or []
        val_steps = [e["val_s"] / e["val_batches"] for e in epochs if e.get("val_batches") and e.get("val_s")]
        before = ((result.get("self_check") or {}).get("costs") or {})
        return {"status": "ok", "measured": True, "paid_every_epoch": not config["bench"].get("persistent_workers"),
                "worker_startup_s": median([e.get("loader_start_s") for e in epochs
                                             if e.get("loader_start_s") is not None]),
                "val_step_s": median(val_steps), "val_batch_size": int(config["data"]["batch_size"]),
                "checkpoint_save_s": median([c["save_s"] for c in checkpoints if c.get("save_s") is not None]),
                "checkpoint_write_s": median([e["checkpoint_s"] for e in epochs if e.get("checkpoint_s")]),
                "checkpoint_bytes": max((c.get("bytes") or 0 for c in checkpoints), default=None),
                "periodic": before.get("periodic"), "model_build_s": result.get("setup_s"),
                "source": "the validation run's epoch ends (worker start-up, validation step, checkpoint "
                          "writes); the trainer's periodic work as measured before its first epoch; "
                          "model build: its set-up"}

    def summarize(self, entry: Mapping[str, Any]) -> str | None:
        if not entry.get("measured"):
            return f"not measured: {entry.get('reason', 'no reason given')}"
        errors = entry.get("errors") or {}
        parts = []
        startup = entry.get("worker_startup_s")
        if startup is None:
            parts.append("worker start-up failed" if "worker_startup_s" in errors else "worker start-up n/a")
        elif not entry.get("num_workers"):
            parts.append(f"no workers (first batch {fmt_ms(startup)})")
        else:
            how = "/epoch" if entry.get("paid_every_epoch") else " once (persistent)"
            parts.append(f"worker start-up {startup:.2f} s{how}")
        val = entry.get("val_step_s")
        if val is None:
            parts.append("val step failed" if "val_step_s" in errors else "val step n/a")
        else:
            parts.append(f"val step {val * 1000:.0f} ms (b{entry.get('val_batch_size')})")
        ckpt = entry.get("checkpoint_save_s")
        if ckpt is None:
            parts.append("checkpoint failed" if "checkpoint_save_s" in errors else "checkpoint n/a")
        else:
            size = entry.get("checkpoint_bytes")
            size_txt = "n/a" if size is None else f"{size / 2**20:.0f} MiB"
            parts.append(f"checkpoint {ckpt:.2f} s ({size_txt})")
        per = entry.get("periodic") or {}
        if per:
            parts.append(f"trainer logging: grad histograms {fmt_ms(per.get('histograms_s'))}, collapse SVD "
                         f"{fmt_ms(per.get('collapse_s'))}, scalar {fmt_ms(per.get('scalar_s'))}, read-back "
                         f"{fmt_ms(per.get('readback_s'))}")
        elif "periodic" in errors:
            parts.append("trainer logging failed")
        return ", ".join(parts)


class EpochCostsSection(ProbeTable):
    name = "epoch_costs"
    title = "Per-epoch costs: worker start-up, validation step, checkpoint, trainer logging"
    order = 55
    failed = None  # only measured entries
    note = ("Worker start-up: iter(loader) to the first batch with fresh DataLoader workers (median of "
            f"{STARTUP_REPEATS}), split into starting the workers and waiting for the first batch; a "
            "non-persistent loader pays it at every epoch start. Val step: one forward of the H-JEPA loss in "
            f"eval mode without gradients, inputs moved to the device (median of {VAL_REPEATS}). Checkpoint: "
            "torch.save of model, optimizer and scaler state, flushed and fsynced (median of "
            f"{CHECKPOINT_REPEATS}); the folder's file system matters. The trainer's periodic work (gradient "
            "histograms of every parameter, the collapse metrics with their SVD, one TensorBoard scalar, the "
            "per-step read-back of the loss terms) is timed on the run's model; the projection counts it as "
            "the config's logging section asks.")

    def row(self, e: Mapping[str, Any]) -> dict[str, Any] | None:
        if not e.get("measured"):
            return None
        errors = e.get("errors") or {}
        fb = e.get("first_batch_s") or {}
        return {
            "variant": e.get("variant"),
            "steps/epoch": e.get("steps_per_epoch"),
            "mp context": e.get("multiprocessing_context") or "-",
            "worker start-up (s)": fmt_or_dash(e.get("worker_startup_s"), ".3f"),
            "start / first batch (s)": f"{fmt_or_dash(fb.get('start_workers_s'), '.3f')} / "
                                       f"{fmt_or_dash(fb.get('first_batch_wait_s'), '.3f')}",
            "paid": "every epoch" if e.get("paid_every_epoch") else (
                "once (persistent)" if e.get("persistent_workers_effective") else "no workers"),
            "steady wait": fmt_ms(e.get("steady_batch_wait_s")),
            "val step": fmt_ms(e.get("val_step_s")),
            "val batch": fmt_or_dash(e.get("val_batch_size"), "d"),
            "checkpoint (s)": fmt_or_dash(e.get("checkpoint_save_s"), ".3f"),
            "checkpoint size": fmt_bytes(e.get("checkpoint_bytes")),
            "grad histograms": fmt_ms((e.get("periodic") or {}).get("histograms_s")),
            "collapse SVD": fmt_ms((e.get("periodic") or {}).get("collapse_s")),
            "TB scalar": fmt_ms((e.get("periodic") or {}).get("scalar_s")),
            "read-back/step": fmt_ms((e.get("periodic") or {}).get("readback_s")),
            "model build (s)": fmt_or_dash(e.get("model_build_s"), ".2f"),
            "errors": "; ".join(f"{k}: {v}" for k, v in errors.items()) or "-",
        }


@hookimpl
def hjepa_bench_register_probes(register):
    register(EpochCostsProbe())


@hookimpl
def hjepa_bench_register_report_sections(register):
    register(EpochCostsSection())
