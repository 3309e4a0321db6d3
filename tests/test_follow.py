"""``analyze --follow``: a training log written line by line by this test process (tqdm bars refreshed
with carriage returns and written in pieces that end mid-refresh, periodic stalls, a NaN loss, validation
bars, epoch summaries, the completion line) while ``hjepa-bench analyze --follow`` runs as a real child
process; and the pieces under it (the streaming parser, the tail through rotation and truncation, the
live status) on their own."""
from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import REPO, run_cli
from test_logparse import bar, build_log

from hjepa_bench.analysis.log_follow import live_status, status_line
from hjepa_bench.analysis.log_parse import LogStream, parse_log
from hjepa_bench.analysis.log_speed import analyze_log
from hjepa_bench.measure.log_follow import LogTail

TS = "2025-11-16 13:41:02"
EPOCHS, SPE, RATE, STALL_S, STALL_EVERY, STARTUP_S, BATCH = 3, 300, 3.0, 30.0, 100, 5.0, 32
NAN_AT = (3, 150)  # epoch 3, batch 150: the loss postfix shows nan from here on
VAL_STEPS, VAL_S = 10, 4


def step_times(epoch: int) -> list[float]:
    """Completion time of each step of an epoch's bar: start-up, RATE it/s, a stall after every
    STALL_EVERY-th batch (the same batches every epoch: a stall pattern)."""
    t, out = STARTUP_S, []
    for k in range(1, SPE + 1):
        if (k - 1) and (k - 1) % STALL_EVERY == 0:
            t += STALL_S
        t += 1 / RATE
        out.append(t)
    return out


def loss_text(epoch: int, b: int) -> str:
    if (epoch, b) >= NAN_AT:
        return "nan"
    g = (epoch - 1) * SPE + b
    return f"{2.0 - g / 1000:.4f}"


def epoch_refreshes(epoch: int) -> list[str]:
    desc, times = f"Epoch {epoch}/{EPOCHS}", step_times(epoch)
    segs, postfix = [bar(desc, 0, SPE, 0, None)], ""
    for k in range(1, SPE + 1):
        if (k - 1) % 50 == 0:
            postfix = f"loss={loss_text(epoch, k - 1)}, lr=1.00e-04"
        segs.append(bar(desc, k, SPE, int(times[k - 1]), RATE, postfix))
    return segs


def log_pieces() -> list[str]:
    """The log as the trainer writes it, in the pieces it is flushed in (most end mid-line)."""
    pieces = [f"{TS} - __main__ - INFO - Using device: cpu\n"
              f"{TS} - __main__ - INFO - Training dataset size: {SPE * BATCH}\n"
              f"{TS} - src.trainers.trainer - INFO - Training for {EPOCHS} epochs\n"
              f"{TS} - src.trainers.trainer - INFO - Steps per epoch: {SPE}\n"
              f"{TS} - src.trainers.trainer - INFO - Starting training...\n"]
    elapsed = 0
    for epoch in range(1, EPOCHS + 1):
        text = "\r" + "\r".join(epoch_refreshes(epoch)) + "\n"
        cuts = list(range(0, len(text), len(text) // 6 + 7)) + [len(text)]  # pieces end inside a refresh
        pieces += [text[a:b] for a, b in itertools.pairwise(cuts)]
        val = [bar(f"Validation {epoch}/{EPOCHS}", i, VAL_STEPS, i * VAL_S // VAL_STEPS, 2.5, f"val_loss={1.5:.4f}")
               for i in range(VAL_STEPS + 1)]
        elapsed += int(step_times(epoch)[-1]) + VAL_S + 2  # 2 s between the bars (checkpoint)
        pieces.append("\r" + "\r".join(val) + "\r" + " " * 80 + "\r")
        pieces.append(f"{TS} - src.trainers.trainer - INFO - \n{'=' * 40}\nEpoch {epoch}/{EPOCHS} Summary\n"
                      f"{'=' * 40}\nTrain Loss: 1.9\nVal Loss:   1.5\nElapsed:    {elapsed // 3600:02d}:"
                      f"{elapsed % 3600 // 60:02d}:{elapsed % 60:02d}\n{'=' * 40}\n")
    pieces.append(f"{TS} - src.trainers.trainer - INFO - Training completed!\n")
    return pieces


class Child:
    """``hjepa-bench analyze --follow`` in a child process; its output lines collected as they come."""

    def __init__(self, *args: str):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("HJEPA_BENCH_PLUGINS", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "hjepa_bench", "analyze", *args], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._pump, args=(s, d), daemon=True)
                         for s, d in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(re.search(pattern, line) for line in self.out + self.err):
                return
            assert self.proc.poll() is None, f"the follower ended early: {self.out} {self.err}"
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout} s: {self.out} {self.err}")

    def finish(self, timeout: float = 120) -> int:
        rc = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=10)
        return rc


def _etas(lines: list[str]) -> list[str]:
    return [m.group(1) for line in lines for m in [re.search(r"ETA (\S+) \[", line)] if m]


