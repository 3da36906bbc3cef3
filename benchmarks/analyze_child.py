"""One `gradflow analyze` in a fresh child process, as a user types it: the one runner of the
benchmarks that time it (bench_analyze, bench_memory, bench_user_models).

Peak RSS: gradflow restarts the kernel's high-water mark at every phase (to measure each
phase's peak), and wait4/getrusage read that mark, so they see only the peak since the last
restart. The process's whole peak is the largest of the child's rusage, the phases' peaks
and meta.json's ``process_peak_rss_mib`` (``gradflow.memory.process_peak_rss_mib``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_analyze(args: list[str], out: Path, cwd: Path | None = None) -> dict:
    """`python -m gradflow analyze ARGS --quiet --out OUT` in a child: wall and CPU seconds,
    whole-process peak RSS (MiB, see the module doc), exit code, meta.json, stdout, stderr."""
    command = [sys.executable, "-m", "gradflow", "analyze", *args, "--quiet", "--out", str(out)]
    logs = out.parent / f".{out.name}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(logs / "out.txt", "w") as stdout, open(logs / "err.txt", "w") as stderr:
        child = subprocess.Popen(command, cwd=cwd, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
    wall = time.perf_counter() - started
    meta_file = out / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    phases = [p.get("peak_rss_mib") or 0 for p in meta.get("phase_seconds", [])]
    peaks = [usage.ru_maxrss / 1024, meta.get("process_peak_rss_mib") or 0, *phases]  # KiB
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,  # less sensitive to load than wall
        "peak_mib": max(peaks),
        "exit": os.waitstatus_to_exitcode(status),
        "meta": meta,
        "stdout": (logs / "out.txt").read_text(),
        "stderr": (logs / "err.txt").read_text(),
    }
