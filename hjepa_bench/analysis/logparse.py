"""Read an upstream H-JEPA training log and compute honest speed and loss facts from it.

Pure functions (text in, dataclasses / a JSON-ready dict out; no torch, no files).
``parse_log`` reads the text; ``analyze_log`` computes the facts.  Every number in
the result comes from the log; a fact the log does not hold is None, never guessed.

Accepted format
===============
The upstream trainer (github.com/jonwiggins/H-JEPA: ``scripts/train.py``,
``src/trainers/trainer.py``, ``src/utils/logging.py``) writes to one stream:

* **Logging lines**, ``logging.Formatter("%(asctime)s - %(name)s - %(levelname)s -
  %(message)s", datefmt="%Y-%m-%d %H:%M:%S")``, e.g.
  ``2025-11-16 13:41:02 - __main__ - INFO - Total parameters: 12,051,264``.
  Also accepted: milliseconds on the time (``,123``), a ``T`` between date and
  time, and no logger name (``time - LEVEL - message``).  A message may span
  several physical lines (the epoch summary does); the lines after it that are
  not logging lines or bars are read as its continuation.
* **Printed lines** of the run's configuration summary (``  Encoder: vit_tiny``,
  ``  Batch size: 32``, ...): read for facts, but they do not by themselves make a
  text an H-JEPA log.
* **tqdm bars**, refreshed with carriage returns (one physical line can hold
  hundreds of refreshes): ``{desc}: {pct}%|{bar}| {n}/{total} [{elapsed}<{remaining},
  {rate}{, postfix}]`` (also the no-total form ``{desc}: {n}it [{elapsed}, {rate}]``).
  ``elapsed`` is tqdm's ``format_interval`` (``MM:SS``, ``H:MM:SS``, ``Nd H:MM:SS``,
  whole seconds, rounded down); ``rate`` is ``3.14it/s``, ``3.65s/it`` (inverted
  to it/s) or ``?it/s`` (None); the bar may hold ``#``, spaces or unicode blocks.
  ANSI escape sequences are removed first.
  - A **training bar** has a description ``Epoch E/T`` (``Epoch E``,
    ``Training Epoch E/T`` and ``Epoch [E/T]`` too) and a ``loss=``/``lr=`` postfix
    that upstream refreshes only every ``log_frequency`` batches.
  - A **validation bar** has ``val``/``validation``/``eval`` in its description or
    a ``val_loss=`` postfix (upstream: ``Validation E/T``, leave=False).  It never
    counts as training speed.  Without an epoch number in its description it
    belongs to the last training epoch seen before it.
  - Other bars are counted and ignored.
* **Epoch summaries**: upstream logs a multi-line block
  ``Epoch E/T Summary`` / ``Train Loss: x`` / ``Val Loss:   y`` / ``Elapsed: HH:MM:SS``
  / ``ETA: ...`` between ``====`` rules.  One-line variants such as
  ``Epoch 1/5 - train_loss: 0.0042, val_loss: 0.0040`` or
  ``Epoch 1/5 Summary: Train Loss: 0.0042 | Val Loss: 0.0040`` are accepted.
* **Facts** (``ParsedLog.info``), first value wins, a later different value is a
  warning: ``Total parameters:``, ``Trainable parameters:``, ``Using device:`` /
  ``Device:``, ``Training for N epochs`` / ``Epochs:``, ``Batch size:``,
  ``Encoder:``, ``Hierarchies:`` / ``hierarchical levels:``, ``Predictor depth:``,
  ``Workers:``, ``Learning rate:`` / ``(lr=...)``, ``Warmup epochs:``,
  ``Training dataset size:``, ``Image size:`` and ``Override: key = value``.
  ``steps_per_epoch`` is the most common training-bar total (else the logged
  ``Steps per epoch:`` / ``Training batches per epoch:``).

Where parsing stops (``ParsedLog.stopped_at``)
----------------------------------------------
* A physical line holding NUL bytes or more than ``BINARY_LINE_FRACTION`` of
  non-printable characters ends the parse there (garbage after a valid log).
  Before any recognised content it is an error (a binary file).
* The file's last segment when it has no line end and is not a complete bar
  refresh: a cut-off bar refresh or logging line (truncated file).  It is
  ignored; it is not an error.

Errors (``LogParseError``, one sentence): empty text; binary content; a text with
no training bar and no recognised trainer logging line.

Analysis rules (the constants below; copied into ``analyze_log(...)["rules"]``)
==============================================================================
* **Speed comes from the bars' counters**, never from tqdm's smoothed rate.
  For each training epoch, the last refresh gives ``steps`` (n) and
  ``elapsed_s``; ``it_per_s = steps / elapsed_s``.  The last smoothed rate shown
  is reported as ``bar_it_per_s`` for comparison only.  If an epoch's bar
  restarts (n or elapsed goes back), only its last run is used (warning).
* **Intervals.**  A bar starts at (n=0, 0 s).  The distinct (n, elapsed) refreshes
  are merged into intervals of at least ``MIN_INTERVAL_S`` seconds (elapsed has a
  1-s resolution).  A single gap of at least ``MIN_INTERVAL_S`` between two
  consecutive refreshes is an interval of its own (a stall stays whole); the
  partial interval just before it is merged into the previous regular interval,
  else kept alone when it spans at least ``MIN_PARTIAL_S``, else folded into the
  gap.  The remainder at the end of a bar is merged into the previous regular
  interval (or kept alone).  An epoch shorter than ``MIN_INTERVAL_S`` is one
  interval.  Interval rate = steps / seconds.
* With at least ``MIN_INTERVALS_CLASSIFY`` intervals in an epoch (else no
  warm-up / stall split and no steady rate for it):
  - ``median`` = the median interval rate of the epoch;
  - **warm-up** = the leading intervals slower than ``WARMUP_FRACTION`` x median
    (worker start-up; every epoch restarts its workers upstream);
  - **stall** = any later interval slower than ``STALL_FRACTION`` x median;
    ``seconds`` = the interval's length, ``excess_s`` = seconds minus the time its
    steps take at the median rate;
  - ``steady_it_per_s`` = steps / seconds excluding warm-up and stalls.
* ``overall``: sums over the epochs (training bar time only: validation and the
  time between bars are not included); ``steady_it_per_s`` pools the classified
  epochs; ``step_time_cv`` = std (ddof=1) / mean of the seconds-per-step of the
  steady intervals of all epochs (None below ``MIN_INTERVALS_CV`` of them).
* **Loss**: the loss/lr postfix is refreshed only every ``log_frequency`` batches,
  so the series is the DISTINCT postfix emissions: a refresh whose (loss, lr)
  text differs from the previous refresh of the same bar, attributed to the
  global step at which it first appeared, ``(epoch - 1) * steps_per_epoch + n``
  (steps_per_epoch = the bar total; without totals, the steps of the earlier
  epochs).  Non-finite losses are counted (``non_finite``) and kept as None.
  Window ``w`` = ``smooth_window`` or ``max(MIN_WINDOW, n // 10)``;
  ``start``/``end`` = mean of the first / last ``w`` finite points (needs
  ``2 w`` points); ``smoothed`` = trailing mean over ``w`` points;
  ``decrease_pct`` = (start - end) / |start| * 100; ``noise_pct``, ``diverged``
  and ``trend`` follow ``hjepa_bench.analysis.loss_curve`` (same thresholds).
* **Validation loss** per epoch: the epoch summary's ``Val Loss`` (the mean over
  the validation set) when logged, else the last ``val_loss=`` shown by that
  epoch's validation bar (one batch); ``val_loss_source`` says which.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..format import finite
from .loss_curve import (DIVERGE_RISE_PCT, FLAT_BAND_PCT, MIN_POINTS_NOISE, MIN_WINDOW, NOISE_THRESHOLD_PCT,
                         rolling_median)

# --------------------------------------------------------------------------- rules
MIN_INTERVAL_S = 10.0  # merge refreshes into intervals of at least this many seconds
MIN_PARTIAL_S = 1.0  # a partial interval before a long gap stands alone only from this length
MIN_INTERVALS_CLASSIFY = 3  # an epoch needs this many intervals for a warm-up / stall split
WARMUP_FRACTION = 0.8  # leading intervals slower than this x the epoch's median rate: warm-up
STALL_FRACTION = 0.5  # later intervals slower than this x the epoch's median rate: stall
MIN_INTERVALS_CV = 3  # step_time_cv needs this many steady intervals
ELAPSED_RESOLUTION_S = 1.0  # tqdm prints elapsed in whole seconds (rounded down)
BINARY_LINE_FRACTION = 0.3  # a line with more non-printable characters than this is binary
BINARY_MIN_BAD_CHARS = 3  # ... and at least this many of them (or any NUL)

RULES: dict[str, Any] = {
    "min_interval_s": MIN_INTERVAL_S,
    "min_partial_s": MIN_PARTIAL_S,
    "min_intervals_classify": MIN_INTERVALS_CLASSIFY,
    "warmup_fraction": WARMUP_FRACTION,
    "stall_fraction": STALL_FRACTION,
    "min_intervals_cv": MIN_INTERVALS_CV,
    "elapsed_resolution_s": ELAPSED_RESOLUTION_S,
    "loss_min_window": MIN_WINDOW,
    "loss_min_points_noise": MIN_POINTS_NOISE,
    "loss_noise_threshold_pct": NOISE_THRESHOLD_PCT,
    "loss_diverge_rise_pct": DIVERGE_RISE_PCT,
    "loss_flat_band_pct": FLAT_BAND_PCT,
    "definitions": {
        "it_per_s": "steps / elapsed_s of the epoch's last training-bar refresh (counters, not tqdm's smoothed rate)",
        "bar_it_per_s": "the last smoothed rate the bar showed (s/it inverted); for comparison only",
        "intervals": (f"distinct (n, elapsed) refreshes from (0, 0 s) merged into intervals >= {MIN_INTERVAL_S:g} s; "
                      f"a single refresh gap >= {MIN_INTERVAL_S:g} s is its own interval"),
        "warmup": (f"leading intervals of an epoch slower than {WARMUP_FRACTION:g} x its median interval rate "
                   f"(epochs with >= {MIN_INTERVALS_CLASSIFY} intervals)"),
        "stall": f"a later interval slower than {STALL_FRACTION:g} x the epoch's median interval rate",
        "steady_it_per_s": "steps / seconds excluding warm-up and stall intervals",
        "step_time_cv": (f"std (ddof=1) / mean of seconds-per-step over the steady intervals "
                         f"(>= {MIN_INTERVALS_CV} needed)"),
        "overall": "sums over the training bars only (validation and time between bars excluded)",
        "loss_points": "distinct loss/lr postfix emissions, at global step (epoch - 1) * steps_per_epoch + n",
        "loss_window": f"smooth_window, else max({MIN_WINDOW}, n // 10) over the n finite loss points",
        "loss_start_end": "mean of the first / last w finite loss points (needs 2 w points)",
        "loss_smoothed": "trailing mean over w finite loss points",
        "decrease_pct": "(start - end) / |start| * 100",
        "noise_pct": "std (ddof=1) of (loss - centred rolling median over w) / |median| * 100",
        "diverged": f"any non-finite loss, or end above start by more than {DIVERGE_RISE_PCT:g}%",
        "trend": (f"diverged, else decreasing (decrease_pct >= {FLAT_BAND_PCT:g}), increasing "
                  f"(<= -{FLAT_BAND_PCT:g}) or flat"),
        "val_loss": "epoch summary 'Val Loss' (mean over the set) when logged, else the validation bar's last val_loss",
    },
}


class LogParseError(ValueError):
    """The text cannot be read as an H-JEPA training log; the message is one sentence for the user."""


@dataclass
class BarPoint:
    """One training-bar refresh."""
    epoch: int
    epochs_total: int | None
    n: int
    total: int | None
    elapsed_s: float
    rate_it_per_s: float | None  # tqdm's smoothed rate in it/s (s/it inverted); None for '?'
    loss: float | None
    lr: float | None
    line_no: int  # 1-based physical line
    postfix: str = ""  # the raw postfix text (tells a new emission from a stale repeat)


@dataclass
class ParsedLog:
    train: list[BarPoint]
    val: list[dict]
    info: dict[str, Any]
    epoch_summaries: list[dict]
    logging_lines: int
    bar_refreshes: int
    lines_total: int
    stopped_at: str | None
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- regular expressions
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Za-z0-9]|\x1b[=>78M]")
_NONPRINT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")
_LOGLINE = re.compile(
    r"^\s*(?P<ts>\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[,.]\d+)?)\s+-\s+"
    r"(?:(?P<name>[^\s]+)\s+-\s+)??(?P<level>DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\s+-\s?(?P<msg>.*)$")
_LOG_PREFIX = re.compile(r"^\s*\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}")
_INTERVAL = r"(?:\d+d\s*)?(?:\d+:)?\d{1,2}:\d{2}"
_BAR = re.compile(
    r"^\s*(?:(?P<desc>[^\r\n]*?):\s*)?"
    r"(?:(?P<pct>\d{1,3})%\|(?P<bar>.*)\|\s*(?P<n>\d+)/(?P<total>\d+)"
    r"|(?P<n2>\d+)(?:it|[a-zA-Z]+)?)"
    r"\s*\[(?P<elapsed>" + _INTERVAL + r")(?:<(?P<remaining>[^,\]]*))?,\s*(?P<rate>[^,\]]*?)"
    r"(?:,\s*(?P<postfix>[^\]]*))?\]\s*$")
_BARLIKE = re.compile(r"\d{1,3}%\||^\s*(?:Train(?:ing)?\s+)?Epoch\b|^\s*Val(?:idation)?\b", re.I)
_BAR_EVIDENCE = re.compile(r"\d{1,3}%\||\[\d+:\d{2}")
_RATE = re.compile(r"^\s*(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*(?P<si>[kMGTP]?)"
                   r"(?P<unit>[A-Za-z]*/s|s/[A-Za-z]*)\s*$")
_TRAIN_DESC = re.compile(r"^\s*(?:Train(?:ing)?\s*)?Epoch\s*\[?\s*(\d+)\s*(?:/\s*(\d+))?\s*\]?", re.I)
_VAL_DESC = re.compile(r"\bval(?:id(?:ation)?)?\b|\beval", re.I)
_NUM_PAIR = re.compile(r"(\d+)\s*/\s*(\d+)")
_FLOAT = r"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf(?:inity)?)"
_SUMMARY_HEAD = re.compile(r"^\s*Epoch\s*\[?\s*(\d+)\s*(?:/\s*(\d+))?\s*\]?\s+Summary\b[\s:\-|]*(?P<rest>.*)$", re.I)
_SUMMARY_ONE = re.compile(r"^\s*Epoch\s*\[?\s*(\d+)\s*(?:/\s*(\d+))?\s*\]?\s*(?:[-:|,]\s*|\s+)(?P<rest>.*)$", re.I)
_LOSS_KV = re.compile(
    r"(?P<key>\btrain(?:ing)?[\s_]*loss|\bval(?:id(?:ation)?)?[\s_]*loss|\bloss)\s*[:=]\s*(?P<val>" + _FLOAT + r")",
    re.I)
_SUMMARY_FIELD = re.compile(
    r"^\s*(?P<key>Train(?:ing)?\s*Loss|Val(?:idation)?\s*Loss|Elapsed|ETA)\s*:\s*(?P<val>.*?)\s*$", re.I)
_RULE_LINE = re.compile(r"^\s*[=\-*#]*\s*$")
_KNOWN_MSG = re.compile(r"HJEPATrainer|H-JEPA|Starting training|Training completed|Steps per epoch|"
                        r"Training batches per epoch|Building (?:datasets|H-JEPA model|masking|loss|optimizer|trainer)",
                        re.I)

_INT = r"(\d[\d,_]*)"
_FACTS: list[tuple[str, re.Pattern, str]] = [
    ("total_params", re.compile(r"\bTotal param(?:eter)?s\s*[:=]\s*" + _INT, re.I), "int"),
    ("trainable_params", re.compile(r"\bTrainable param(?:eter)?s\s*[:=]\s*" + _INT, re.I), "int"),
    ("device", re.compile(r"^\s*(?:Using device|Device)\s*[:=]\s*(\S+)", re.I), "str"),
    ("epochs", re.compile(r"\bTraining for (\d+) epochs?\b", re.I), "int"),
    ("epochs", re.compile(r"^\s*(?:Override:\s*)?epochs\s*[:=]\s*(\d+)\s*$", re.I), "int"),
    ("batch_size", re.compile(r"^\s*(?:Override:\s*)?batch[\s_]size\s*[:=]\s*(\d+)\s*$", re.I), "int"),
    ("encoder_type", re.compile(r"^\s*(?:Encoder|encoder_type)\s*[:=]\s*(\S+)\s*$", re.I), "str"),
    ("num_hierarchies", re.compile(r"^\s*(?:Hierarchies|num_hierarchies)\s*[:=]\s*(\d+)\s*$", re.I), "int"),
    ("num_hierarchies", re.compile(r"\bhierarchical levels\s*:\s*(\d+)", re.I), "int"),
    ("predictor_depth", re.compile(r"^\s*Predictor[\s_]depth\s*[:=]\s*(\d+)\s*$", re.I), "int"),
    ("num_workers", re.compile(r"^\s*(?:Override:\s*)?(?:Workers|num_workers)\s*[:=]\s*(\d+)\s*$", re.I), "int"),
    ("lr", re.compile(r"^\s*(?:Override:\s*)?(?:Learning rate|lr)\s*[:=]\s*(" + _FLOAT + r")\s*$", re.I), "float"),
    ("lr", re.compile(r"^\s*Optimizer:.*\(lr=(" + _FLOAT + r")\)", re.I), "float"),
    ("warmup_epochs", re.compile(r"^\s*(?:Override:\s*)?warmup[\s_]epochs\s*[:=]\s*(\d+)\s*$", re.I), "int"),
    ("dataset_size", re.compile(r"^\s*Train(?:ing)? dataset size\s*[:=]\s*" + _INT, re.I), "int"),
    ("image_size", re.compile(r"^\s*Image[\s_]size\s*[:=]\s*(\d+)\s*$", re.I), "int"),
    ("logged_steps_per_epoch", re.compile(r"^\s*(?:Steps per epoch|Training batches per epoch)\s*[:=]\s*" + _INT,
                                          re.I), "int"),
]


# --------------------------------------------------------------------------- small parsers
_num = finite  # a finite float or None (the output is JSON, which has no NaN)


def _float(text: str | None) -> float | None:
    """Parse a float as printed (nan / inf allowed); None when it is not a number."""
    if text is None:
        return None
    try:
        return float(text.strip())
    except ValueError:
        return None


def parse_interval(text: str) -> float | None:
    """tqdm's ``format_interval`` back to seconds: ``MM:SS``, ``H:MM:SS``, ``Nd H:MM:SS``."""
    m = re.fullmatch(r"\s*(?:(\d+)d\s*)?(?:(\d+):)?(\d+):(\d+)\s*", text or "")
    if not m:
        return None
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    return float(((d * 24 + h) * 60 + mi) * 60 + s)


