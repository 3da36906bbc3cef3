"""Whole-spectrum estimates for maps too large for exact spectra.

``frobenius_norm``: Hutchinson's estimator ||J||_F^2 = E ||A g||^2 for Gaussian g on the
smaller side of J (A = J or J^T), with its standard error. ``spectral_density``: stochastic
Lanczos quadrature (Ubaru, Chen & Saad 2017; as PyHessian does for Hessians): for each random
unit probe q, ``steps`` Lanczos steps on A^T A give a tridiagonal T with eigenpairs
(theta_j, y_j); the nodes sqrt(theta_j) with weights y_1j^2 / probes approximate the
distribution of singular values (each weight is a fraction of the min(m, n) values).
``lanczos_tridiagonal`` and ``quadrature_nodes`` serve any symmetric operator given as a
batched matmat callable (the Jacobian Gram here, the Hessian in ``hessian``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..errors import UserInputError
from .operators import JacobianOperator, TallView, TensorFunction, probe_generator


@dataclass
class FrobeniusEstimate:
    """||J||_F estimated by Hutchinson: value, standard error of ||J||_F^2, mean s^2, cost."""

    value: float
    squared: float
    squared_std_error: float
    mean_sq: float
    dim: int
    matvecs: int


def frobenius_norm(
    fn: TensorFunction, x: Tensor, probes: int = 32, seed: int = 0
) -> FrobeniusEstimate:
    """Hutchinson estimate of ||d fn/dx||_F (and mean s^2 = ||J||_F^2 / min(m, n)) at x."""
    if not isinstance(probes, int) or probes < 2:
        raise UserInputError(f"probes must be an integer >= 2, got {probes!r}")
    view = TallView(JacobianOperator(fn, x))
    generator = probe_generator(seed)
    gaussian = torch.randn(probes, view.cols, generator=generator, dtype=view.operator.dtype)
    squares = view.apply(gaussian).double().pow(2).sum(dim=1)
    squared = float(squares.mean())
    return FrobeniusEstimate(
        value=squared**0.5,
        squared=squared,
        squared_std_error=float(squares.std() / probes**0.5),
        mean_sq=squared / view.cols,
        dim=view.cols,
        matvecs=view.operator.products,
    )


Matmat = Callable[[Tensor], Tensor]  # rows in, rows out: (p, n) -> (p, n), symmetric


def lanczos_tridiagonal(matmat: Matmat, probes: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Batched Lanczos on a symmetric operator (``matmat``: rows V (p, n) -> rows of A V),
    one run per probe (rows of ``probes``), full reorthogonalisation.

    Returns alpha (probes, steps) and beta (probes, steps - 1) of the tridiagonal matrices.
    A run whose Krylov space became invariant (beta ~ 0) continues from a zero vector, which
    adds nodes of weight 0 only.
    """
    count, size = probes.shape
    basis = torch.zeros(count, steps, size, dtype=probes.dtype)
    alphas = torch.zeros(count, steps, dtype=torch.float64)
    betas = torch.zeros(count, max(steps - 1, 0), dtype=torch.float64)
    vector = probes / probes.norm(dim=1, keepdim=True)
    for step in range(steps):
        basis[:, step] = vector
        product = matmat(vector)
        alpha = (product * vector).sum(dim=1)
        alphas[:, step] = alpha.double()
        previous = basis[:, : step + 1]
        for _ in range(2):  # full reorthogonalisation against this probe's basis
            product = product - torch.einsum(
                "ps,psc->pc", torch.einsum("psc,pc->ps", previous, product), previous
            )
        if step + 1 == steps:
            break
        beta = product.norm(dim=1)
        betas[:, step] = beta.double()
        vector = product / beta.clamp_min(torch.finfo(product.dtype).tiny)[:, None]
    return alphas, betas


def quadrature_nodes(alphas: Tensor, betas: Tensor) -> pd.DataFrame:
    """Gauss quadrature of each probe's tridiagonal matrix: ``probe, node, weight`` (the
    Ritz values and the squared first components of their eigenvectors / probes; the
    weights sum to 1), so sum(weight * f(node)) estimates tr f(A) / n."""
    probes = alphas.shape[0]
    rows = []
    for probe in range(probes):
        tridiagonal = (
            torch.diag(alphas[probe]) + torch.diag(betas[probe], 1) + torch.diag(betas[probe], -1)
        )
        theta, vectors = torch.linalg.eigh(tridiagonal)
        weights = vectors[0] ** 2 / probes
        rows.append(
            pd.DataFrame({"probe": probe, "node": theta.numpy(), "weight": weights.numpy()})
        )
    return pd.concat(rows, ignore_index=True)


def spectral_density(
    fn: TensorFunction, x: Tensor, steps: int = 40, probes: int = 4, seed: int = 0
) -> pd.DataFrame:
    """Stochastic Lanczos quadrature of the singular values of J at x: a frame of
    ``probe, node`` (a singular value), ``weight`` (fraction of values it stands for; the
    weights sum to 1), one row per Ritz node. See ``density_summary`` for moments."""
    if steps < 1 or probes < 1:
        raise UserInputError("steps and probes must be positive integers")
    view = TallView(JacobianOperator(fn, x))
    steps = min(steps, view.cols)
    generator = probe_generator(seed)
    start = torch.randn(probes, view.cols, generator=generator, dtype=view.operator.dtype)
    alphas, betas = lanczos_tridiagonal(
        lambda vectors: view.apply_transpose(view.apply(vectors)), start, steps
    )
    frame = quadrature_nodes(alphas, betas)
    frame["node"] = frame["node"].clip(lower=0) ** 0.5  # eigenvalues of A^T A -> singular values
    frame.attrs["matvecs"] = view.operator.products
    frame.attrs["dim"] = view.cols
    return frame


def density_summary(density: pd.DataFrame) -> dict[str, float]:
    """Estimated median singular value and mean s^2 from an SLQ frame (weighted nodes)."""
    ordered = density.sort_values("node")
    cumulative = ordered["weight"].cumsum().to_numpy()
    median = float(ordered["node"].to_numpy()[np.searchsorted(cumulative, 0.5 * cumulative[-1])])
    mean_sq = float((ordered["node"] ** 2 * ordered["weight"]).sum() / ordered["weight"].sum())
    return {"median_estimate": median, "mean_sq_estimate": mean_sq}
