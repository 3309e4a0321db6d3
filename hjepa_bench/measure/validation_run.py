"""The validation run: a real, short H-JEPA training run and its artifacts.

The H-JEPA validation guide (docs/verdicts.md) asks for a
short training run (the upstream ``quick_val`` config, 5 epochs) before a long one,
to check stability, speed, learning and collapse.  :func:`run_validation` runs it
with the real step (:class:`hjepa_bench.hjepa.step.HJEPAStep`) on the real data path
(the upstream augmentation in DataLoader workers, restarted every epoch unless
``bench.persistent_workers``) and keeps every measurement:

* per step: loss, gradient norm (before clipping), learning rate, the synced step
  time (batch in hand -> step returned -> ``backend.synchronize()``) and the time
  blocked on the loader;
* per epoch: a forward-only validation loss on held-out images (``train=False``,
  the eval transform, fixed masks so epochs compare), speed, data-wait share, peak
  memory;
* feature quality (RankMe, std, cosine, uniformity, collapse flags) of the EMA
  target encoder's pooled features on N held-out images, every
  ``feature_every_epochs`` epochs, at the end and (``features_at_start``) before
  training, as a baseline;
* checkpoints in the upstream layout (``checkpoints/checkpoint_epoch_{E}.pth``,
  ``checkpoint_latest.pth``, ``checkpoint_best.pth``): one ``torch.save`` per epoch
  (to a temp file renamed into place) and copies for the other names, as the
  upstream ``CheckpointManager`` does, with their write time and size;
* the upstream trainer's periodic work, as the config's ``logging`` section asks
  (:mod:`hjepa_bench.hjepa.periodic`): the loss terms read back every step,
  TensorBoard scalars and gradient histograms into ``out_dir/tensorboard`` with the
  real ``SummaryWriter``, the collapse metrics with their SVD, ``empty_cache``, so
  that its epochs cost what the trainer's do;
* a **self-check of the projection**: before the first epoch the run measures what
  the ``epoch_costs`` probe measures (worker start-up, a validation step, a
  checkpoint write, the periodic work); with its first measured steps that makes
  the projection of every epoch and of the whole run, which :func:`self_check`
  puts next to what they then took.

``out_dir/validation.json`` (the result; as a result record and facts:
:mod:`hjepa_bench.measure.validation_record`) is rewritten atomically at every epoch
end and at the end, so a killed run leaves its measurements so far.  Ctrl-C
stops cleanly: the trained state goes to ``checkpoint_latest.pth`` and the result
says ``interrupted``.  Non-finite loss or gradient norm stops the run as
``diverged``; other exceptions give ``error`` or ``oom``.  ``UserError``
(bad input) propagates.

Held-out data: CIFAR-10's test split, or the synthetic set's ``train=False``
images.  The validation loss uses the same 1:5 held-out:train ratio as CIFAR-10
(10,000:50,000), so ``bench.limit_samples`` and ``bench.synthetic_size`` shrink it
too; ``ValidationSettings.val_max_batches`` caps it further.
"""
from __future__ import annotations

import copy
import os
import random
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..analysis.features import feature_quality
from ..analysis.periodic import LoggingPlan
from ..config import to_yaml
from ..errors import UserError
from ..hjepa.checkpoint import checkpoint_state, save_checkpoint
from ..hjepa.data import build_dataset, build_eval_transform, build_loader
from ..hjepa.masks import masks_from_union, sample_batch_union, to_device
from ..hjepa.periodic import TrainerLogger
from ..hjepa.step import HJEPAStep, ema_momentum_at
from ..hjepa.training import build_training, extract_features
from ..record import write_json
from ..stats import finite
from .validation_record import WARMUP_STEPS

