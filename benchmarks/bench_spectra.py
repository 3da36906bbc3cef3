"""Jacobian spectra of CIFAR resnet56 maps: gradflow against scipy and dense, side by side.

Maps at one 3x32x32 input, eval-mode BN (running statistics calibrated on 8 probe inputs in a
copy): input -> end of stage 1 (3072 -> 16384) and input -> end of stage 3 (3072 -> 4096).
Top-16 singular values by: the dense Jacobian (``torch.func.jacfwd`` + ``svdvals``, which
also gives the exact values), ``gf.singular_values`` (Golub-Kahan-Lanczos, certified bounds),
and scipy's ``svds`` (ARPACK, PROPACK) and ``lobpcg`` (on the Gram J^T J) through the
operator's ``as_linear_operator()`` (the same linearised products, counted). Errors are
max |s - exact| / exact over the 16 values. The walk section compares
``cumulative_singular_values`` (all 27 depths, one walk) with what a user writes instead:
one scipy solve per depth, warm-started with the previous depth's top right vector.

    python benchmarks/bench_spectra.py [--maps stage1,stage3] [--skip-walk] [--skip-bottom]
    python benchmarks/bench_spectra.py --contrast   # plain56 vs resnet56 at init
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, lobpcg, svds
from torch.func import jacfwd

import gradflow as gf
from gradflow.spectra import (
    JacobianOperator,
    block_spectra,
    calibrated_copy,
    cumulative_singular_values,
    singular_values,
)

K = 16
# svds(solver="propack") runs PROPACK's lansvd without restarts: its basis (``maxiter`` =
# kmax, default 10 k = 160) must hold the whole Krylov space; 160 failed on both maps
# (LinAlgError: k=16 triplets did not converge within kmax=160), so it gets 40 k.
PROPACK_KMAX = 40 * K


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


def relative_error(values, indices, exact) -> float:
    """max |s - exact| / exact, where exact values at rounding level (a rank-deficient map's
    zeros, below ``zero_floor``) count relative to sigma_max instead (no relative error)."""
    wanted = exact[indices]
    reference = np.where(wanted < zero_floor(exact), exact[0], wanted)
    return float(np.max(np.abs(np.asarray(values) - wanted) / reference))


def scipy_top(solver: str, fn, x, v0=None, tol=None) -> tuple[np.ndarray, np.ndarray, int]:
    """Top-K values (descending), top right vector and products of one scipy solve."""
    operator = JacobianOperator(fn, x)
    linear = operator.as_linear_operator()
    rng = np.random.default_rng(0)
    if solver == "lobpcg":
        gram = LinearOperator(
            (linear.shape[1],) * 2, dtype=np.float64,
            matvec=lambda v: linear.rmatvec(linear.matvec(v)),
            matmat=lambda v: linear.rmatmat(linear.matmat(v)),
        )  # fmt: skip
        start = rng.standard_normal((linear.shape[1], K))
        eigenvalues, vectors = lobpcg(gram, start, largest=True, tol=tol or 1e-6, maxiter=400)
        order = np.argsort(eigenvalues)[::-1]
        values = np.sqrt(np.clip(eigenvalues[order], 0, None))
        return values, vectors[:, order[0]], operator.products
    if solver == "propack":  # PROPACK's v0 lives on the left: solve the transpose
        u, s, _ = svds(
            linear.T, k=K, solver="propack", v0=v0, rng=rng, maxiter=PROPACK_KMAX, **_tol(tol)
        )
        order = np.argsort(s)[::-1]
        return s[order], u[:, order[0]], operator.products
    _, s, vt = svds(linear, k=K, solver="arpack", v0=v0, rng=rng, **_tol(tol or 1e-5))
    order = np.argsort(s)[::-1]
    return s[order], vt[order[0]], operator.products


def _tol(tol):
    return {} if tol is None else {"tol": tol}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", default="stage1,stage3")
    parser.add_argument("--skip-walk", action="store_true")
    parser.add_argument("--walk-depths", type=int, default=27, help="walk over blocks 1..N")
    parser.add_argument("--skip-bottom", action="store_true", help="no bottom-16 rows")
    parser.add_argument("--solvers", default="arpack,propack,lobpcg", help="scipy solvers")
    parser.add_argument(
        "--exact-cache", default="",
        help="directory for the dense spectra (.npy): reused when present (dense not re-timed)",
    )  # fmt: skip
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
    singular_values(stage_map(twin, 1), x, k=2, method="lanczos", tol=1e-2)  # warm-up
    print(f"{'map':7} {'solver':30} {'seconds':>8} {'x best':>7} {'products':>8} "
          f"{'max rel err':>11} {'bound':>8}", flush=True)  # fmt: skip
    for name in filter(None, args.maps.split(",")):
        compare_solvers(name, stage_map(twin, {"stage1": 1, "stage3": 3}[name]), x, args)
    if not args.skip_walk:
        walk(twin, x, args.walk_depths)


def compare_solvers(name: str, fn, x, args) -> None:
    """One map: dense, gradflow and scipy top-16 (and gradflow's bottom-16) in one run."""
    cache = Path(args.exact_cache) / f"resnet56_{name}.npy" if args.exact_cache else None
    if cache is not None and cache.exists():
        exact, rows = np.load(cache), []
    else:
        exact, base_time = timed(baseline, fn, x)
        rows = [("dense jacfwd+svdvals (all)", base_time, x.numel(), 0.0, np.nan)]
        if cache is not None:
            np.save(cache, exact)
    top, seconds = timed(singular_values, fn, x, k=K, method="lanczos", tol=1e-4)
    gradflow_row = ("gradflow singular_values top", seconds, top.matvecs,
                    relative_error(top.values, top.indices, exact),
                    float(np.max(top.errors / top.values)))  # fmt: skip
    rows.append(gradflow_row)
    for solver in args.solvers.split(","):
        try:
            (values, _, products), seconds = timed(scipy_top, solver, fn, x)
            error = relative_error(values, np.arange(K), exact)
        except Exception as err:  # a solver that fails is reported, not hidden
            print(f"{name:7} scipy {solver} failed: {type(err).__name__}: {err}", flush=True)
            continue
        rows.append((f"scipy {solver} top", seconds, products, error, np.nan))
    best = min(seconds for label, seconds, *_ in rows if label.startswith("scipy"))
    if not args.skip_bottom:
        for method, options in (("dense", {}), ("lanczos", dict(tol=1e-2, max_matvecs=1024))):
            low, seconds = timed(singular_values, fn, x, k=K, which="smallest", method=method,
                                 **options)  # fmt: skip
            rows.append((f"gradflow {method} bottom", seconds, low.matvecs,
                         relative_error(low.values, low.indices, exact),
                         float(np.max(low.errors / low.values))))  # fmt: skip
    for label, seconds, products, error, bound in rows:
        print(f"{name:7} {label:30} {seconds:8.2f} {seconds / best:7.2f} {products:8d} "
              f"{error:11.1e} {bound:8.1e}", flush=True)  # fmt: skip


def walk(twin, x, depths: int = 27) -> None:
    """Top-16 of J_d ... J_1 (input -> block d) at every depth: one walk vs per-depth scipy."""
    blocks = [block for _, block in twin.named_blocks()][:depths]
    steps = [lambda z: blocks[0](twin.forward_stem(z)), *blocks[1:]]
    cumulative_singular_values(steps, x, depths=[1], k=4)  # warm-up: first calls are slower
    every, walk_time = timed(cumulative_singular_values, steps, x, k=K, tol=1e-2)
    walk_products = sum(result.matvecs * depth for depth, result in every.items())
    bound = max(float(np.max(r.errors / r.values)) for r in every.values())
    print(f"\ndepths 1..{depths}, top-16, tol 1e-2:    {'seconds':>8} {'x walk':>7} "
          f"{'block products':>14} {'max rel diff to walk':>20}")  # fmt: skip
    print(f"  gradflow walk (bound <= {bound:.1e})   {walk_time:8.2f} {1.0:7.2f} "
          f"{walk_products:14d} {0.0:20.1e}", flush=True)  # fmt: skip
    for solver in ("propack", "arpack"):
        try:
            (products, difference), seconds = timed(_per_depth, solver, steps, x, every)
        except Exception as err:  # e.g. PROPACK's LinAlgError at one depth: a failed row
            reason = str(err).splitlines()[0][:160]
            print(f"  scipy {solver} per depth, v0 warm    failed ({reason})", flush=True)
            continue
        print(f"  scipy {solver} per depth, v0 warm    {seconds:8.2f} {seconds / walk_time:7.2f} "
              f"{products:14d} {difference:20.1e}", flush=True)  # fmt: skip


def _per_depth(solver, steps, x, every) -> tuple[int, float]:
    """One scipy solve per depth, v0 = the previous depth's top right vector: block products
    and the largest relative difference to the walk's values."""
    v0, products, difference = None, 0, 0.0
    for depth in range(1, len(steps) + 1):
        try:
            values, v0, count = scipy_top(solver, _chain(steps[:depth]), x, v0=v0, tol=1e-2)
        except Exception as err:
            raise RuntimeError(f"at depth {depth}: {type(err).__name__}: {err}") from err
        products += count * depth
        reference = every[depth].values
        difference = max(difference, float(np.max(np.abs(values - reference) / reference)))
    return products, difference


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


def _chain(steps):
    def forward(z):
        for step in steps:
            z = step(z)
        return z

    return forward


if __name__ == "__main__":
    main()
