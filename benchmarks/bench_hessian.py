"""gradflow's Hessian spectra side by side with PyHessian (Yao et al. 2020) in one run.

CIFAR resnet20 (3 x 32 x 32 inputs; random images and labels, no CIFAR-10 on this machine),
one batch of 128, BN in eval mode for both (PyHessian forces eval mode) with statistics
calibrated on the batch. Top eigenvalue: PyHessian's power iteration (its default stopping
rule, relative change < 1e-3) against gradflow's Lanczos stopped by the certified residual
bound r <= tol * lambda; the residual of PyHessian's final vector (one extra product, not
timed) gives its bound. Trace: both Hutchinson with the same number of Rademacher probes
(gradflow deflated by its Lanczos basis). PyHessian's density needs torch.eig, which torch 2
removed, so it is not compared. Then gradflow's per-block numbers, which PyHessian lacks.

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/bench_hessian.py [--batch 128]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import gradflow as gf
from gradflow.spectra.hessian import LossSurface, _batches


def pyhessian_side(model, x, y, probes: int):
    import pyhessian  # noqa: F401  (the package's __init__ shadows its hessian module)

    ph = sys.modules["pyhessian.hessian"]

    count = {"hvp": 0}
    original = ph.hessian_vector_product

    def counted(*args, **kwargs):
        count["hvp"] += 1
        return original(*args, **kwargs)

    ph.hessian_vector_product = counted
    try:
        started = time.perf_counter()
        engine = ph.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        values, vectors = engine.eigenvalues(top_n=1)
        eig_seconds, eig_hvps = time.perf_counter() - started, count["hvp"]
        started = time.perf_counter()
        samples = engine.trace(maxIter=probes, tol=0.0)
        trace_seconds, trace_hvps = time.perf_counter() - started, count["hvp"] - eig_hvps
    finally:
        ph.hessian_vector_product = original
    vector = torch.cat([v.reshape(-1) for v in vectors[0]])
    return {
        "eig": values[0], "vector": vector / vector.norm(), "eig_s": eig_seconds,
        "eig_hvps": eig_hvps, "trace": float(np.mean(samples)),
        "trace_se": float(np.std(samples, ddof=1) / len(samples) ** 0.5),
        "trace_s": trace_seconds, "trace_hvps": trace_hvps, "left_training": model.training,
    }  # fmt: skip


def residual_bound(model, x, y, value: float, vector: torch.Tensor) -> float:
    """||H v - lambda v|| for a unit v, by one gradflow product (eval-mode BN)."""
    surface = LossSurface(model, _batches(x, y), F.cross_entropy, bn="eval")
    operator = surface.operator(surface.names)
    return float((operator.matmat(vector[None])[0] - value * vector).norm())


def gradflow_side(model, x, y, tol: float, probes: int):
    started = time.perf_counter()
    frame = gf.hessian_spectra(
        model, x, y, k=1, blocks=None, bn="eval", quantities=("eigenvalue",), tol=tol
    )
    seconds = time.perf_counter() - started
    row = frame.iloc[0]
    started = time.perf_counter()
    both = gf.hessian_spectra(
        model, x, y, k=1, blocks=None, bn="eval", quantities=("eigenvalue", "trace"),
        tol=tol, trace_probes=probes,
    )  # fmt: skip
    trace_row = both[both.quantity == "trace"].iloc[0]
    return {"eig": row.value, "bound": row.error, "eig_s": seconds, "eig_hvps": int(row.matvecs),
            "trace": trace_row.value, "trace_se": trace_row.error,
            "trace_s": time.perf_counter() - started,
            "trace_hvps": int(row.matvecs) + int(trace_row.matvecs)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--probes", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    model = gf.calibrated_copy(gf.create_model("resnet20"), x).requires_grad_(True)
    theirs = pyhessian_side(gf.calibrated_copy(model, x).requires_grad_(True), x, y, args.probes)
    theirs["bound"] = residual_bound(model, x, y, theirs["eig"], theirs["vector"])
    ours = {tol: gradflow_side(model, x, y, tol, args.probes) for tol in (1e-2, 1e-3)}
    print(f"resnet20, batch {args.batch}, eval-mode BN, {torch.get_num_threads()} thread(s)")
    print("tool                     top eigenvalue +- bound   s  HVPs | trace +- s.e.  s  HVPs")
    print("(gradflow's trace columns: the Lanczos run + the deflated Hutchinson probes)")
    rows = [("PyHessian power iter.", theirs)] + [
        (f"gradflow Lanczos tol {tol:g}", result) for tol, result in ours.items()
    ]
    for name, r in rows:
        top = f"{r['eig']:10.5g} +- {r['bound']:8.2g} {r['eig_s']:6.1f} {r['eig_hvps']:4d}"
        tr = f"{r['trace']:8.4g} +- {r['trace_se']:7.2g} {r['trace_s']:6.1f} {r['trace_hvps']:4d}"
        print(f"{name:24s} {top} | {tr}")
    for tol, r in ours.items():
        ratio = theirs["eig_s"] / r["eig_s"], theirs["eig_hvps"] / r["eig_hvps"]
        print(
            f"top eigenvalue, PyHessian / gradflow tol {tol:g}: {ratio[0]:.2f}x time, "
            f"{ratio[1]:.2f}x HVPs"
        )
    print(f"PyHessian left the model in training mode: {theirs['left_training']} (it was True)")
    started = time.perf_counter()
    blocks = gf.hessian_spectra(
        model, x, y, k=1, bn="eval", quantities=(), block_quantities=("eigenvalue", "trace"),
        tol=1e-2, max_matvecs=10, trace_probes=4,
    )  # fmt: skip
    print(f"gradflow per block (PyHessian: not available), {time.perf_counter() - started:.1f} s:")
    table = blocks.pivot_table(index=["depth", "block"], columns="quantity", values="value")
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