def _seconds(hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return (h * 60 + m) * 60 + s


def _report_without_timestamp(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("_Generated ")]


@pytest.mark.slow
def test_follow_a_log_written_line_by_line(tmp_path):
    """While the log grows, the child's status line shows a falling ETA with its band; the stall pattern,
    the NaN loss and the finish past --budget-hours each get one warning line when they appear; at the
    trainer's completion line it writes the same report as ``analyze --log`` of the finished log."""
    log = tmp_path / "train.log"
    pieces = log_pieces()
    log.write_text(pieces[0])
    child = Child("--follow", str(log), "--interval", "0.1", "--budget-hours", "0.1", "--out", str(tmp_path / "f"),
                  "--batch-size", str(BATCH))
    child.wait_for(r"^follow: waiting for the first training bar")
    seen_at: dict[str, int] = {}
    with open(log, "a") as fh:
        for i, piece in enumerate(pieces[1:], start=1):
            fh.write(piece)
            fh.flush()
            time.sleep(0.25)
            for key, pat in (("stall", "warning: stalls every"), ("nan", "warning: non-finite loss")):
                if key not in seen_at and any(pat in line for line in child.err):
                    seen_at[key] = i
    assert child.finish() == 0, child.err

    status = [line for line in child.out if line.startswith("follow: epoch")]
    etas = [_seconds(e) for e in _etas(status)]
    assert len(set(etas)) >= 5, status  # the ETA was updated as the log grew
    assert etas[0] > etas[-1] and etas[-1] == 0
    assert re.search(r"ETA \d+:\d\d:\d\d \[\d+:\d\d:\d\d-\d+:\d\d:\d\d\]", status[len(status) // 2])
    assert any("stalls 4 every 100 steps" in line for line in status)

    warnings = [line for line in child.err if line.startswith("warning:")]
    assert [w for w in warnings if "stalls every 100 steps" in w] and [w for w in warnings if "non-finite loss" in w]
    assert len([w for w in warnings if "non-finite" in w]) == 1  # once, not at every update
    budget = [w for w in warnings if "past --budget-hours 0.1" in w]
    assert len(budget) == 1
    # each warning came while the log was written, not at the end: the stall pattern shows in epoch 2
    # (its second stall), the NaN in epoch 3
    assert 0 < seen_at["stall"] < seen_at["nan"] < len(pieces) - 1
    assert "follow: stopped: the log says training completed" in "\n".join(child.out)

    # the same report as analyze --log of the finished file
    ref = run_cli("analyze", "--log", str(log), "--budget-hours", "0.1", "--out", str(tmp_path / "a"),
                  "--batch-size", str(BATCH))
    assert ref.returncode == 0, ref.stderr
    tail = child.out[child.out.index(next(x for x in child.out if x.startswith("follow: stopped:"))) + 1:]
    assert "\n".join(tail).replace(str(tmp_path / "f"), "OUT") == ref.stdout.rstrip("\n").replace(
        str(tmp_path / "a"), "OUT")
    assert _report_without_timestamp(tmp_path / "f" / "report.md") == _report_without_timestamp(
        tmp_path / "a" / "report.md")


@pytest.mark.slow
def test_ctrl_c_leaves_the_report_of_the_log_so_far(tmp_path):
    """SIGINT in the middle of an epoch (the last piece ends mid-refresh) ends following with the report
    ``analyze --log`` writes for the file as it is."""
    log = tmp_path / "train.log"
    pieces = log_pieces()
    log.write_text("".join(pieces[:5]))
    child = Child("--follow", str(log), "--interval", "0.1", "--out", str(tmp_path / "f"))
    child.wait_for(r"^follow: epoch 1/3")
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 0, child.err
    assert any(line.startswith("follow: stopped: interrupted (Ctrl-C)") for line in child.out)
    ref = run_cli("analyze", "--log", str(log), "--out", str(tmp_path / "a"))
    assert ref.returncode == 0
    assert _report_without_timestamp(tmp_path / "f" / "report.md") == _report_without_timestamp(
        tmp_path / "a" / "report.md")


@pytest.mark.slow
def test_follow_bad_input_is_one_sentence(tmp_path):
    res = run_cli("analyze", "--follow", str(tmp_path / "missing.log"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not found" in res.stderr
    binary = tmp_path / "bin.log"
    binary.write_bytes(b"\x00\x01\x02garbage\n")
    res = run_cli("analyze", "--follow", str(binary), "--stop-after-idle", "1")
    assert res.returncode == 2 and "binary content" in res.stderr and res.stderr.count("\n") == 1


# --------------------------------------------------------------------------- the pieces
def test_stream_in_pieces_reads_what_parse_log_reads():
    """Fed in pieces that end anywhere (inside a refresh, between \\r and \\n), the stream holds each
    unfinished segment and ends up with what parse_log reads from the whole text."""
    text = build_log(truncated=False)
    whole = analyze_log(parse_log(text))
    for step in (1, 7, 4096):
        stream = LogStream()
        for i in range(0, len(text), step):
            stream.feed(text[i:i + step])
        assert stream.pending == ""
        part = analyze_log(stream.snapshot())
        assert part["epochs"] == whole["epochs"] and part["loss"] == whole["loss"]
        assert part["val_loss"] == whole["val_loss"] and part["info"] == whole["info"]
    stream = LogStream()
    stream.feed(text[:-30])  # the last refresh cut: held back, not read
    assert stream.pending == text[-30 - len(stream.pending):-30] and "]" not in stream.pending


def test_tail_reads_appends_and_follows_truncation_and_rotation(tmp_path):
    log = tmp_path / "t.log"
    log.write_bytes(b"a\r")
    tail = LogTail(log)
    assert tail.read() == ("a\r", None)
    with open(log, "ab") as fh:
        fh.write("é".encode()[:1])  # half of a UTF-8 character: nothing yet
    assert tail.read() == ("", None)
    with open(log, "ab") as fh:
        fh.write("é".encode()[1:] + b"\n")
    assert tail.read() == ("é\n", None)
    log.write_bytes(b"x\n")  # truncated in place, shorter
    assert tail.read() == ("x\n", "truncated")
    with open(log, "ab") as fh:
        fh.write(b"old tail\n")
    os.rename(log, tmp_path / "t.log.1")  # rotated: the old file is drained first, then the new one read
    log.write_bytes(b"new\n")
    assert tail.read() == ("old tail\n", None)
    assert tail.read() == ("new\n", "rotated")
    assert tail.read() == ("", None)
    tail.close()


def test_live_status_eta_counts_remaining_steps_and_epoch_costs():
    """Half-way through epoch 2 of 3: ETA = remaining steps x the wall-clock time per step + the remaining
    validation passes and time between epochs as the log shows them."""
    pieces = log_pieces()
    text = "".join(pieces[:1 + 7 + 2])  # header, epoch 1, its validation and summary
    text += "\r" + "\r".join(epoch_refreshes(2)[:151]) + "\n"
    result = analyze_log(parse_log(text))
    s = live_status(result)
    assert s["steps_done"] == SPE + 150 and s["steps_total"] == EPOCHS * SPE
    assert s["epoch_costs"]["val_pass_s"] == VAL_S and s["epoch_costs"]["val_passes"] == 1
    ips = result["overall"]["it_per_s"]
    # no second summary yet: the time between epochs is not known, the ETA is a lower bound
    assert "time between epochs" in s["missing"][0] and s["lower_bound"]
    assert s["remaining_s"]["mid"] == pytest.approx((EPOCHS * SPE - SPE - 150) / ips + 2 * VAL_S)
    assert s["remaining_s"]["low"] < s["remaining_s"]["mid"] < s["remaining_s"]["high"]
    assert "ETA " in status_line(s) and "(lower bound)" in status_line(s)


def test_follow_ends_after_idle_and_reads_every_piece(tmp_path):
    """In process, on a real file: without a completion line, following ends after --stop-after-idle; the
    last status counts every step of the log, written in pieces that end mid-refresh."""
    import io

    from hjepa_bench.measure.log_follow import follow

    log = tmp_path / "train.log"
    log.write_text("".join(log_pieces()[:-1]))
    out, err = io.StringIO(), io.StringIO()
    end = follow(log, interval=0.05, stop_after_idle=0.3, out=out, err=err)
    assert end.reason.startswith("no new output for 0.3 s")
    assert end.status["steps_done"] == end.status["steps_total"] == EPOCHS * SPE
    assert end.status["epochs_completed"] == EPOCHS and end.status["remaining_s"]["mid"] == 0
    assert out.getvalue().count("\n") == 1  # not a terminal: one status line per change
    assert "warning: stalls every 100 steps" in err.getvalue() and "warning: non-finite loss" in err.getvalue()


def test_drift_past_the_limit_is_flagged():
    """A run whose step time grows from 0.30 s to 0.45 s over 3 epochs: the stability rule's fit finds a
    significant rise (about +50% over the steady intervals) and the status warns once; an even run does not."""
    def epoch_text(epoch: int, slope: float) -> str:
        desc, t, segs = f"Epoch {epoch}/{EPOCHS}", 0.0, [bar(f"Epoch {epoch}/{EPOCHS}", 0, SPE, 0, None)]
        for k in range(1, SPE + 1):
            g = (epoch - 1) * SPE + k
            t += 0.30 * (1 + slope * g / (EPOCHS * SPE))
            segs.append(bar(desc, k, SPE, int(t), 3.0))
        return "\r" + "\r".join(segs) + "\n"

    head = log_pieces()[0]
    drifting = live_status(analyze_log(parse_log(head + "".join(epoch_text(e, 0.5) for e in (1, 2, 3)))))
    d = drifting["drift"]
    assert d["degrading"] and d["p_value"] < 0.01 and 35 < d["change_pct"] < 60
    assert [w["key"] for w in drifting["warnings"]] == ["drift"]
    assert f"drift +{d['change_pct']:.1f}%" in status_line(drifting)
    even = live_status(analyze_log(parse_log(head + "".join(epoch_text(e, 0.0) for e in (1, 2, 3)))))
    assert not (even["drift"] or {}).get("degrading") and even["warnings"] == []
