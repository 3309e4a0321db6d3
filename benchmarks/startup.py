"""Start-up time of the CLI against the floor every command that trains pays: ``import torch``.

Run it as a script (it is not a timed test: its numbers depend on the machine and its load, so it
prints them, with the load, for the reader to judge)::

    python benchmarks/startup.py            # 5 rounds
    python benchmarks/startup.py --rounds 9

Each round runs every command once, one after the other (side by side, so a change in the
machine's load hits all of them alike); the table gives the median wall time and the median peak
resident memory of each, and the ratio of its median to the median of ``python -c "import torch"``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    'python -c "import torch" (floor)': [sys.executable, "-c", "import torch"],
    "hjepa-bench --help": [sys.executable, "-m", "hjepa_bench", "--help"],
    "hjepa-bench sweep --help": [sys.executable, "-m", "hjepa_bench", "sweep", "--help"],
    "hjepa-bench devices": [sys.executable, "-m", "hjepa_bench", "devices"],
    "hjepa-bench plugins": [sys.executable, "-m", "hjepa_bench", "plugins"],
}


def run_once(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one run of ``argv``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {proc.returncode}")
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return wall, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    peaks: dict[str, list[int]] = {k: [] for k in COMMANDS}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for name, argv in COMMANDS.items():
            wall, peak = run_once(argv)
            times[name].append(wall)
            peaks[name].append(peak)
    load_after = os.getloadavg()
    floor = statistics.median(times['python -c "import torch" (floor)'])
    print(f"{args.rounds} rounds on {os.cpu_count()} CPU cores; load average (1 min) {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after\n")
    print("| command | median wall | x import torch | median peak RSS |")
    print("|---|---:|---:|---:|")
    for name in COMMANDS:
        med = statistics.median(times[name])
        print(f"| `{name}` | {med:.2f} s | {med / floor:.2f}x | {statistics.median(peaks[name]) / 2**20:.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