STATUSES = ("ok", "diverged", "interrupted", "error", "oom")
RESULT_FILE = "validation.json"
CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
#: feature N default: max(MIN_N_PER_D * D, MIN_N) (RankMe needs N >= 4D)
MIN_N_PER_D = 4
MIN_N = 256
#: images per forward pass of the feature extraction
FEATURE_BATCH = 64
#: held-out images per training image for the validation loss (CIFAR-10: 10,000 / 50,000)
HELDOUT_RATIO = 0.2
#: warnings whose text mentions a fallback or the CPU (MPS ops falling back, ...)
FALLBACK_RE = re.compile(r"fall(?:s|ing|en)?[\s_-]*back|\bcpu\b", re.IGNORECASE)
MAX_FALLBACK_WARNINGS = 50
_WORKERS_WARNING = "This DataLoader will create"


@dataclass
class ValidationSettings:
    """How long the run is and what it writes.

    ``feature_n`` defaults to max(4 D, 256); ``checkpoint_every_epochs`` to the
    config's ``checkpoint.save_frequency`` when present, else 1;
    ``max_steps_per_epoch`` caps ``len(loader)`` (for tests and quick looks);
    ``val_max_batches`` caps the validation-loss batches per epoch.
    """

    epochs: int
    out_dir: Path
    feature_every_epochs: int = 1
    feature_n: int | None = None
    checkpoint_every_epochs: int | None = None
    max_steps_per_epoch: int | None = None
    val_max_batches: int | None = None
    features_at_start: bool = True


# --------------------------------------------------------------------------- helpers
def _loadavg() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def _release(loader: DataLoader | None, it: Any, final: bool) -> None:
    """Shut down ``it``'s workers; persistent workers survive until ``final``."""
    if loader is None or it is None:
        return
    persistent = getattr(loader, "_iterator", None) is it
    if persistent and not final:
        return
    if persistent:
        loader._iterator = None
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _iter(loader: DataLoader) -> Any:
    with warnings.catch_warnings():
        # torch warns when workers outnumber cores; the run records its own note
        warnings.filterwarnings("ignore", message=_WORKERS_WARNING)
        return iter(loader)


