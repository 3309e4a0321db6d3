"""The upstream trainer's periodic work: what it does and how often (pure counting rules).

The upstream H-JEPA trainer (``HJEPATrainer._train_epoch`` / ``_train_step`` / ``train``) does more
than the training step.  With ``batch_idx`` the index of the batch within its epoch (0 at the
start of every epoch, so the first batch of every epoch triggers all of the periodic ones) and
``log_frequency`` the config's ``logging.log_frequency`` (upstream default 100):

* every step: the loss dictionary's values are read back to the host (``.item()`` of the loss and
  of each level's loss) and accumulated; the learning rate is set in every parameter group;
* ``batch_idx % log_frequency == 0``: the progress bar's postfix with ``loss.item()``;
* ``batch_idx % (5 x log_frequency) == 0``: the scalars (lr, EMA momentum, every loss term) and
  the per-level losses and shares (2 scalars per level) to every enabled logger, and a memory
  reading;
* ``batch_idx % (20 x log_frequency) == 0``: a histogram of every parameter's gradient
  (``add_histogram("gradients/NAME", grad)``) to every enabled logger;
* ``batch_idx % (10 x log_frequency) == 0`` (inside the step, whatever the loggers): the
  collapse metrics (``hjepa_bench.hjepa.periodic.collapse_metrics``, with two SVDs);
* ``global_step % 50 == 0``: the device allocator's ``empty_cache`` (CUDA, MPS; a CPU has none);
* at every epoch's end: the epoch's scalars (the accumulated loss terms, the train loss, the
  validation loss) to every enabled logger; a checkpoint when ``(epoch + 1) % save_frequency == 0``
  *or* the validation loss improved (a ``torch.save`` plus copies to ``checkpoint_latest.pth``
  and, when best, ``checkpoint_best.pth``);
* every 5 epochs: prediction visualizations and TensorBoard embeddings.  hjepa-bench does not
  model these (they need the upstream model's output dictionary and TensorBoard's projector
  files); the projection leaves them out and says so.

A logger the config disables (``logging.tensorboard.enabled: false``, ``logging.wandb.enabled:
false``) costs nothing.  TensorBoard is measured with the real ``torch.utils.tensorboard``
``SummaryWriter``; Weights & Biases is not installed here and talks to a server, so a config that
enables it gets its costs named as not measured.

:func:`periodic_counts` counts each kind of work for a run (pure); ``hjepa_bench.hjepa.periodic.TrainerLogger`` does the
work (the validation run uses it, so its epochs cost what the trainer's do);
``hjepa_bench.hjepa.periodic.measure_periodic`` times each kind once on the run's model and device (the ``epoch_costs``
probe).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..stats import is_finite_number

#: upstream defaults (HJEPATrainer / MetricsLogger) for a config without a logging section
DEFAULT_LOG_FREQUENCY = 100
EMPTY_CACHE_EVERY = 50
SCALARS_EVERY = 5  # x log_frequency
HISTOGRAMS_EVERY = 20
COLLAPSE_EVERY = 10
#: rows of the embedding matrices the collapse metrics take their SVD of (upstream: first 100)
COLLAPSE_ROWS = 100
#: kinds of periodic work, in table order
KINDS = ("readback", "postfix", "scalars", "histograms", "collapse", "empty_cache")


@dataclass(frozen=True)
class LoggingPlan:
    """What of the trainer's periodic work a config asks for."""

    log_frequency: int = DEFAULT_LOG_FREQUENCY
    tensorboard: bool = True
    wandb: bool = False

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> LoggingPlan:
        """From ``logging.log_frequency``, ``logging.tensorboard.enabled`` and ``logging.wandb.enabled``
        (upstream's defaults where the config has none: 100, true, false)."""
        log = section if isinstance(section := values.get("logging"), Mapping) else {}
        tb = section if isinstance(section := log.get("tensorboard"), Mapping) else {}
        wb = section if isinstance(section := log.get("wandb"), Mapping) else {}
        freq = log.get("log_frequency")
        return cls(log_frequency=int(freq) if isinstance(freq, int) and not isinstance(freq, bool) and freq >= 1
                   else DEFAULT_LOG_FREQUENCY,
                   tensorboard=bool(tb.get("enabled", True)), wandb=bool(wb.get("enabled", False)))

    @property
    def any_logger(self) -> bool:
        return self.tensorboard or self.wandb

    def events(self, batch_idx: int, global_step: int, empty_cache: bool) -> list[str]:
        """The periodic work the trainer does after the step of ``batch_idx`` (within its epoch) at
        ``global_step`` (the step's index in the run, from 0), besides the every-step read-back."""
        lf, out = self.log_frequency, []
        if batch_idx % (COLLAPSE_EVERY * lf) == 0:  # in the step, before the logging (its values are logged)
            out.append("collapse")
        if batch_idx % lf == 0:
            out.append("postfix")
            if self.any_logger and batch_idx % (SCALARS_EVERY * lf) == 0:
                out.append("scalars")
            if self.any_logger and batch_idx % (HISTOGRAMS_EVERY * lf) == 0:
                out.append("histograms")
        if empty_cache and global_step % EMPTY_CACHE_EVERY == 0:
            out.append("empty_cache")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"log_frequency": self.log_frequency, "tensorboard": self.tensorboard, "wandb": self.wandb}


