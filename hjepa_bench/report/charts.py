"""PNG charts of result records, for the markdown report.

``render_charts(records, out_dir)`` writes one PNG per chart that has data into
``out_dir`` (file name ``<chart name>.png``, so reruns overwrite) and returns a
:class:`Chart` for each, in a fixed order.  A chart whose data is missing is
skipped: no empty plots.  Only records with ``status == "ok"`` are plotted (the
memory fit also uses ``oom`` records to cap its prediction, as ``fit_memory``
does).

The charts (each also a function of its own, returning ``Chart | None``):

* ``throughput_vs_batch``: samples/s against batch size, one line per (model,
  device, variant, precision, levels, predictor depth, image size) group; where
  several worker counts were measured at one batch, the best is plotted and
  labelled.
* ``step_time_over_run``: per-step time (ms) against step index for up to
  ``MAX_SERIES_RECORDS`` records, warm-up steps shaded and drawn hollow.
* ``memory_vs_batch``: peak memory (GiB) against batch with
  :func:`hjepa_bench.analysis.memory.fit_memory`'s line, its predicted largest
  batch, and the device total.
* ``loss_curve``: loss against step (warm-up marked) plus a rolling mean.
* ``worker_effect``: samples/s against DataLoader workers, one line per (model,
  batch, device) group that measured at least two worker counts.

Figures are built on matplotlib's Agg canvas directly (no pyplot, so no global
state, no window, nothing to close).
"""
from __future__ import annotations

import math
import re
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..analysis.memory import DEFAULT_MARGIN, MODEL_ORDER, device_key, fit_memory, peak_bytes, setup_key
from ..format import finite
from ..record import batch_achieved, lookup, model_short, records_frame
from ..record import label as record_name

DPI = 110
FIGSIZE = (8.0, 4.8)
MAX_SERIES_RECORDS = 8  # records drawn in the per-step charts
LOG_Y_RATIO = 10.0  # per-step times spanning more than this factor get a log y axis
GIB = 2**30
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")

# Group dimensions: column of records_frame -> how a value reads in a legend.
_DIM_FMT: dict[str, Callable[[Any], str]] = {
    "model": str,
    "device": str,
    "variant": str,
    "precision": str,
    "levels": lambda v: f"L{v}",
    "pred_depth": lambda v: f"P{v}",
    "img": lambda v: f"{v}px",
    "batch": lambda v: f"b{v}",
    "workers": lambda v: f"w{v}",
    "ranks": lambda v: f"{v} proc",
}
SETUP_DIMS = ("model", "device", "variant", "precision", "levels", "pred_depth", "img", "ranks")
#: a dimension at this value goes unsaid in a chart's subtitle (one process: the usual run)
_DIM_DEFAULT: dict[str, Any] = {"ranks": 1}


@dataclass
class Chart:
    name: str  # file stem, e.g. "throughput_vs_batch"
    title: str  # one line: the markdown image alt text / heading
    path: Path  # the PNG written
    caption: str  # one sentence: what is plotted and from how many records
    details: dict[str, Any] = field(default_factory=dict)  # the plotted numbers (for tests and tables)