class _FallbackWarnings:
    """Records warnings that mention a fallback or the CPU; every warning is still shown."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._cm: Any = None

    def __enter__(self) -> _FallbackWarnings:
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        show = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            text = f"{getattr(category, '__name__', 'Warning')}: {message}"
            if FALLBACK_RE.search(str(message)) and text not in self.messages \
                    and len(self.messages) < MAX_FALLBACK_WARNINGS:
                self.messages.append(text)
            show(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)


# --------------------------------------------------------------------------- the run
class _ValidationRun:
    def __init__(self, values: dict[str, Any], backend: Any, settings: ValidationSettings,
                 progress: bool, on_epoch: Callable[[dict], None] | None):
        self.values = values
        self.backend = backend
        self.settings = settings
        self.progress = progress
        self.on_epoch = on_epoch
        self.out_dir = Path(settings.out_dir)
        self.ckpt_dir = self.out_dir / CHECKPOINT_DIR
        self.t_start = time.perf_counter()
        self.trainer: HJEPAStep | None = None
        self.loader: DataLoader | None = None
        self.val_loader: DataLoader | None = None
        self.heldout: Any = None
        self.train_it: Any = None
        self.best_metric: float | None = None
        self.saved_at_step: int | None = None
        self.logger: TrainerLogger | None = None
        self.partial: dict[str, Any] | None = None  # the epoch in progress
        self.result: dict[str, Any] = {
            "status": "ok",
            "error": None,
            "epochs_planned": int(settings.epochs),
            "epochs_completed": 0,
            "steps_per_epoch": None,
            "config": values,
            "device": backend.name,
            "precision": None,
            "params": None,
            "steps": {k: [] for k in ("global_step", "epoch", "loss", "grad_norm", "lr", "lr_in_warmup",
                                      "step_time_s", "data_wait_s")},
            "epochs": [],
            "partial_epoch": None,
            "skipped_steps": 0,
            "features": [],
            "checkpoints": [],
            "elapsed_s": 0.0,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "peak_memory_bytes": None,
            "memory_source": None,
            "fallback_warnings": [],
            "notes": [],
            "train_size": None,
            "val_size": None,
            "setup_s": None,
            "train_wall_s": None,
            "self_check": None,
            "periodic_counts": None,
        }

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        t0 = time.perf_counter()
        try:
            self._setup()
        finally:
            self.result["setup_s"] = time.perf_counter() - t0

    def _setup(self) -> None:
        v, backend, s = self.values, self.backend, self.settings
        training = build_training(v, backend, max_steps_per_epoch=s.max_steps_per_epoch)
        precision = training.precision
        v["bench"]["precision"] = precision
        v["bench"]["device"] = backend.name
        self.result["precision"] = precision
        self.loader = training.loader
        full = self._setup_steps_per_epoch(training.steps_per_epoch)
        self.trainer = training.trainer
        model = self.trainer.model
        self.result["params"] = model.param_counts()
        self.feature_n = self._feature_n(int(model.embed_dim))
        n_train = len(training.dataset)
        self._setup_heldout(n_train)
        self.ckpt_every = self._checkpoint_every()
        spe, batch_size = self.steps_per_epoch, int(v["data"]["batch_size"])
        self.result["train_size"] = spe * batch_size if spe < full else n_train
        self.result["val_size"] = self.val_batches * batch_size
        self._setup_logging()
        mem = backend.memory()
        self.result["memory_source"] = mem.source

    def _setup_steps_per_epoch(self, spe: int) -> int:
        """The steps per epoch (capped by ``max_steps_per_epoch``), with notes on the cap and on workers
        that outnumber the cores; returns the loader's full length."""
        assert self.loader is not None
        notes = self.result["notes"]
        workers = int(self.values["data"]["num_workers"])
        full = len(self.loader)
        if full == 0:
            raise UserError("The data loader yields no batches; use a smaller batch or more data.")
        if spe < full:
            notes.append(f"steps per epoch capped at {spe} of the loader's {full} (max_steps_per_epoch)")
        self.steps_per_epoch = spe
        self.result["steps_per_epoch"] = spe
        cores = os.cpu_count() or 1
        if workers > cores:
            notes.append(f"{workers} DataLoader workers on {cores} CPU cores: the workers compete with the step")
        return full

    def _feature_n(self, d: int) -> int:
        """Held-out images for feature quality: ``settings.feature_n``, else max(4 D, 256)."""
        s = self.settings
        n = int(s.feature_n) if s.feature_n is not None else max(MIN_N_PER_D * d, MIN_N)
        if n < 2:
            raise UserError(f"The feature-quality sample needs at least 2 images, got {n}.")
        return n

    def _setup_heldout(self, n_train: int) -> None:
        """The held-out split: validation loss (1:5 of the training images) and feature quality (first N)."""
        v, s, notes = self.values, self.settings, self.result["notes"]
        bench, data = v["bench"], v["data"]
        kind, seed = bench["data"], int(v["seed"])
        path = bench.get("data_path") or data.get("data_path")
        batch_size, workers = int(data["batch_size"]), int(data["num_workers"])
        persistent = bool(bench["persistent_workers"])
        pin = bool(data["pin_memory"]) and self.backend.device().type != "cpu"  # as the training loader
        n_val = max(batch_size, int(round(HELDOUT_RATIO * n_train)))
        eval_tf = build_eval_transform(int(data["image_size"]))
        size = max(n_val, self.feature_n)
        self.heldout = build_dataset(kind, path=path, train=False, size=size, seed=seed, transform=eval_tf)
        n_held = len(self.heldout)
        if self.feature_n > n_held:
            notes.append(f"feature quality on {n_held} held-out images (all there are), not {self.feature_n}")
            self.feature_n = n_held
        n_val = min(n_val, n_held)
        if n_val < batch_size:
            self.val_batches = 0
            notes.append(f"no validation loss: {n_held} held-out images are fewer than one batch of {batch_size}; "
                         "checkpoint_best follows the mean training loss")
            return
        val_set = Subset(self.heldout, range(n_val))
        self.val_loader = build_loader(val_set, batch_size=batch_size, num_workers=workers, pin_memory=pin,
                                       persistent_workers=persistent, shuffle=False, seed=seed)
        n_batches = len(self.val_loader)
        if s.val_max_batches is not None:
            n_batches = min(n_batches, max(1, int(s.val_max_batches)))
        self.val_batches = n_batches
        notes.append(f"validation loss: {n_batches} held-out batches of {batch_size} (train=False, eval "
                     "transform, the same masks every epoch), forward only, model.eval()")

    def _checkpoint_every(self) -> int:
        """Epochs between scheduled checkpoints: the setting, else the config's ``checkpoint.save_frequency``,
        else 1."""
        if self.settings.checkpoint_every_epochs is not None:
            every = int(self.settings.checkpoint_every_epochs)
        else:
            ckpt = self.values.get("checkpoint")
            freq = ckpt.get("save_frequency") if isinstance(ckpt, Mapping) else None
            every = int(freq) if freq else 1
        if every < 1:
            raise UserError(f"Checkpoints must be written every 1 or more epochs, got {every}.")
        return every

    def _setup_logging(self) -> None:
        """The trainer's periodic work as the config's ``logging`` asks (TensorBoard into ``out_dir``)."""
        assert self.trainer is not None
        self.plan = LoggingPlan.from_config(self.values)
        self.trainer.keep_features = True  # the collapse metrics read the step's embeddings, as upstream
        self.logger = TrainerLogger(self.plan, str(self.out_dir / "tensorboard") if self.plan.tensorboard else None,
                                    self.backend)
        self.result["notes"].append(
            f"the trainer's periodic work as the config asks: log_frequency {self.plan.log_frequency}, "
            f"TensorBoard {'on (' + str(self.out_dir / 'tensorboard') + ')' if self.plan.tensorboard else 'off'}"
            + (", Weights & Biases asked for but not run (no server here)" if self.plan.wandb else ""))

    # ------------------------------------------------------------------ artifacts
    def write(self) -> None:
        self.result["elapsed_s"] = time.perf_counter() - self.t_start
        write_json(self.result, self.out_dir / RESULT_FILE)

    def save_checkpoint(self, kind: str, epoch: int, name: str, copy_of: Path | None = None) -> dict[str, Any]:
        """Save the checkpoint as ``name`` (``copy_of``: copy that file, as the upstream manager copies
        its epoch file to ``checkpoint_latest.pth`` and ``checkpoint_best.pth``)."""
        trainer = self.trainer
        assert trainer is not None
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = self.ckpt_dir / name
        t0 = time.perf_counter()
        if copy_of is not None:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            shutil.copy(copy_of, tmp)
            os.replace(tmp, path)
        else:
            state = checkpoint_state(trainer, epoch, best_val_loss=self.best_metric, config=dict(self.values),
                                     global_step=trainer.global_step)
            save_checkpoint(state, path)
        entry = {"path": str(path), "epoch": epoch, "kind": kind, "global_step": trainer.global_step,
                 "save_s": time.perf_counter() - t0, "bytes": path.stat().st_size,
                 "copy_of": None if copy_of is None else copy_of.name}
        self.result["checkpoints"].append(entry)
        if kind == "latest":
            self.saved_at_step = trainer.global_step
        return entry

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def validation_loss(self) -> tuple[float | None, int, float]:
        """Mean forward-only loss over the held-out batches (fixed masks), batches, seconds."""
        trainer = self.trainer
        if self.val_loader is None or trainer is None:
            return None, 0, 0.0
        model, device = trainer.model, trainer.device
        rng = random.Random(int(self.values["seed"]) + 1)  # same masks every epoch
        t0 = time.perf_counter()
        total, n, it = 0.0, 0, None
        model.eval()
        try:
            it = _iter(self.val_loader)
            for _ in range(self.val_batches):
                images = to_device(next(it)[0], device)
                masks = masks_from_union(sample_batch_union(rng, trainer.spec, images.shape[0])).to(device)
                with trainer.autocast():
                    loss, _ = trainer.loss(images, masks)
                total += float(loss.float().item())
                n += 1
        finally:
            _release(self.val_loader, it, final=False)
            model.train()
        self.backend.synchronize()
        return (finite(total / n) if n else None), n, time.perf_counter() - t0

    @torch.no_grad()
    def features(self, epoch: int) -> dict[str, Any]:
        trainer = self.trainer
        assert trainer is not None
        encoder = trainer.model.target_encoder
        t0 = time.perf_counter()
        loader = DataLoader(Subset(self.heldout, range(self.feature_n)), batch_size=FEATURE_BATCH, shuffle=False,
                            num_workers=0, drop_last=False)
        was_training = encoder.training
        encoder.eval()
        try:
            feats, _ = extract_features(encoder, (images for images, _ in loader))
        finally:
            encoder.train(was_training)
        extract_s = time.perf_counter() - t0
        quality = feature_quality(feats.numpy())
        return {"epoch": epoch, "global_step": trainer.global_step, "n_images": self.feature_n,
                "encoder": "target_encoder (EMA), eval mode, no_grad, float32, mean of patch tokens",
                "extract_s": extract_s, "metrics_s": time.perf_counter() - t0 - extract_s, **quality}

    # ------------------------------------------------------------------ the self-check's measurements
    def measure_costs(self) -> None:
        """What the ``epoch_costs`` probe measures, on this run's trainer and loader, before the first
        epoch (the RNG states are put back, so the run trains as it would without them)."""
        trainer, loader = self.trainer, self.loader
        assert trainer is not None and loader is not None
        from .epoch_costs import measure_epoch_costs

        rng, torch_rng = trainer.rng.getstate(), torch.get_rng_state()
        t0 = time.perf_counter()
        try:
            costs = measure_epoch_costs(trainer, loader, self.backend, self.values,
                                        artifacts_dir=str(self.out_dir), steady_wait=None, build_model=False)
        finally:
            trainer.rng.setstate(rng)
            torch.set_rng_state(torch_rng)
        trainer.optimizer.zero_grad(set_to_none=True)
        costs["model_build_s"] = self.result["setup_s"]  # this run's own set-up: data, model, optimizer
        self.result["self_check"] = {"costs": costs, "measure_s": time.perf_counter() - t0,
                                     "loadavg_1m": _loadavg(), "plan": self.plan.as_dict()}

    # ------------------------------------------------------------------ training
    def _epoch_summary(self, acc: dict[str, Any], complete: bool) -> dict[str, Any]:
        steps, elapsed = acc["steps"], acc["elapsed_s"]
        losses = [x for x in acc["losses"] if x is not None]
        mem = self.backend.memory()
        return {
            "epoch": acc["epoch"],
            "steps": steps,
            "elapsed_s": elapsed,
            "it_per_s": steps / elapsed if steps and elapsed > 0 else None,
            "train_loss_mean": sum(losses) / len(losses) if losses else None,
            "train_loss_first": losses[0] if losses else None,
            "train_loss_last": losses[-1] if losses else None,
            "val_loss": acc.get("val_loss"),
            "val_batches": acc.get("val_batches", 0),
            "val_s": acc.get("val_s", 0.0),
            "lr_end": acc["lr_end"],
            "data_wait_s": acc["data_wait_s"],
            "data_wait_frac": acc["data_wait_s"] / elapsed if elapsed > 0 else None,
            "loader_start_s": acc["loader_start_s"],
            "features_s": acc.get("features_s", 0.0),
            "checkpoint_s": acc.get("checkpoint_s", 0.0),
            "peak_memory_bytes": mem.peak_bytes,
            "complete": complete,
        }

    def _note_peak(self, peak: int | None) -> None:
        if peak is not None:
            cur = self.result["peak_memory_bytes"]
            self.result["peak_memory_bytes"] = peak if cur is None else max(cur, peak)

    def train(self) -> None:
        s, trainer, loader = self.settings, self.trainer, self.loader
        assert trainer is not None and loader is not None
        epochs, spe = int(s.epochs), self.steps_per_epoch
        if s.features_at_start:
            self.result["features"].append(self.features(0))
        self.measure_costs()
        t_train0 = time.perf_counter()
        features_s = 0.0
        for epoch in range(1, epochs + 1):
            self.backend.reset_peak_memory()
            acc: dict[str, Any] = {"epoch": epoch, "steps": 0, "elapsed_s": 0.0, "losses": [], "lr_end": None,
                                   "data_wait_s": 0.0, "loader_start_s": 0.0, "periodic_s": {}, "terms": {}}
            self.partial = acc
            bar = tqdm(total=spe, desc=f"epoch {epoch}/{epochs}", unit="it", file=sys.stderr,
                       disable=not self.progress, dynamic_ncols=True, leave=True)
            t_epoch0 = time.perf_counter()
            if not self._train_epoch(epoch, acc, bar, t_epoch0, t_train0):
                return
            # ---- end of the epoch: validation loss, features, checkpoints, summary
            val_loss, n_val, val_s = self.validation_loss()
            acc.update(val_loss=val_loss, val_batches=n_val, val_s=val_s)
            features_s += self._epoch_features(epoch, acc)
            summary = self._epoch_summary(acc, complete=True)
            self._epoch_checkpoints(epoch, summary, val_loss)
            self._epoch_scalars(acc, summary, val_loss)
            summary["periodic_s"] = dict(acc["periodic_s"])
            summary["wall_s"] = time.perf_counter() - t_epoch0 - summary.get("features_s", 0.0)
            summary["loadavg_1m"] = _loadavg()
            self._note_peak(summary["peak_memory_bytes"])
            self.result["epochs"].append(summary)
            self.result["epochs_completed"] = epoch
            self.result["train_wall_s"] = time.perf_counter() - t_train0 - features_s
            self.partial = None
            self.write()
            if self.on_epoch is not None:
                self.on_epoch(summary)

    def _train_epoch(self, epoch: int, acc: dict[str, Any], bar: Any, t_epoch0: float, t_train0: float) -> bool:
        """The epoch's training steps, each timed (data wait: from the previous step's end, the loader's
        start-up for the first) and recorded; False when the run diverged."""
        backend, trainer, loader = self.backend, self.trainer, self.loader
        assert trainer is not None and loader is not None
        try:
            t0 = time.perf_counter()
            self.train_it = _iter(loader)
            acc["loader_start_s"] = time.perf_counter() - t0
            for i in range(self.steps_per_epoch):
                if i:
                    t0 = time.perf_counter()
                batch = next(self.train_it)
                t_batch = time.perf_counter()
                out = trainer(batch)
                backend.synchronize()
                t_end = time.perf_counter()
                backend.sample_memory()
                if self.logger is not None:
                    self._periodic_work(i, out, acc)
                loss, grad = self._record_step(epoch, out, acc, t_batch - t0, t_end - t_batch, t_end - t_epoch0)
                self._show_progress(bar, loss, acc, t_end - t_train0)
                if self._stopped(epoch, i, out, loss, grad):
                    return False
        finally:
            bar.close()
            _release(loader, self.train_it, final=False)
            self.train_it = None
        return True

    def _periodic_work(self, i: int, out: Any, acc: dict[str, Any]) -> None:
        """The trainer's per-step periodic work after step ``i`` (read-backs, logging, collapse metrics),
        its seconds per kind added to the epoch's."""
        trainer, logger = self.trainer, self.logger
        assert trainer is not None and logger is not None
        before = dict(logger.seconds)
        terms = logger.readback(out.loss, trainer.last_levels, trainer.optimizer,
                                trainer.optimizer.param_groups[0]["lr"])
        for k, x in terms.items():
            acc["terms"].setdefault(k, []).append(x)
        e = self.values["model"]["ema"]
        logger.after_step(
            batch_idx=i, global_step=trainer.global_step - 1, model=trainer.model, terms=terms,
            lr=float(out.lr or 0.0), ema=ema_momentum_at(trainer.global_step - 1, trainer.total_steps,
                                                         float(e["momentum"]), float(e["momentum_end"])),
            features=trainer.last_features)
        for k, x in logger.seconds.items():
            if x != before.get(k):
                acc["periodic_s"][k] = acc["periodic_s"].get(k, 0.0) + x - before.get(k, 0.0)

    def _record_step(self, epoch: int, out: Any, acc: dict[str, Any], wait_s: float, step_s: float,
                     epoch_elapsed_s: float) -> tuple[float | None, float | None]:
        """One step into the run's per-step series and the epoch's sums; returns its (loss, grad norm),
        None where not finite."""
        trainer, steps = self.trainer, self.result["steps"]
        assert trainer is not None
        loss = finite(out.loss.float().item())
        grad = finite(out.grad_norm.float().item()) if out.grad_norm is not None else None
        lr = float(out.lr if out.lr is not None else trainer.optimizer.param_groups[0]["lr"])
        steps["global_step"].append(trainer.global_step - 1)
        steps["epoch"].append(epoch)
        steps["loss"].append(loss)
        steps["grad_norm"].append(grad)
        steps["lr"].append(lr)
        steps["lr_in_warmup"].append(out.lr_in_warmup)
        steps["step_time_s"].append(step_s)
        steps["data_wait_s"].append(wait_s)
        acc["steps"] += 1
        acc["losses"].append(loss)
        acc["lr_end"] = lr
        acc["data_wait_s"] += wait_s
        acc["elapsed_s"] = epoch_elapsed_s
        return loss, grad

    def _show_progress(self, bar: Any, loss: float | None, acc: Mapping[str, Any], run_s: float) -> None:
        """The progress bar's loss, speed and time left, one step on."""
        done = len(self.result["steps"]["loss"])
        planned = int(self.settings.epochs) * self.steps_per_epoch
        bar.set_postfix({"loss": "nan" if loss is None else f"{loss:.4f}",
                         "it/s": f"{acc['steps'] / max(acc['elapsed_s'], 1e-9):.2f}",
                         "eta": tqdm.format_interval(run_s / done * (planned - done))},
                        refresh=False)
        bar.update(1)

    def _stopped(self, epoch: int, i: int, out: Any, loss: float | None, grad: float | None) -> bool:
        """True (the run diverged) for a non-finite loss, or gradient norm without a GradScaler; an fp16
        step the GradScaler skipped is counted."""
        trainer = self.trainer
        assert trainer is not None
        bad_grad = out.grad_norm is not None and grad is None
        if loss is None or (bad_grad and trainer.scaler is None):
            what = "loss" if loss is None else "gradient norm"
            self.result["status"] = "diverged"
            self.result["error"] = f"non-finite {what} at global step {trainer.global_step - 1} " \
                                   f"(epoch {epoch}, step {i + 1} of {self.steps_per_epoch})"
            return True
        if bad_grad:
            self.result["skipped_steps"] += 1  # fp16: the GradScaler skipped this step
        return False

    def _epoch_features(self, epoch: int, acc: dict[str, Any]) -> float:
        """Feature quality at the last epoch and every ``feature_every_epochs``; returns its seconds."""
        s = self.settings
        every = int(s.feature_every_epochs)
        if not (epoch == int(s.epochs) or (every > 0 and epoch % every == 0)):
            return 0.0
        t0 = time.perf_counter()
        self.result["features"].append(self.features(epoch))
        acc["features_s"] = time.perf_counter() - t0
        return acc["features_s"]

    def _epoch_checkpoints(self, epoch: int, summary: dict[str, Any], val_loss: float | None) -> None:
        """``checkpoint_latest.pth`` every epoch, copied to ``checkpoint_best.pth`` when the validation loss
        (else the mean training loss) improved and to ``checkpoint_epoch_{E}.pth`` on schedule."""
        metric = val_loss if val_loss is not None else summary["train_loss_mean"]
        improved = metric is not None and (self.best_metric is None or metric < self.best_metric)
        if improved:
            self.best_metric = metric
        t0 = time.perf_counter()
        latest = Path(self.save_checkpoint("latest", epoch, "checkpoint_latest.pth")["path"])
        if improved:
            self.save_checkpoint("best", epoch, "checkpoint_best.pth", copy_of=latest)
        if epoch % self.ckpt_every == 0:
            self.save_checkpoint("epoch", epoch, f"checkpoint_epoch_{epoch}.pth", copy_of=latest)
        summary["checkpoint_s"] = time.perf_counter() - t0
        summary["best"] = improved

    def _epoch_scalars(self, acc: dict[str, Any], summary: Mapping[str, Any], val_loss: float | None) -> None:
        """The trainer's epoch-end scalars (mean loss terms, train and validation loss), timed."""
        trainer = self.trainer
        assert trainer is not None
        t0 = time.perf_counter()
        if self.logger is not None:
            self.logger.epoch_end({k: sum(x) / len(x) for k, x in acc["terms"].items() if x},
                                  summary["train_loss_mean"], val_loss, trainer.global_step)
        acc["periodic_s"]["epoch_scalars"] = acc["periodic_s"].get("epoch_scalars", 0.0) + time.perf_counter() - t0

    # ------------------------------------------------------------------ stopping
    def close_partial(self) -> None:
        """Keep the epoch in progress (when the run stopped inside one) as ``partial_epoch``."""
        if self.partial is not None and self.partial["steps"]:
            summary = self._epoch_summary(self.partial, complete=False)
            self._note_peak(summary["peak_memory_bytes"])
            self.result["partial_epoch"] = summary
        self.partial = None

    def save_interrupted(self) -> None:
        trainer = self.trainer
        if trainer is None or trainer.global_step == 0 or self.saved_at_step == trainer.global_step:
            return
        epoch = self.result["epochs_completed"] + (1 if self.result["partial_epoch"] else 0)
        try:
            self.save_checkpoint("latest", epoch, "checkpoint_latest.pth")
            self.result["notes"].append(f"interrupted: checkpoint_latest.pth holds the state after "
                                        f"{trainer.global_step} steps (epoch {epoch} may be partial)")
        except KeyboardInterrupt:
            self.result["notes"].append("interrupted again while saving checkpoint_latest.pth; not saved")

    def close(self) -> None:
        if self.logger is not None:
            self.result["periodic_counts"] = dict(self.logger.counts)  # what the run did, per kind
            self.logger.close()
        _release(self.loader, self.train_it, final=True)
        self.train_it = None
        for loader in (self.loader, self.val_loader):
            if loader is not None:
                _release(loader, getattr(loader, "_iterator", None), final=True)

    def run(self) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        catcher = _FallbackWarnings()
        try:
            with catcher:
                try:
                    self.setup()
                    (self.out_dir / CONFIG_FILE).write_text(to_yaml(self.values))
                    self.train()
                except UserError:
                    raise
                except KeyboardInterrupt:
                    self.result["status"] = "interrupted"
                    self.result["error"] = "interrupted (KeyboardInterrupt)"
                    self.close_partial()
                    self.save_interrupted()
                except Exception as exc:
                    self.result["status"] = "oom" if self.backend.is_oom(exc) else "error"
                    self.result["error"] = f"{type(exc).__name__}: {exc}"
                finally:
                    self.close_partial()
                    self.close()
        finally:
            self.result["fallback_warnings"] = list(catcher.messages)
        if self.result.get("self_check"):
            from ..analysis.selfcheck import self_check
            self.result["self_check"]["check"] = self_check(self.result, WARMUP_STEPS)
        self.write()
        return self.result


def run_validation(values: Mapping[str, Any], backend: Any, settings: ValidationSettings, *,
                   progress: bool = True, on_epoch: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run the validation training run; return (and write to ``out_dir/validation.json``) its result.

    ``values`` is a resolved config (it is copied; ``training.epochs`` is set to
    ``settings.epochs`` so the LR and EMA schedules span this run).  Never raises
    for a failed or interrupted run (see ``status``); ``UserError`` propagates.
    """
    if int(settings.epochs) < 1:
        raise UserError(f"The validation run needs at least 1 epoch, got {settings.epochs}.")
    if int(settings.feature_every_epochs) < 0:
        raise UserError(f"feature_every_epochs cannot be negative, got {settings.feature_every_epochs}.")
    v = copy.deepcopy(dict(values))
    v["training"]["epochs"] = int(settings.epochs)
    return _ValidationRun(v, backend, settings, progress, on_epoch).run()


__all__ = ["RESULT_FILE", "STATUSES", "ValidationSettings", "run_validation"]
