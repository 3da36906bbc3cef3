"""Peak RSS and wall time of `gradflow analyze --model NAME` (default settings), per phase.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_memory.py [--model resnet20 ...]

Each model runs in its own subprocess (a fresh interpreter, as a user types the command). The
whole process's peak RSS comes from ``analyze_child.run_analyze`` (see there why rusage alone
under-reports it); the per-phase
figures from its meta.json (``phase_seconds``: seconds and the peak RSS while the phase ran,
``gradflow.memory.peak_rss_mib`` reset at the phase start), and the record plan (batch,
micro-batches, saved MiB per sample) from ``meta["record"]``. Goal (issue 14): <= 2048 MiB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from analyze_child import run_analyze

DEFAULT_MODELS = ("resnet20", "resnet110", "resnet1202")


def run_one(model: str, extra: list[str]) -> dict:
    """One `gradflow analyze` in a child process: its wall time, peak RSS and meta.json."""
    with tempfile.TemporaryDirectory() as tmp:
        run = run_analyze(["--model", model, *extra], Path(tmp) / "report")
    if run["exit"]:
        sys.exit(f"gradflow analyze --model {model} failed:\n{run['stderr']}")
    return {"model": model, "wall": run["wall_s"], "peak": run["peak_mib"], "meta": run["meta"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", default=None)
    args, extra = parser.parse_known_args()
    print(f"gradflow analyze --model NAME {' '.join(extra)}  (goal: peak RSS <= 2048 MiB)")
    print(f"{'model':<12}{'phase':<9}{'seconds':>9}{'peak MiB':>10}  record plan")
    for model in args.model or DEFAULT_MODELS:
        run = run_one(model, extra)
        plans = {p["model"]: p for p in run["meta"].get("record", [])}
        plan = plans.get(model, {})
        estimate = (plan.get("micro_batch") or 0) * (plan.get("saved_mib_per_sample") or 0)
        estimate += plan.get("fixed_mib") or 0
        text = (
            f"batch {plan.get('batch_size')} in {plan.get('micro_batches')} x "
            f"<= {plan.get('micro_batch')} ({plan.get('saved_mib_per_sample')} MiB/sample, "
            f"slice estimate {estimate:.0f} MiB, products of {plan.get('product_vectors')} vectors)"
        )
        for phase in run["meta"]["phase_seconds"]:
            print(
                f"{model:<12}{phase['phase']:<9}{phase['seconds']:>9.1f}"
                f"{phase.get('peak_rss_mib', float('nan')):>10.0f}  {text}"
            )
        print(f"{model:<12}{'total':<9}{run['wall']:>9.1f}{run['peak']:>10.0f}  whole process")
        sys.stdout.flush()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"machine load average (1/5/15 min) after the runs: {load}")


if __name__ == "__main__":
    main()