# --------------------------------------------------------------------------- helpers
def _dict(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _norm(v: Any) -> Any:
    """A hashable, comparable group value: None for missing/NaN, ints for whole floats."""
    if v is None:
        return None
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(float(v)):
            return None
        return int(v) if float(v).is_integer() else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def _sort_key(key: tuple) -> tuple:
    """Numbers numerically, models from small to large (MODEL_ORDER), other text alphabetically."""
    def one(v: Any) -> tuple:
        if isinstance(v, (int, float)):
            return (0, v, "")
        s = str(v)
        head = s.split(" ")[0]
        return (1, MODEL_ORDER.index(head) if head in MODEL_ORDER else len(MODEL_ORDER), s)
    return tuple(one(v) for v in key)


def _fmt(dim: str, v: Any) -> str:
    return f"{dim}=?" if v is None else _DIM_FMT.get(dim, str)(v)


def _group_labels(keys: Sequence[tuple], dims: Sequence[str]) -> tuple[list[str], str]:
    """Legend labels naming only the dimensions that vary between groups, and a
    subtitle with the dimensions they share."""
    varying = [i for i in range(len(dims)) if len({k[i] for k in keys}) > 1]
    labels = [" ".join(_fmt(dims[i], k[i]) for i in varying) or "all" for k in keys]
    common = " · ".join(_fmt(dims[i], keys[0][i]) for i in range(len(dims))
                        if i not in varying and keys[0][i] is not None
                        and keys[0][i] != _DIM_DEFAULT.get(dims[i])) if keys else ""
    return labels, common


def _ok(records: Iterable[Any]) -> list[Mapping[str, Any]]:
    return [r for r in records if isinstance(r, Mapping) and r.get("status") == "ok"]


def _not_ok_note(records: Sequence[Any]) -> str:
    n = sum(1 for r in records if not (isinstance(r, Mapping) and r.get("status") == "ok"))
    if not n:
        return ""
    return f" ({_plural(n, 'record')} not ok excluded)"


def _clean(r: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow copy whose nested sections are dicts, so records_frame cannot trip on None."""
    c = dict(_dict(r.get("config")))
    model = dict(_dict(c.get("model")))
    model["predictor"] = _dict(model.get("predictor"))
    model["encoder_type"] = str(model.get("encoder_type") or "?")
    c["model"] = model
    c["data"] = _dict(c.get("data"))
    c["bench"] = _dict(c.get("bench"))
    return {**r, "config": c, "env": _dict(r.get("env")), "metrics": _dict(r.get("metrics"))}


def _device_names(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Device name per record; one name seen on several machines (fingerprints)
    gets the fingerprint's first characters so their lines stay apart."""
    names = [device_key(r) for r in records]
    fps: dict[str, set] = defaultdict(set)
    for n, r in zip(names, records):
        fps[n].add(lookup(r, "env", "fingerprint_id"))
    out = []
    for n, r in zip(names, records):
        fp = lookup(r, "env", "fingerprint_id")
        out.append(f"{n} [{str(fp)[:6]}]" if len(fps[n]) > 1 and fp else n)
    return out


def _frame(ok: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """records_frame of the ok records, numeric columns coerced, plus samples/s
    (from it/s x batch where samples/s is missing)."""
    if not ok:
        return pd.DataFrame()
    df = records_frame([_clean(r) for r in ok])
    df["device"] = _device_names(ok)
    for col in ("batch", "workers", "levels", "pred_depth", "img", "it_per_s", "samples_per_s"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    sps = df["samples_per_s"].where(np.isfinite(df["samples_per_s"]))
    df["sps"] = sps.fillna(df["it_per_s"] * df["batch"])
    df.loc[~np.isfinite(df["sps"]) | (df["sps"] <= 0), "sps"] = np.nan
    return df


def _sps_frame(records: Sequence[Any], column: str) -> pd.DataFrame:
    """:func:`_frame` of the ok records, only the rows with ``column`` and samples/s."""
    df = _frame(_ok(records))
    return df if df.empty else df[df[column].notna() & df["sps"].notna()]


def _floats(x: Any) -> np.ndarray | None:
    """A per-step series as floats (None/non-finite -> NaN), or None when nothing is finite."""
    if not isinstance(x, (list, tuple)) or not x:
        return None
    arr = np.array([np.nan if finite(v) is None else finite(v) for v in x], dtype=float)
    return arr if np.isfinite(arr).any() else None


def _warmup_steps(r: Mapping[str, Any], n: int) -> int:
    for path in (("series", "warmup_steps"), ("metrics", "warmup", "steps"), ("config", "bench", "warmup_steps")):
        w = finite(lookup(r, *path))
        if w is not None:
            return max(0, min(int(w), n))
    return 0


def _unique(labels: Sequence[str]) -> list[str]:
    seen: dict[str, int] = defaultdict(int)
    total = defaultdict(int)
    for s in labels:
        total[s] += 1
    out = []
    for s in labels:
        seen[s] += 1
        out.append(f"{s} #{seen[s]}" if total[s] > 1 else s)
    return out


def _colors(n: int) -> list:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _figure(title: str, subtitle: str = "") -> tuple[Figure, Any]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fig.suptitle(title, fontsize="large")
    if subtitle:
        ax.set_title(subtitle, fontsize="small", color="dimgray")
    ax.grid(True, alpha=0.3)
    return fig, ax


_CODE_RE = re.compile(r"\b[LP]\d+\b")


def legend_key(labels: Iterable[str]) -> str | None:
    """What the short codes in legend labels mean ("L2 P4": hierarchy levels, predictor depth), or None
    when no label uses them; charts show it as the legend's title and in the caption."""
    text = " ".join(labels)
    parts = [what for code, what in (("L", "L<n> = hierarchy levels"), ("P", "P<n> = predictor depth"))
             if re.search(rf"\b{code}\d+\b", text)]
    return ", ".join(parts) or None


def _legend(fig: Figure, ax: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    key = legend_key(labels)
    longest = max(len(s) for s in labels)
    if len(handles) <= 5 and longest <= 40:
        ax.legend(fontsize="small", loc="best", framealpha=0.8, title=key, title_fontsize="x-small")
    else:
        ncols = 1 if longest > 45 else 2 if longest > 25 else 3
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="x-small",
                   frameon=False, title=key, title_fontsize="x-small")


def _key_note(labels: Iterable[str]) -> str:
    key = legend_key(labels)
    return f"; in the legend, {key}" if key else ""


def _batch_axis(ax: Any, values: Iterable[float]) -> None:
    """Ticks at the measured values; a log2 axis when they span a factor of 8 or more."""
    vals = sorted({float(v) for v in values if v is not None and math.isfinite(v) and v > 0})
    if not vals:
        return
    if vals[-1] / vals[0] >= 8:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    if len(vals) <= 16:
        ax.set_xticks(vals, labels=[f"{v:g}" for v in vals])


def _save(fig: Figure, out_dir: Path, name: str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    fig.clear()
    return path


# --------------------------------------------------------------------------- 1. throughput vs batch
def throughput_vs_batch(records: Sequence[Mapping[str, Any]], out_dir: Path) -> Chart | None:
    name, title = "throughput_vs_batch", "Throughput vs batch size"
    df = _sps_frame(records, "batch")
    if df.empty:
        return None
    # group -> batch -> workers -> [samples/s]
    cells: dict[tuple, dict[Any, dict[Any, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for _, row in df.iterrows():
        key = tuple(_norm(row[d]) for d in SETUP_DIMS)
        cells[key][_norm(row["batch"])][_norm(row["workers"])].append(float(row["sps"]))
    keys = sorted(cells, key=_sort_key)
    labels, common = _group_labels(keys, SETUP_DIMS)
    fig, ax = _figure(title, common)
    series: dict[str, dict[str, list]] = {}
    multi_points = repeats = 0
    for i, (key, label, color) in enumerate(zip(keys, labels, _colors(len(keys)))):
        xs, ys, ws = [], [], []
        for batch in sorted(cells[key]):
            by_w = {w: float(np.mean(v)) for w, v in cells[key][batch].items()}
            repeats += sum(1 for v in cells[key][batch].values() if len(v) > 1)
            best_w = max(by_w, key=lambda w: by_w[w])
            xs.append(batch)
            ys.append(by_w[best_w])
            ws.append(best_w)
            if len(by_w) > 1:
                multi_points += 1
                ax.annotate(_fmt("workers", best_w), (batch, by_w[best_w]), textcoords="offset points",
                            xytext=(0, 6), ha="center", fontsize="x-small", color=color)
        ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], color=color, label=label)
        series[label] = {"batch": xs, "samples_per_s": ys, "workers": ws}
    _batch_axis(ax, df["batch"])
    ax.set_xlabel("batch size (samples per step)")
    ax.set_ylabel("throughput (samples/s)")
    ax.set_ylim(bottom=0)
    _legend(fig, ax)
    path = _save(fig, out_dir, name)
    caption = (f"Training throughput (samples/s, higher is better) against batch size for "
               f"{_plural(len(df), 'ok record')} in {_plural(len(keys), 'group')}{_not_ok_note(records)}")
    if multi_points:
        caption += (f"; at {_plural(multi_points, 'batch size')} several DataLoader worker counts were measured "
                    f"and the best is plotted (labelled w<N>)")
    if repeats:
        caption += "; repeated runs of one config are averaged"
    caption += _key_note(list(labels) + [common or ""])
    return Chart(name, title, path, caption + ".", {"series": series, "records": len(df)})


# --------------------------------------------------------------------------- per-step series (2, 4)
def _series_records(records: Sequence[Mapping[str, Any]], field_name: str
                    ) -> tuple[list[tuple[Mapping[str, Any], np.ndarray]], int]:
    items = [(r, arr) for r in _ok(records) for arr in [_floats(lookup(r, "series", field_name))] if arr is not None]
    return items[:MAX_SERIES_RECORDS], len(items)


def _shade_warmup(ax: Any, max_w: int) -> None:
    if max_w > 0:
        ax.axvspan(-0.5, max_w - 0.5, color="0.85", alpha=0.6, zorder=0, label="warm-up steps")


def _count_note(shown: int, total: int, what: str) -> str:
    if shown < total:
        return f"the first {shown} of {total} ok records with {what}"
    return f"{_plural(total, 'ok record')} with {what}"


def _per_step_chart(records: Sequence[Mapping[str, Any]], field_name: str, title: str) -> tuple | None:
    """For a per-step chart: the ok records with the series ``field_name`` (the first
    ``MAX_SERIES_RECORDS``), how many have it, their legend labels and a figure; None when none has it."""
    items, total = _series_records(records, field_name)
    if not items:
        return None
    return items, total, _unique([record_name(r) for r, _ in items]), *_figure(title)


def _step_axes(fig: Figure, ax: Any, warmups: Sequence[int], ylabel: str) -> None:
    """Shade the warm-up steps, label the step-index axis and place the legend."""
    _shade_warmup(ax, max(warmups))
    ax.set_xlabel("step index (0 = first step, warm-up included)")
    ax.set_ylabel(ylabel)
    ax.set_xlim(left=-0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    _legend(fig, ax)


def step_time_over_run(records: Sequence[Mapping[str, Any]], out_dir: Path) -> Chart | None:
    name, title = "step_time_over_run", "Step time over the run"
    chart = _per_step_chart(records, "step_time_s", title)
    if chart is None:
        return None
    items, total, labels, fig, ax = chart
    all_ms = np.concatenate([arr * 1000 for _, arr in items])
    pos = all_ms[np.isfinite(all_ms) & (all_ms > 0)]
    log_y = bool(pos.size and pos.max() / pos.min() > LOG_Y_RATIO)
    warmups = []
    for i, ((r, arr), label, color) in enumerate(zip(items, labels, _colors(len(items)))):
        ms = arr * 1000
        if log_y:
            ms = np.where(ms > 0, ms, np.nan)
        x = np.arange(len(ms))
        w = _warmup_steps(r, len(ms))
        warmups.append(w)
        small = len(ms) <= 80
        marker = MARKERS[i % len(MARKERS)]
        if w:  # warm-up: dotted line, hollow markers, joined to the first measured step
            ax.plot(x[:w + 1], ms[:w + 1], ls=":", color=color, marker=marker, mfc="none", ms=5)
        ax.plot(x[w:], ms[w:], color=color, lw=1.2, marker=marker if small else None, ms=3, label=label)
    if log_y:
        ax.set_yscale("log")
    _step_axes(fig, ax, warmups, "step time (ms)" + (", log scale" if log_y else ""))
    path = _save(fig, out_dir, name)
    caption = (f"Time per training step (ms) against step index for {_count_note(len(items), total, 'step times')}"
               f"{_not_ok_note(records)}; warm-up steps are shaded and drawn hollow and dotted"
               + ("; the y axis is logarithmic because step times span more than a factor of "
                  f"{LOG_Y_RATIO:g}" if log_y else "") + _key_note(labels) + ".")
    return Chart(name, title, path, caption,
                 {"labels": labels, "warmup_steps": warmups, "log_y": log_y, "records": len(items),
                  "records_with_series": total})


def loss_curve(records: Sequence[Mapping[str, Any]], out_dir: Path) -> Chart | None:
    name, title = "loss_curve", "Loss over the run"
    chart = _per_step_chart(records, "loss", title)
    if chart is None:
        return None
    items, total, labels, fig, ax = chart
    warmups, windows = [], []
    for (r, arr), label, color in zip(items, labels, _colors(len(items))):
        x = np.arange(len(arr))
        w = _warmup_steps(r, len(arr))
        warmups.append(w)
        window = max(3, int(np.isfinite(arr).sum()) // 10)
        windows.append(window)
        ax.plot(x, arr, color=color, lw=0.8, alpha=0.35)
        if w:
            ax.plot(x[:w], arr[:w], ls="none", marker="o", mfc="none", ms=5, color=color)
        smooth = pd.Series(arr).rolling(window, min_periods=1, center=True).mean().to_numpy()
        ax.plot(x, smooth, color=color, lw=1.8, label=f"{label} (mean of {window})")
    _step_axes(fig, ax, warmups, "training loss")
    path = _save(fig, out_dir, name)
    caption = (f"Training loss per step (thin) and its centred rolling mean (bold, window in the legend) for "
               f"{_count_note(len(items), total, 'a loss series')}{_not_ok_note(records)}; warm-up steps are "
               f"shaded and drawn as hollow markers{_key_note(labels)}.")
    return Chart(name, title, path, caption,
                 {"labels": labels, "warmup_steps": warmups, "windows": windows, "records": len(items),
                  "records_with_series": total})


# --------------------------------------------------------------------------- 3. memory vs batch
def _memory_points(ok: Sequence[Mapping[str, Any]], fits: Mapping[tuple[str, str], Any]
                   ) -> tuple[dict[tuple[str, str], list[tuple[int, int]]], int]:
    """(batch, peak bytes) of the ok records per fitted (device, model) group, and how many measured RSS."""
    points: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    rss = 0
    for r in ok:
        b, p = batch_achieved(r), peak_bytes(r)
        if not b or p is None:
            continue
        dev, model = device_key(r), model_short(r, "?")
        key = (dev, model) if (dev, model) in fits else (dev, f"{model} [{setup_key(r)}]")
        if key not in fits:
            continue
        points[key].append((b, p))
        rss += "rss" in str(lookup(r, "metrics", "memory_source") or "").lower()
    return points, rss


def _draw_memory_fit(ax: Any, i: int, label: str, color: Any, res: Mapping[str, Any], x_max: float) -> float:
    """One group's fitted line, its predicted largest batch and its out-of-memory batches; returns the
    line's top (GiB)."""
    fit = res["fit"]
    pred = res.get("predicted_max_batch")
    a, slope = fit["intercept_bytes"], fit["bytes_per_sample"]
    grid = np.linspace(0, x_max, 200)
    line = (a + slope * grid) / GIB
    r2 = fit.get("r2")
    ax.plot(grid, line, color=color, ls="--", lw=1,
            label=f"{label}: fit {slope / 2**20:.1f} MiB/sample" + (f", R² {r2:.3f}" if r2 is not None else ""))
    if pred is not None and pred >= 1:
        y_pred = (a + slope * pred) / GIB
        if pred <= x_max:
            ax.plot([pred], [y_pred], marker="*", ms=14, color=color, mec="black", zorder=4,
                    label=f"{label}: predicted max batch {pred}")
            ax.axvline(pred, color=color, ls=":", lw=1)
        else:
            ax.annotate(f"{label}: fits up to batch {pred} \u2192", xy=(0.99, 0.04 + 0.06 * i),
                        xycoords="axes fraction", ha="right", fontsize="x-small", color=color)
    for ob in res.get("oom_batches") or []:
        if ob <= x_max:
            ax.plot([ob], [(a + slope * ob) / GIB], marker="X", ms=9, color="red", ls="none", zorder=4,
                    label="out of memory")
    return float(np.nanmax(line))


def _draw_device_totals(ax: Any, keys: Sequence[tuple[str, str]], fits: Mapping[tuple[str, str], Any],
                        y_top: float, margin: float) -> None:
    """Device totals and the fit's limit, where they are on the scale (one line per distinct total)."""
    totals: dict[tuple[int, int | None], list[str]] = defaultdict(list)
    for key in keys:
        t = fits[key].get("device_total_bytes")
        if t and key[0] not in totals[(t, fits[key].get("limit_bytes"))]:
            totals[(t, fits[key].get("limit_bytes"))].append(key[0])
    several = len({d for devs in totals.values() for d in devs}) > 1
    for j, ((t, limit), devs) in enumerate(sorted(totals.items())):
        gray = ("black", "dimgray", "darkgray")[j % 3]
        dev_label = f" ({', '.join(devs)})" if several else ""
        if t / GIB <= 1.6 * max(y_top, 1e-9):
            ax.axhline(t / GIB, color=gray, ls="-", lw=1, alpha=0.7,
                       label=f"device total {t / GIB:.1f} GiB{dev_label}")
            if limit:
                ax.axhline(limit / GIB, color=gray, ls=":", lw=1, alpha=0.7,
                           label=f"limit {1 - margin:.0%} of total{dev_label}")
        else:
            ax.annotate(f"device total {t / GIB:.1f} GiB{dev_label}, above this scale",
                        xy=(0.01, 0.97 - 0.05 * j), xycoords="axes fraction", va="top", fontsize="x-small")


def _memory_legend(fig: Figure, ax: Any) -> None:
    """One legend entry per label (OOM markers repeat): inside when short, below the axes otherwise."""
    handles, lbls = ax.get_legend_handles_labels()
    uniq = dict(zip(lbls, handles))
    if len(uniq) <= 5 and max(len(s) for s in uniq) <= 40:
        ax.legend(uniq.values(), uniq.keys(), fontsize="small", loc="best", framealpha=0.8)
    else:
        fig.legend(uniq.values(), uniq.keys(), loc="outside lower center", ncols=2, fontsize="x-small",
                   frameon=False)


def _memory_caption(records: Sequence[Mapping[str, Any]], keys: Sequence[tuple[str, str]], labels: Sequence[str],
                    fits: Mapping[tuple[str, str], Any], n_points: int, predicted: Mapping[str, int | None],
                    extrapolated: set[str], rss: int, margin: float) -> str:
    """What the memory chart shows: the records, the fits, the predicted batches and the RSS caveat."""
    caption = (f"Peak memory (GiB) against batch size for {_plural(n_points, 'ok record')} in "
               f"{_plural(len(keys), 'group')}{_not_ok_note(records)}"
               + (", with fit_memory's least-squares line" if any(fits[k].get("fit") for k in keys) else ""))
    with_pred = [f"{label} {pred}" + (" (an extrapolation beyond 4x the largest measured batch)"
                                      if label in extrapolated else "")
                 for label, pred in predicted.items() if pred is not None]
    if with_pred:
        caption += (f"; predicted largest batch within {1 - margin:.0%} of device memory: "
                    + ", ".join(with_pred))
    no_fit = [label for key, label in zip(keys, labels) if not fits[key].get("fit")]
    if no_fit:
        caption += f"; no fit (fewer than 2 batch sizes) for {', '.join(no_fit)}"
    if rss:
        caption += "; on CPU the peak is the RSS of the process tree (DataLoader workers included)"
    return caption + "."


def memory_vs_batch(records: Sequence[Mapping[str, Any]], out_dir: Path,
                    margin: float = DEFAULT_MARGIN) -> Chart | None:
    name, title = "memory_vs_batch", "Peak memory vs batch size"
    recs = [r for r in records if isinstance(r, Mapping)]
    ok = _ok(recs)
    if not any(peak_bytes(r) is not None for r in ok):
        return None
    fits = fit_memory(recs, margin)
    points, rss = _memory_points(ok, fits)
    if not points:
        return None
    keys = sorted(points, key=_sort_key)
    labels = _unique([f"{model} on {dev}" if len({k[0] for k in keys}) > 1 else model for dev, model in keys])
    subtitle = keys[0][0] if len({k[0] for k in keys}) == 1 else ""
    fig, ax = _figure(title, subtitle)
    n_points = sum(len(v) for v in points.values())
    max_b = max(b for v in points.values() for b, _ in v)
    preds = {k: fits[k].get("predicted_max_batch") for k in keys}
    reach = [p for p in preds.values() if p is not None and p >= 1 and p <= 8 * max_b]
    x_max = max([max_b] + reach) * 1.08
    y_top = 0.0
    predicted: dict[str, int | None] = {}
    extrapolated: set[str] = set()
    for i, (key, label, color) in enumerate(zip(keys, labels, _colors(len(keys)))):
        res = fits[key]
        pts = sorted(points[key])
        ys = [p / GIB for _, p in pts]
        y_top = max(y_top, max(ys))
        ax.scatter([b for b, _ in pts], ys, color=color, marker=MARKERS[i % len(MARKERS)], zorder=3,
                   label=f"{label}: measured")
        predicted[label] = res.get("predicted_max_batch")
        if res.get("extrapolated"):
            extrapolated.add(label)
        if res.get("fit"):
            y_top = max(y_top, _draw_memory_fit(ax, i, label, color, res, x_max))
    _draw_device_totals(ax, keys, fits, y_top, margin)
    # a linear x axis keeps the linear fit straight
    ax.set_xlim(left=0, right=x_max)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("batch size (samples per step)")
    ax.set_ylabel("peak memory (GiB)")
    _memory_legend(fig, ax)
    path = _save(fig, out_dir, name)
    caption = _memory_caption(records, keys, labels, fits, n_points, predicted, extrapolated, rss, margin)
    return Chart(name, title, path, caption,
                 {"predicted_max_batch": predicted, "fits": {f"{d} {m}": fits[(d, m)] for d, m in keys},
                  "records": n_points})


# --------------------------------------------------------------------------- 5. worker effect
def worker_effect(records: Sequence[Mapping[str, Any]], out_dir: Path) -> Chart | None:
    name, title = "worker_effect", "Throughput vs DataLoader workers"
    df = _sps_frame(records, "workers")
    if df.empty:
        return None
    dims = ("model", "batch", "device", "variant", "precision", "levels", "pred_depth", "img", "ranks")
    cells: dict[tuple, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _, row in df.iterrows():
        cells[tuple(_norm(row[d]) for d in dims)][_norm(row["workers"])].append(float(row["sps"]))
    keys = sorted((k for k, by_w in cells.items() if len(by_w) >= 2), key=_sort_key)
    if not keys:
        return None
    labels, common = _group_labels(keys, dims)
    fig, ax = _figure(title, common)
    series: dict[str, dict[str, list]] = {}
    n = repeats = 0
    workers_seen: set = set()
    for i, (key, label, color) in enumerate(zip(keys, labels, _colors(len(keys)))):
        ws = sorted(cells[key])
        ys = [float(np.mean(cells[key][w])) for w in ws]
        n += sum(len(v) for v in cells[key].values())
        repeats += sum(1 for v in cells[key].values() if len(v) > 1)
        workers_seen.update(ws)
        ax.plot(ws, ys, marker=MARKERS[i % len(MARKERS)], color=color, label=label)
        series[label] = {"workers": ws, "samples_per_s": ys}
    ws_sorted = sorted(workers_seen)
    if len(ws_sorted) <= 16:
        ax.set_xticks(ws_sorted, labels=[f"{w:g}" for w in ws_sorted])
    ax.set_xlabel("DataLoader workers (0 = loading in the main process)")
    ax.set_ylabel("throughput (samples/s)")
    ax.set_ylim(bottom=0)
    _legend(fig, ax)
    path = _save(fig, out_dir, name)
    skipped = len(cells) - len(keys)
    caption = (f"Training throughput (samples/s) against the number of DataLoader workers for "
               f"{_plural(n, 'ok record')} in {_plural(len(keys), 'group')} of model, batch size and device"
               f"{_not_ok_note(records)}")
    if skipped:
        caption += f"; {_plural(skipped, 'group')} with a single worker count not shown"
    if repeats:
        caption += "; repeated runs of one config are averaged"
    caption += _key_note(list(labels) + [common or ""])
    return Chart(name, title, path, caption + ".", {"series": series, "records": n})


# --------------------------------------------------------------------------- all of them
CHARTS: tuple[Callable[[Sequence[Mapping[str, Any]], Path], Chart | None], ...] = (
    throughput_vs_batch, step_time_over_run, memory_vs_batch, loss_curve, worker_effect)


def render_charts(records: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Chart]:
    """Write the PNG of every chart that has data into ``out_dir`` (created) and
    return them in a fixed order.  A chart that fails to draw is skipped with a
    warning, so one odd record never costs the report its other charts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = list(records)
    charts: list[Chart] = []
    for fn in CHARTS:
        try:
            chart = fn(records, out_dir)
        except Exception as e:
            warnings.warn(f"chart {fn.__name__} skipped: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
            continue
        if chart is not None:
            charts.append(chart)
    return charts


# --------------------------------------------------------------------------- training logs
def log_charts(result: Mapping[str, Any], out_dir: Path) -> list[Chart]:
    """Charts of an analysed upstream training log (``hjepa_bench.analysis.log_speed.analyze_log``):
    the loss from the distinct postfix values with its smoothed line, and per-epoch speed
    from the bars' counters next to tqdm's smoothed rate."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    charts: list[Chart] = []
    loss = result.get("loss") or {}
    pts = [(s, v) for s, v in loss.get("points") or [] if v is not None]
    if pts:
        fig, ax = _figure("Loss in the training log")
        ax.plot([s for s, _ in pts], [v for _, v in pts], lw=0.8, alpha=0.5, marker=".",
                label="postfix values (distinct)")
        sm = [(s, v) for s, v in loss.get("smoothed") or [] if v is not None]
        if sm:
            ax.plot([s for s, _ in sm], [v for _, v in sm], lw=1.8, label=f"smoothed (window {loss.get('window')})")
        ax.set_xlabel("global step")
        ax.set_ylabel("training loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _legend(fig, ax)
        path = _save(fig, out_dir, "log_loss")
        charts.append(Chart("log_loss", "Loss in the training log", path,
                            f"The {len(pts)} distinct loss values the progress bars showed (stale repeats dropped), "
                            f"at the global step where each first appeared, and their smoothed line.",
                            {"points": len(pts)}))
    epochs = [e for e in result.get("epochs") or [] if e.get("it_per_s")]
    if epochs:
        fig, ax = _figure("Speed per epoch in the training log")
        x = np.arange(len(epochs))
        width = 0.27
        ax.bar(x - width, [e["it_per_s"] for e in epochs], width, label="counters / elapsed")
        ax.bar(x, [e.get("steady_it_per_s") or 0 for e in epochs], width, label="steady (no warm-up, stalls)")
        ax.bar(x + width, [e.get("bar_it_per_s") or 0 for e in epochs], width, label="tqdm's smoothed rate")
        ax.set_xticks(x, [str(e["epoch"]) for e in epochs])
        ax.set_xlabel("epoch")
        ax.set_ylabel("it/s")
        _legend(fig, ax)
        path = _save(fig, out_dir, "log_speed")
        charts.append(Chart("log_speed", "Speed per epoch in the training log", path,
                            f"it/s for {len(epochs)} epoch(s): steps / elapsed from the bars' counters, the steady "
                            "speed without warm-up and stalls, and the smoothed rate tqdm displayed (for comparison "
                            "only).", {"epochs": len(epochs)}))
    return charts
