"""Jacobian spectra of CIFAR resnet56 maps: gradflow solvers vs the dense baseline, one run.

Maps at one 3x32x32 input, eval-mode BN (running statistics calibrated on 8 probe inputs in a
copy): input -> end of stage 1 (3072 -> 16384) and input -> end of stage 3 (3072 -> 4096).
Baseline: the dense Jacobian by ``torch.func.jacfwd`` (all tangents in one vmap) and
``torch.linalg.svdvals``. Goals (issue 5): top-16 >= 20x faster at relative error <= 1e-3,
bottom-16 >= 5x faster at <= 1e-2, cumulative spectra at all 27 depths <= 4x one depth.

    python benchmarks/bench_spectra.py [--maps stage1,stage3] [--skip-cumulative]
    python benchmarks/bench_spectra.py --contrast   # plain56 vs resnet56 at init

``--contrast`` prints, for plain56 and resnet56 at init, the exact (dense SVD) cumulative
spectra from the input to blocks 1, 9, 18, 27 in float64 (largest, smallest, log10
condition), and the
time of ``block_spectra`` with its cheap defaults (what ``gradflow analyze`` runs).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.func import jacfwd

import gradflow as gf
from gradflow.spectra import (
    block_spectra,
    calibrated_copy,
    cumulative_singular_values,
    singular_values,
)


def timed(work, *args, **kwargs):
    started = time.perf_counter()
    result = work(*args, **kwargs)
    return result, time.perf_counter() - started


def stage_map(model, last_stage: int):
    return _chain([model.forward_stem, *model.stages()[:last_stage]])


def baseline(fn, x):
    jacobian = jacfwd(fn)(x)
    rows = jacobian.numel() // x.numel()
    return torch.linalg.svdvals(jacobian.reshape(rows, x.numel())).double().numpy()


def zero_floor(exact) -> float:
    """eps(float32) * n * sigma_max: exact values below it are zeros to float32 rounding."""
    return np.finfo(np.float32).eps * len(exact) * exact[0]


def relative_error(result, exact) -> float:
    """max |s - exact| / exact, where exact values at rounding level (a rank-deficient map's
    zeros, below ``zero_floor``) count relative to sigma_max instead (no relative error)."""
    wanted = exact[result.indices]
    reference = np.where(wanted < zero_floor(exact), exact[0], wanted)
    return float(np.max(np.abs(result.values - wanted) / reference))


def contrast() -> None:
    """Exact cumulative spectra of plain56 vs resnet56 at init, and the default-settings cost."""
    from gradflow.spectra import summarize_spectra

    probe = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    print(f"{'model':9} {'depth':>5} {'largest':>10} {'smallest':>10} {'log10 cond':>10}")
    for name in ("plain56", "resnet56"):
        model = gf.create_model(name)
        _, default_time = timed(block_spectra, model, probe, model_name=name)
        exact = block_spectra(  # float64: plain56's condition numbers exceed 1/eps(float32)
            model.double(), probe.double(), k=4, depths=[1, 9, 18, 27], samples=1,
            operators=("prod",), method="dense", hutchinson=0, model_name=name,
        )  # fmt: skip
        for _, row in summarize_spectra(exact).iterrows():
            print(f"{name:9} {row.depth:5d} {row.largest:10.4g} {row.smallest:10.4g} "
                  f"{row.log10_condition:10.3f}")  # fmt: skip
        print(f"  block_spectra({name}, 2 probes, defaults) took {default_time:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", default="stage1,stage3")
    parser.add_argument("--skip-cumulative", action="store_true")
    parser.add_argument("--contrast", action="store_true", help="plain56 vs resnet56 at init")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (1: on a shared 2-core machine, 2 threads that wait on each other "
        "at every small op made the batched products 15x slower, the big baseline only 4x)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.contrast:
        return contrast()
    torch.manual_seed(0)
    model = gf.create_model("resnet56")
    probe = torch.randn(8, 3, 32, 32)
    twin = calibrated_copy(model, probe)
    x = probe[:1]
    header = (f"{'map':8} {'method':26} {'which':9} {'seconds':>8} {'speedup':>8} {'goal':>10} "
              f"{'max rel err':>12} {'matvecs':>8}")  # fmt: skip
    print(header, flush=True)

    def show(name, method, which, seconds, speedup, goal, error, matvecs):
        print(f"{name:8} {method:26} {which:9} {seconds:8.2f} {speedup:8.1f} {goal:>10} "
              f"{error:12.2e} {matvecs:8d}", flush=True)  # fmt: skip

    for name in args.maps.split(","):
        stage = {"stage1": 1, "stage3": 3}[name]
        fn = stage_map(twin, stage)
        exact, base_time = timed(baseline, fn, x)
        show(name, "baseline jacfwd+svdvals", "all", base_time, 1.0, "", 0.0, x.numel())
        zeros = int(np.sum(exact < zero_floor(exact)))
        if zeros:
            print(f"{'':8} ({zeros} of {len(exact)} singular values are zero to float32 "
                  "rounding: rank-deficient; their error is relative to sigma_max)")  # fmt: skip
        runs = [
            ("lanczos", "largest", dict(tol=1e-2), "20x, 1e-3"),
            ("lanczos", "smallest", dict(tol=1e-2, max_matvecs=1024), "5x, 1e-2"),
            ("dense", "smallest", {}, "5x, 1e-2"),
        ]
        for method, which, options, goal in runs:
            result, seconds = timed(
                singular_values, fn, x, k=16, which=which, method=method, **options
            )
            show(name, f"gradflow {method}", which, seconds, base_time / seconds, goal,
                 relative_error(result, exact), result.matvecs)  # fmt: skip
    if args.skip_cumulative:
        return
    cumulative(twin, x)


def cumulative(twin, x) -> None:
    """Top-16 of J_d ... J_1 (input -> block d) at depth 27 alone vs all 27 depths, one walk."""
    blocks = [block for _, block in twin.named_blocks()]
    steps = [lambda z: blocks[0](twin.forward_stem(z)), *blocks[1:]]
    options = dict(k=16, tol=1e-2)
    cumulative_singular_values(steps, x, depths=[1], k=4)  # warm-up: first calls are slower
    one, one_time = timed(cumulative_singular_values, steps, x, depths=[27], **options)
    every, all_time = timed(cumulative_singular_values, steps, x, **options)
    one_products = one[27].matvecs * 27
    all_products = sum(result.matvecs * depth for depth, result in every.items())
    agree = np.max(np.abs(every[27].values - one[27].values) / one[27].values)
    unconverged = [depth for depth, result in every.items() if not result.converged]

    def each_depth_alone():  # the method before the walk: one Lanczos per depth, warm-started
        warm = None
        for depth in range(1, 28):
            fn = _chain(steps[:depth])
            warm = singular_values(fn, x, method="lanczos", start=warm, **options).vectors

    _, alone_time = timed(each_depth_alone)
    print(
        f"\ncumulative prod spectra, top-16, certified to 1e-2 (one walk over the depths):\n"
        f"  depth 27 alone {one_time:.2f} s ({one_products} block products); all 27 depths "
        f"{all_time:.2f} s ({all_products} block products)\n"
        f"  time ratio {all_time / one_time:.1f}, product ratio {all_products / one_products:.1f} "
        f"(goal <= 4); each depth solved on its own (warm-started Lanczos): {alone_time:.2f} s, "
        f"ratio {alone_time / one_time:.1f}\n"
        f"  depth-27 values agree to {agree:.1e}; unconverged depths: {unconverged or 'none'}"
    )


def _chain(steps):
    def forward(z):
        for step in steps:
            z = step(z)
        return z

    return forward


if __name__ == "__main__":
    main()