def has_empty_cache(device_type: str) -> bool:
    """Whether the device has an allocator cache the trainer empties (cuda, mps; not the CPU)."""
    return device_type in ("cuda", "mps")


def _every(n: int, k: int) -> int:
    """How many of 0 .. n-1 are multiples of k."""
    return 0 if n <= 0 else (n - 1) // k + 1


def periodic_counts(plan: LoggingPlan, steps_per_epoch: int, epochs: int, *, levels: int,
                    empty_cache: bool) -> dict[str, int]:
    """How many times a run of ``epochs`` x ``steps_per_epoch`` does each kind of periodic work.

    ``scalar_values``: scalars written (5 x log_frequency events: lr, EMA momentum, the loss and
    one term per level, then 2 per level, and the 6 collapse metrics when the step also computed
    them, every 10 x log_frequency; epoch ends: the loss terms accumulated, the train loss, the
    validation loss); ``memory_reads``: one per scalars event.  Zero for a run whose loggers
    are all disabled."""
    lf, spe = plan.log_frequency, steps_per_epoch
    terms = 1 + levels
    logged = plan.any_logger
    scalar_events = epochs * _every(spe, SCALARS_EVERY * lf) if logged else 0
    return {
        "readback": epochs * spe,
        "postfix": epochs * _every(spe, lf),
        "scalar_events": scalar_events,
        "scalar_values": (scalar_events * (2 + terms + 2 * levels) + epochs * _every(spe, COLLAPSE_EVERY * lf) * 6
                          + epochs * (terms + 2)) if logged else 0,
        "memory_reads": scalar_events,
        "histograms": epochs * _every(spe, HISTOGRAMS_EVERY * lf) if logged else 0,
        "collapse": epochs * _every(spe, COLLAPSE_EVERY * lf),
        "empty_cache": _every(epochs * spe, EMPTY_CACHE_EVERY) if empty_cache else 0,
    }


def periodic_seconds(counts: Mapping[str, int], costs: Mapping[str, Any], plan: LoggingPlan) -> dict[str, float | None]:
    """count x measured cost for each column of the projection: read-backs (+ progress-bar postfix),
    TensorBoard scalars (+ memory readings), gradient histograms, collapse metrics, empty_cache.
    None: the work is done but its cost was not measured; 0.0: the work is not done."""
    def cost(key: str) -> float | None:
        v = costs.get(key)
        return float(v) if is_finite_number(v) else None

    def times(n: int, *keys: str) -> float | None:
        if n == 0:
            return 0.0
        measured = [c for c in (cost(k) for k in keys) if c is not None]
        return None if len(measured) < len(keys) else n * sum(measured)

    out: dict[str, float | None] = {}
    rb, pf = times(counts["readback"], "readback_s"), times(counts["postfix"], "postfix_s")
    out["readbacks"] = None if rb is None or pf is None else rb + pf
    if plan.wandb:  # not measurable here: every logging column is then unknown
        out["scalars"] = out["histograms"] = None
    else:
        sc = times(counts["scalar_values"], "scalar_s")
        mem = times(counts["memory_reads"], "memory_read_s")
        out["scalars"] = None if sc is None or mem is None else sc + mem
        out["histograms"] = times(counts["histograms"], "histograms_s")
    out["collapse"] = times(counts["collapse"], "collapse_s")
    out["empty_cache"] = times(counts["empty_cache"], "empty_cache_s")
    return out