_SI = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}


def parse_rate(text: str) -> float | None:
    """tqdm's rate field in it/s: ``3.14it/s`` -> 3.14, ``3.65s/it`` -> 1/3.65, ``?it/s`` -> None."""
    m = _RATE.match(text or "")
    if not m:
        return None
    v = float(m.group("num")) * _SI[m.group("si")]
    if m.group("unit").startswith("s/"):
        return 1.0 / v if v > 0 else None
    return v


def _postfix_items(postfix: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in re.split(r",\s*", postfix or ""):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _is_binary(line: str) -> str | None:
    """Why the line is binary (NUL bytes / non-printable characters), or None."""
    if "\x00" in line:
        return "NUL bytes"
    bad = len(_NONPRINT.findall(line))
    if bad >= BINARY_MIN_BAD_CHARS and bad > BINARY_LINE_FRACTION * len(line):
        return "mostly non-printable characters"
    return None


def _to_value(raw: str, kind: str) -> Any:
    if kind == "int":
        try:
            return int(raw.replace(",", "").replace("_", ""))
        except ValueError:
            return None
    if kind == "float":
        return _num(_float(raw))
    return raw


# --------------------------------------------------------------------------- the parser
class _State:
    def __init__(self) -> None:
        self.train: list[BarPoint] = []
        self.val: list[dict] = []
        self.info: dict[str, Any] = {}
        self.info_line: dict[str, int] = {}
        self.summaries: list[dict] = []
        self.summary: dict | None = None
        self.logging_lines = 0
        self.trainer_logging_lines = 0
        self.bar_refreshes = 0
        self.other_bars = 0
        self.bad_bars = 0
        self.bad_bar_first: int | None = None
        self.warnings: list[str] = []
        self.last_epoch: int | None = None

    @property
    def recognised(self) -> bool:
        return bool(self.train) or self.trainer_logging_lines > 0

    # -- facts and summaries from one message / printed line
    def text_line(self, msg: str, line_no: int) -> bool:
        """Read facts and summaries from one line of text; True when it held something recognised."""
        found = False
        head = _SUMMARY_HEAD.match(msg)
        if head:
            self.summary = {"epoch": int(head.group(1)),
                            "epochs_total": int(head.group(2)) if head.group(2) else None,
                            "train_loss": None, "val_loss": None, "run_elapsed_s": None, "line_no": line_no}
            self.summaries.append(self.summary)
            self._summary_kv(head.group("rest"))
            return True
        one = _SUMMARY_ONE.match(msg)
        if one and _LOSS_KV.search(one.group("rest")):
            self.summary = None
            s = {"epoch": int(one.group(1)), "epochs_total": int(one.group(2)) if one.group(2) else None,
                 "train_loss": None, "val_loss": None, "run_elapsed_s": None, "line_no": line_no}
            self.summaries.append(s)
            self.summary = s
            self._summary_kv(one.group("rest"))
            self.summary = None
            return True
        if self.summary is not None:
            f = _SUMMARY_FIELD.match(msg)
            if f:
                key = f.group("key").lower().replace(" ", "")
                val = f.group("val")
                if key.startswith("train"):
                    self.summary["train_loss"] = _num(_float(val))
                elif key.startswith("val"):
                    self.summary["val_loss"] = _num(_float(val))
                elif key == "elapsed":
                    self.summary["run_elapsed_s"] = parse_interval(val)
                return True
            if _RULE_LINE.match(msg):
                return True
            self.summary = None
        for key, rx, kind in _FACTS:
            m = rx.search(msg)
            if not m:
                continue
            value = _to_value(m.group(1), kind)
            if value is None:
                continue
            found = True
            if key not in self.info:
                self.info[key] = value
                self.info_line[key] = line_no
            elif self.info[key] != value:
                self.warnings.append(f"line {line_no}: {key} is {value!r} here but {self.info[key]!r} at line "
                                     f"{self.info_line[key]}; the first value is used")
            break
        return found or bool(_KNOWN_MSG.search(msg))

    def _summary_kv(self, rest: str) -> None:
        assert self.summary is not None
        for m in _LOSS_KV.finditer(rest or ""):
            key = m.group("key").lower()
            v = _num(_float(m.group("val")))
            if key.startswith("val"):
                self.summary["val_loss"] = v
            else:
                self.summary["train_loss"] = v
        e = re.search(r"\belapsed\s*[:=]\s*(" + _INTERVAL + ")", rest or "", re.I)
        if e:
            self.summary["run_elapsed_s"] = parse_interval(e.group(1))

    # -- one bar refresh
    def bar(self, m: re.Match, line_no: int) -> None:
        self.summary = None
        desc = (m.group("desc") or "").strip()
        n = int(m.group("n") if m.group("n") is not None else m.group("n2"))
        total = int(m.group("total")) if m.group("total") is not None else None
        elapsed = parse_interval(m.group("elapsed"))
        rate = parse_rate(m.group("rate"))
        postfix = (m.group("postfix") or "").strip()
        items = _postfix_items(postfix)
        if elapsed is None:
            self._bad_bar(line_no)
            return
        self.bar_refreshes += 1
        is_val = bool(_VAL_DESC.search(desc)) or any(k.startswith("val") for k in items)
        if is_val:
            pair = _NUM_PAIR.search(desc)
            epoch = int(pair.group(1)) if pair else self.last_epoch
            self.val.append({"epoch": epoch, "n": n, "total": total, "elapsed_s": elapsed,
                             "val_loss": _float(items["val_loss"]) if "val_loss" in items else None,
                             "rate_it_per_s": rate, "line_no": line_no})
            return
        td = _TRAIN_DESC.match(desc)
        if not td:
            self.other_bars += 1
            return
        epoch = int(td.group(1))
        self.last_epoch = epoch
        self.train.append(BarPoint(
            epoch=epoch, epochs_total=int(td.group(2)) if td.group(2) else None, n=n, total=total,
            elapsed_s=elapsed, rate_it_per_s=rate,
            loss=_float(items["loss"]) if "loss" in items else None,
            lr=_float(items["lr"]) if "lr" in items else None,
            line_no=line_no, postfix=postfix))

    def _bad_bar(self, line_no: int) -> None:
        self.bad_bars += 1
        if self.bad_bar_first is None:
            self.bad_bar_first = line_no


def _strip_ansi(s: str) -> str:
    return _ANSI.sub("", s) if "\x1b" in s else s


def parse_log(text: str) -> ParsedLog:
    """Parse the text of an upstream H-JEPA training log (see the module docstring for the format)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if text is None or not text.strip():
        raise LogParseError("The log is empty: it holds no text to read.")
    lines = text.split("\n")
    ends_with_line_end = text.endswith("\n")
    if ends_with_line_end:
        lines = lines[:-1]
    lines_total = len(lines)
    st = _State()
    stopped_at: str | None = None

    for line_no, raw in enumerate(lines, start=1):
        line = _strip_ansi(raw)
        why = _is_binary(line)
        if why:
            if not st.recognised:
                raise LogParseError(f"This is not a text training log: line {line_no} holds binary content ({why}).")
            stopped_at = (f"line {line_no}: binary content ({why}) after the valid log; parsing stopped there "
                          f"and the {lines_total - line_no + 1} line(s) from it on were ignored")
            break
        segments = line.split("\r")
        last_line = line_no == lines_total and not ends_with_line_end
        for j, seg in enumerate(segments):
            if not seg.strip():
                continue
            final = last_line and j == len(segments) - 1
            m = _BAR.match(seg)
            if m:
                st.bar(m, line_no)
                continue
            if final:
                if _LOG_PREFIX.match(seg):
                    stopped_at = (f"line {line_no}: the last logging line is cut off (no line end: truncated "
                                  f"file); it was ignored")
                elif _BARLIKE.search(seg) or j > 0:
                    stopped_at = (f"line {line_no}: the last progress bar refresh is cut off mid-refresh "
                                  f"(truncated file); it was ignored")
                else:
                    stopped_at = (f"line {line_no}: the last line has no line end (truncated file); "
                                  f"it was ignored")
                continue
            lm = _LOGLINE.match(seg)
            if lm:
                st.logging_lines += 1
                st.summary = None
                if st.text_line(lm.group("msg"), line_no):
                    st.trainer_logging_lines += 1
                continue
            if _BARLIKE.search(seg) and _BAR_EVIDENCE.search(seg):
                st._bad_bar(line_no)
                continue
            st.text_line(seg, line_no)

    if not st.recognised:
        raise LogParseError(
            f"This does not look like an H-JEPA training log: none of its {lines_total} line(s) holds a training "
            f"progress bar ('Epoch N/M: ..%|..| n/total [MM:SS<..]') or a trainer logging line "
            f"('YYYY-MM-DD HH:MM:SS - name - INFO - ...' with parameters, device, epochs or an epoch summary).")

    if st.bad_bars:
        st.warnings.append(f"{st.bad_bars} progress-bar fragment(s) could not be read (first at line "
                           f"{st.bad_bar_first}); they were skipped")
    if st.other_bars:
        st.warnings.append(f"{st.other_bars} refresh(es) of progress bars that are neither training nor "
                           f"validation bars were ignored")

    info = dict(st.info)
    logged_spe = info.pop("logged_steps_per_epoch", None)
    totals = Counter(p.total for p in st.train if p.total is not None)
    if totals:
        spe, _ = totals.most_common(1)[0]
        info["steps_per_epoch"] = spe
        if len(totals) > 1:
            st.warnings.append(f"training bars show different totals {sorted(totals)}; steps_per_epoch = {spe} "
                               f"(the most common)")
        if logged_spe is not None and logged_spe != spe:
            st.warnings.append(f"the log says {logged_spe} steps per epoch but the training bars count {spe}; "
                               f"the bars are used")
    elif logged_spe is not None:
        info["steps_per_epoch"] = logged_spe

    return ParsedLog(train=st.train, val=st.val, info=info, epoch_summaries=st.summaries,
                     logging_lines=st.logging_lines, bar_refreshes=st.bar_refreshes, lines_total=lines_total,
                     stopped_at=stopped_at, warnings=st.warnings)


# --------------------------------------------------------------------------- speed analysis
@dataclass
class _Interval:
    n0: int
    t0: float
    n1: int
    t1: float
    gap: bool = False  # one refresh gap >= MIN_INTERVAL_S

    @property
    def steps(self) -> int:
        return self.n1 - self.n0

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0

    @property
    def rate(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else math.inf


def _close_partial(out: list[_Interval], a: tuple[int, float], b: tuple[int, float], *, at_end: bool) -> bool:
    """Close the partial interval a..b; False when it is left to the following gap interval."""
    if out and not out[-1].gap and (out[-1].n1, out[-1].t1) == a:
        out[-1].n1, out[-1].t1 = b
        return True
    if b[1] - a[1] >= MIN_PARTIAL_S and b[0] > a[0]:
        out.append(_Interval(a[0], a[1], b[0], b[1]))
        return True
    if at_end:
        if out and (out[-1].n1, out[-1].t1) == a:
            out[-1].n1, out[-1].t1 = b
        elif b[1] > a[1] and b[0] > a[0]:
            out.append(_Interval(a[0], a[1], b[0], b[1]))
        return True
    return False


def build_intervals(points: list[tuple[int, float]]) -> list[_Interval]:
    """Merge (n, elapsed_s) refreshes of one bar (origin (0, 0) added) into intervals (see the rules)."""
    pts: list[tuple[int, float]] = [(0, 0.0)]
    for p in points:
        if p != pts[-1]:
            pts.append(p)
    out: list[_Interval] = []
    anchor = prev = pts[0]
    for p in pts[1:]:
        if p[1] - prev[1] >= MIN_INTERVAL_S and prev != anchor:
            if _close_partial(out, anchor, prev, at_end=False):
                anchor = prev
        if p[1] - anchor[1] >= MIN_INTERVAL_S and p[0] > anchor[0]:
            out.append(_Interval(anchor[0], anchor[1], p[0], p[1], gap=(p[1] - prev[1] >= MIN_INTERVAL_S)))
            anchor = p
        prev = p
    if prev != anchor:
        _close_partial(out, anchor, prev, at_end=True)
    return out


def _epoch_runs(train: list[BarPoint], warnings: list[str]) -> dict[int, list[BarPoint]]:
    """The refreshes of each epoch's bar (its last run when the bar restarted)."""
    runs: dict[int, list[BarPoint]] = {}
    for p in train:
        cur = runs.get(p.epoch)
        if cur and (p.n < cur[-1].n or p.elapsed_s < cur[-1].elapsed_s):
            warnings.append(f"line {p.line_no}: the bar of epoch {p.epoch} restarted; only its last run is used")
            cur = None
        if cur is None:
            cur = runs[p.epoch] = []
        cur.append(p)
    return runs


def _epoch_speed(epoch: int, pts: list[BarPoint]) -> tuple[dict[str, Any], list[_Interval], list[_Interval],
                                                            list[_Interval]]:
    last = pts[-1]
    steps, elapsed = last.n, last.elapsed_s
    rates = [p.rate_it_per_s for p in pts if p.rate_it_per_s is not None]
    intervals = build_intervals([(p.n, p.elapsed_s) for p in pts])
    entry: dict[str, Any] = {
        "epoch": epoch, "steps": steps, "total_steps": last.total,
        "complete": bool(last.total is not None and steps >= last.total),
        "elapsed_s": elapsed,
        "it_per_s": _num(steps / elapsed) if elapsed > 0 else None,
        "bar_it_per_s": _num(rates[-1]) if rates else None,
        "steady_it_per_s": None, "warmup_steps": None, "warmup_s": None, "stalls": [],
        "interval_count": len(intervals), "median_interval_it_per_s": None,
        "first_line": pts[0].line_no, "last_line": last.line_no,
    }
    warm: list[_Interval] = []
    stalls: list[_Interval] = []
    steady: list[_Interval] = []
    if len(intervals) < MIN_INTERVALS_CLASSIFY:
        entry["note"] = (f"{len(intervals)} interval(s) of >= {MIN_INTERVAL_S:g} s: too few to separate warm-up "
                         f"and stalls (needs {MIN_INTERVALS_CLASSIFY})")
        return entry, warm, stalls, steady
    med = float(np.median([iv.rate for iv in intervals]))
    entry["median_interval_it_per_s"] = _num(med)
    i = 0
    while i < len(intervals) and intervals[i].rate < WARMUP_FRACTION * med:
        warm.append(intervals[i])
        i += 1
    for iv in intervals[i:]:
        (stalls if iv.rate < STALL_FRACTION * med else steady).append(iv)
    warm_steps = warm[-1].n1 if warm else 0
    warm_s = warm[-1].t1 if warm else 0.0
    entry["warmup_steps"], entry["warmup_s"] = warm_steps, warm_s
    entry["stalls"] = [{"from_step": iv.n0, "to_step": iv.n1, "seconds": iv.seconds,
                        "it_per_s": _num(iv.rate),
                        "excess_s": _num(iv.seconds - iv.steps / med) if med > 0 else None}
                       for iv in stalls]
    s_steps = steps - warm_steps - sum(iv.steps for iv in stalls)
    s_time = elapsed - warm_s - sum(iv.seconds for iv in stalls)
    entry["steady_it_per_s"] = _num(s_steps / s_time) if s_time > 0 else None
    entry["_steady_steps"], entry["_steady_s"] = s_steps, s_time
    entry["steady_intervals"] = [{"from_step": iv.n0, "to_step": iv.n1, "seconds": iv.seconds,
                                  "it_per_s": _num(iv.rate)} for iv in steady]
    return entry, warm, stalls, steady


# --------------------------------------------------------------------------- loss analysis
def _loss_stats(points: list[list], smooth_window: int | None) -> dict[str, Any]:
    steps = [p[0] for p in points if p[1] is not None]
    y = np.asarray([p[1] for p in points if p[1] is not None], dtype=float)
    n = int(y.size)
    non_finite = sum(1 for p in points if p[1] is None)
    w = int(smooth_window) if smooth_window else max(MIN_WINDOW, n // 10)
    w = max(1, w)
    out: dict[str, Any] = {"points": points, "smoothed": [], "window": w, "n": n, "start": None, "end": None,
                           "decrease_pct": None, "noise_pct": None, "non_finite": non_finite,
                           "diverged": non_finite > 0, "trend": None}
    if n >= w:
        c = np.cumsum(np.insert(y, 0, 0.0))
        means = (c[w:] - c[:-w]) / w
        out["smoothed"] = [[steps[i + w - 1], _num(float(v))] for i, v in enumerate(means)]
    if n >= 2 * w:
        start, end = float(y[:w].mean()), float(y[-w:].mean())
        out["start"], out["end"] = _num(start), _num(end)
        if start != 0:
            out["decrease_pct"] = _num((start - end) / abs(start) * 100)
            if (end - start) / abs(start) * 100 > DIVERGE_RISE_PCT:
                out["diverged"] = True
    if n >= MIN_POINTS_NOISE:
        med = np.asarray(rolling_median(y, w))
        keep = med != 0
        if keep.sum() >= 2:
            rel = (y[keep] - med[keep]) / np.abs(med[keep]) * 100
            out["noise_pct"] = _num(float(rel.std(ddof=1)))
    dec = out["decrease_pct"]
    if out["diverged"]:
        out["trend"] = "diverged"
    elif dec is not None:
        out["trend"] = "decreasing" if dec >= FLAT_BAND_PCT else "increasing" if dec <= -FLAT_BAND_PCT else "flat"
    return out


# --------------------------------------------------------------------------- the analysis
def analyze_log(parsed: ParsedLog, *, smooth_window: int | None = None) -> dict[str, Any]:
    """Speed, warm-up, stalls, loss and validation facts of a parsed log (JSON-ready; see the rules)."""
    warnings = list(parsed.warnings)
    runs = _epoch_runs(parsed.train, warnings)
    epochs: list[dict[str, Any]] = []
    steady_all: list[_Interval] = []
    warm_total_steps = 0
    warm_total_s = 0.0
    for epoch in sorted(runs):
        entry, warm, stalls, steady = _epoch_speed(epoch, runs[epoch])
        epochs.append(entry)
        steady_all.extend(steady)
        if warm:
            warm_total_steps += entry["warmup_steps"]
            warm_total_s += entry["warmup_s"]

    tot_steps = sum(e["steps"] for e in epochs)
    tot_s = sum(e["elapsed_s"] for e in epochs)
    classified = [e for e in epochs if "_steady_steps" in e]
    st_steps = sum(e.pop("_steady_steps") for e in classified)
    st_s = sum(e.pop("_steady_s") for e in classified)
    cv = None
    if len(steady_all) >= MIN_INTERVALS_CV:
        spp = np.asarray([iv.seconds / iv.steps for iv in steady_all if iv.steps > 0])
        if spp.size >= MIN_INTERVALS_CV and spp.mean() > 0:
            cv = _num(float(spp.std(ddof=1) / spp.mean()))
    all_stalls = [s for e in epochs for s in e["stalls"]]
    overall = {
        "steps": tot_steps, "elapsed_s": tot_s,
        "it_per_s": _num(tot_steps / tot_s) if tot_s > 0 else None,
        "steady_it_per_s": _num(st_steps / st_s) if classified and st_s > 0 else None,
        "step_time_cv": cv,
        "warmup": {"steps": warm_total_steps if classified else None,
                   "seconds": warm_total_s if classified else None,
                   "epochs_with_warmup": [e["epoch"] for e in epochs if e["warmup_steps"]],
                   "first_epoch_steps": epochs[0]["warmup_steps"] if epochs else None,
                   "first_epoch_s": epochs[0]["warmup_s"] if epochs else None},
        "stall_count": len(all_stalls),
        "stall_time_s": sum(s["seconds"] for s in all_stalls),
        "epochs_classified": len(classified),
    }

    # loss and lr: distinct postfix emissions, at global steps
    spe = parsed.info.get("steps_per_epoch")
    offsets: dict[int, int] = {}
    acc = 0
    for e in epochs:
        offsets[e["epoch"]] = (e["epoch"] - 1) * spe if spe else acc
        acc += e["steps"]
    loss_pts: list[list] = []
    lr_pts: list[list] = []
    for epoch in sorted(runs):
        prev = None
        for p in runs[epoch]:
            if not p.postfix or p.postfix == prev:
                continue
            prev = p.postfix
            g = offsets[epoch] + p.n
            if p.loss is not None:
                loss_pts.append([g, _num(p.loss)])
            if p.lr is not None and _num(p.lr) is not None:
                lr_pts.append([g, _num(p.lr)])
    loss = _loss_stats(loss_pts, smooth_window)

    # validation loss per epoch
    val_bar: dict[int, dict] = {}
    for v in parsed.val:
        if v["epoch"] is not None:
            val_bar[v["epoch"]] = v  # the last refresh of that epoch's validation bar
    summ = {s["epoch"]: s for s in parsed.epoch_summaries}
    val_loss: list[list] = []
    val_source: dict[str, str] = {}
    for ep in sorted(set(val_bar) | {e for e, s in summ.items() if s.get("val_loss") is not None}):
        s = summ.get(ep)
        if s is not None and s.get("val_loss") is not None:
            val_loss.append([ep, s["val_loss"]])
            val_source[str(ep)] = "summary"
        elif val_bar.get(ep, {}).get("val_loss") is not None and _num(val_bar[ep]["val_loss"]) is not None:
            val_loss.append([ep, _num(val_bar[ep]["val_loss"])])
            val_source[str(ep)] = "bar"
    val_bars = [{"epoch": ep, "steps": v["n"], "total_steps": v["total"], "elapsed_s": v["elapsed_s"],
                 "last_val_loss": _num(v["val_loss"])} for ep, v in sorted(val_bar.items())]

    planned_bar = max((p.epochs_total for p in parsed.train if p.epochs_total), default=None)
    planned = parsed.info.get("epochs", planned_bar)
    if planned_bar is not None and parsed.info.get("epochs") not in (None, planned_bar):
        warnings.append(f"the log says {parsed.info['epochs']} epochs but the bars count to {planned_bar}")

    return {
        "epochs": epochs,
        "overall": overall,
        "loss": loss,
        "val_loss": val_loss,
        "val_loss_source": val_source,
        "val_bars": val_bars,
        "lr": lr_pts,
        "info": dict(parsed.info),
        "epoch_summaries": [dict(s) for s in parsed.epoch_summaries],
        "epochs_completed": sum(1 for e in epochs if e["complete"]),
        "epochs_planned": planned,
        "stopped_at": parsed.stopped_at,
        "warnings": warnings,
        "lines_total": parsed.lines_total,
        "logging_lines": parsed.logging_lines,
        "bar_refreshes": parsed.bar_refreshes,
        "rules": RULES,
    }
