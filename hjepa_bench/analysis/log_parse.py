"""Read an upstream H-JEPA training log (pure: text in, dataclasses out; no torch, no files).

``parse_log`` reads the logging lines, the printed configuration, the tqdm bars (training and
validation, joined by carriage returns) and the epoch summaries, and says where parsing stopped;
:mod:`hjepa_bench.analysis.log_speed` computes speed and loss from what it read.  The accepted format,
where parsing stops and the errors are described in ``docs/logformat.md``.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..format import finite

# --------------------------------------------------------------------------- rules
BINARY_LINE_FRACTION = 0.3  # a line with more non-printable characters than this is binary
BINARY_MIN_BAD_CHARS = 3  # ... and at least this many of them (or any NUL)


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
    val: list[dict[str, Any]]
    info: dict[str, Any]
    epoch_summaries: list[dict[str, Any]]
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

#: the trainer's last word (``analyze --follow`` ends there): a logging line saying training completed
COMPLETION = re.compile(r"\bTraining (?:is )?(?:completed|complete|finished|done)\b", re.I)


def is_completion(segment: str) -> bool:
    """Whether one line of the log is a logging line saying training completed."""
    m = _LOGLINE.match(_strip_ansi(segment))
    return bool(m and COMPLETION.search(m.group("msg")))


_SEPARATOR = re.compile(r"[\r\n]")
_INT = r"(\d[\d,_]*)"
_FACTS: list[tuple[str, re.Pattern[str], str]] = [
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
    ("val_dataset_size", re.compile(r"^\s*Val(?:idation)? dataset size\s*[:=]\s*" + _INT, re.I), "int"),
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
        self.val: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.info_line: dict[str, int] = {}
        self.summaries: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None
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
    def bar(self, m: re.Match[str], line_no: int) -> None:
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


    # -- one complete segment of a line (a bar refresh, a logging line, printed text)
    def segment(self, seg: str, line_no: int) -> None:
        m = _BAR.match(seg)
        if m:
            self.bar(m, line_no)
            return
        lm = _LOGLINE.match(seg)
        if lm:
            self.logging_lines += 1
            self.summary = None
            if self.text_line(lm.group("msg"), line_no):
                self.trainer_logging_lines += 1
            return
        if _BARLIKE.search(seg) and _BAR_EVIDENCE.search(seg):
            self._bad_bar(line_no)
            return
        self.text_line(seg, line_no)

    def parsed(self, lines_total: int, stopped_at: str | None) -> ParsedLog:
        """What was read (this state is not changed: reading may go on)."""
        if not self.recognised:
            raise LogParseError(
                f"This does not look like an H-JEPA training log: none of its {lines_total} line(s) holds a "
                f"training progress bar ('Epoch N/M: ..%|..| n/total [MM:SS<..]') or a trainer logging line "
                f"('YYYY-MM-DD HH:MM:SS - name - INFO - ...' with parameters, device, epochs or an epoch summary).")
        warnings = list(self.warnings)
        if self.bad_bars:
            warnings.append(f"{self.bad_bars} progress-bar fragment(s) could not be read (first at line "
                            f"{self.bad_bar_first}); they were skipped")
        if self.other_bars:
            warnings.append(f"{self.other_bars} refresh(es) of progress bars that are neither training nor "
                            f"validation bars were ignored")
        info = dict(self.info)
        logged_spe = info.pop("logged_steps_per_epoch", None)
        totals = Counter(p.total for p in self.train if p.total is not None)
        if totals:
            spe, _ = totals.most_common(1)[0]
            info["steps_per_epoch"] = spe
            if len(totals) > 1:
                warnings.append(f"training bars show different totals {sorted(totals)}; steps_per_epoch = {spe} "
                                f"(the most common)")
            if logged_spe is not None and logged_spe != spe:
                warnings.append(f"the log says {logged_spe} steps per epoch but the training bars count {spe}; "
                                f"the bars are used")
        elif logged_spe is not None:
            info["steps_per_epoch"] = logged_spe
        return ParsedLog(train=list(self.train), val=list(self.val), info=info,
                         epoch_summaries=[dict(s) for s in self.summaries], logging_lines=self.logging_lines,
                         bar_refreshes=self.bar_refreshes, lines_total=lines_total, stopped_at=stopped_at,
                         warnings=warnings)


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
            if final and not _BAR.match(seg):
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
            st.segment(seg, line_no)
    return st.parsed(lines_total, stopped_at)


class LogStream:
    """A log being written, parsed as it grows: :meth:`feed` takes text as it arrives; each
    segment ended by a carriage return or a line end (one bar refresh, one line) is read once, the
    unfinished rest is held until its end arrives.  :meth:`snapshot` is what :func:`parse_log`
    returns for the text read so far (segments are checked for binary content one by one)."""

    def __init__(self) -> None:
        self._st = _State()
        self._pending = ""
        self.line_no = 1  # the physical line the pending text belongs to
        self.stopped_at: str | None = None

    @property
    def pending(self) -> str:
        """The text held back: the unfinished segment at the end of what was fed."""
        return self._pending

    def feed(self, text: str) -> list[str]:
        """Read the complete segments of ``text`` (after what was held); returns them (ANSI removed)."""
        if self.stopped_at is not None:
            return []
        self._pending += text
        out: list[str] = []
        start = 0
        buf = self._pending
        for sep in _SEPARATOR.finditer(buf):  # (one pass: a bar line holds thousands of refreshes)
            end = sep.start()
            seg = _strip_ansi(buf[start:end])
            start = end + 1
            why = _is_binary(seg)
            if why:
                if not self._st.recognised:
                    raise LogParseError(f"This is not a text training log: line {self.line_no} holds binary "
                                        f"content ({why}).")
                self.stopped_at = (f"line {self.line_no}: binary content ({why}) after the valid log; parsing "
                                   "stopped there")
                self._pending = ""
                return out
            if seg.strip():
                self._st.segment(seg, self.line_no)
                out.append(seg)
            if sep.group() == "\n":
                self.line_no += 1
        self._pending = buf[start:]
        return out

    def break_line(self) -> None:
        """Drop the unfinished segment and start a new line (the file was replaced or truncated)."""
        if self._pending:
            self._pending = ""
            self.line_no += 1

    def snapshot(self) -> ParsedLog:
        """The log read so far (LogParseError while nothing in it is recognised)."""
        return self._st.parsed(self.line_no - 1, self.stopped_at)
