"""Wall time and peak RSS of the README's first command, `gradflow analyze` (issue goal:
<= 60 s and <= 2 GB on a 2-core CPU; stretch 20 s).

    python benchmarks/bench_analyze.py [--model plain56 --model resnet56] [--repeat 1]

Runs the command as a subprocess (a fresh interpreter, imports included, as a user types
it) through ``analyze_child.run_analyze``, which also gives its whole peak resident set size.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from analyze_child import run_analyze


def run_once(models: list[str], extra: list[str]) -> tuple[float, float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        args = [a for m in models for a in ("--model", m)] + extra
        run = run_analyze(args, Path(tmp) / "r")
    if run["exit"]:
        sys.exit(f"gradflow analyze failed:\n{run['stderr']}")
    return run["wall_s"], run["peak_mib"], run["stdout"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--repeat", type=int, default=1)
    args, extra = parser.parse_known_args()
    models = args.model or ["plain56", "resnet56"]
    times, peaks, summary = [], [], ""
    for _ in range(args.repeat):
        wall, peak, summary = run_once(models, extra)
        times.append(wall)
        peaks.append(peak)
    print(f"gradflow analyze {' '.join('--model ' + m for m in models)} {' '.join(extra)}")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"runs: {args.repeat}; machine load average (1/5/15 min) after the runs: {load}")
    print(f"wall time: {min(times):.1f} s (min of {len(times)}; goal <= 60 s, stretch 20 s)")
    print(f"peak RSS:  {max(peaks):.0f} MiB (goal <= 2048 MiB)")
    print("\nsummary printed by the command:\n" + summary)


if __name__ == "__main__":
    main()
