"""Extreme eigenvalues and the trace of any symmetric operator given by batched products.

``SymmetricOperator`` wraps a matmat callable (rows V (p, n) -> rows of A V, A = A^T) and
counts products, so the same solvers serve a Hessian, a Jacobian Gram or a dense test matrix.

``eigenvalues``: block Lanczos with full reorthogonalisation and Rayleigh-Ritz. For a Ritz
pair (theta, y), ||y|| = 1, the residual r = ||A y - theta y|| certifies an eigenvalue of A in
[theta - r, theta + r] (Bauer-Fike for a symmetric matrix: it bounds the distance to *some*
eigenvalue, not to the one of that rank). Iteration stops when every wanted value has
r <= tol * max|theta|.

``trace``: Hutchinson's estimator tr(A) = E[g^T A g] for Rademacher g, with its standard
error. Given an orthonormal ``basis`` Q (e.g. the Lanczos vectors of ``eigenvalues``) it
deflates: tr(A) = tr(Q A Q^T) + E[g^T P A P g] with P = I - Q^T Q, which removes the outliers'
share of the variance (as Hutch++, Meyer et al. 2021, with the Krylov basis as sketch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..errors import UserInputError
from .operators import probe_generator
from .solvers import _check_options as check_options
from .solvers import _wanted as wanted
from .solvers import orthonormal_rows


class SymmetricOperator:
    """A = A^T of size n x n, known through ``matmat`` (rows in, rows out); counts products."""

    def __init__(self, matmat: Callable[[Tensor], Tensor], dim: int, dtype: torch.dtype) -> None:
        self._matmat = matmat
        self.dim = int(dim)
        self.dtype = dtype
        self.products = 0

    def matmat(self, vectors: Tensor) -> Tensor:
        """Rows of A V: (p, n) -> (p, n)."""
        self.products += vectors.shape[0]
        return self._matmat(vectors.to(self.dtype))

    @classmethod
    def dense(cls, matrix: Tensor) -> SymmetricOperator:
        """A dense symmetric matrix as an operator (tests, small problems)."""
        return cls(lambda vectors: vectors @ matrix.T, matrix.shape[0], matrix.dtype)


@dataclass
class EigenResult:
    """Extreme eigenvalues of A (descending) with certified error bounds and cost.

    ``indices``: rank among all ``dim`` eigenvalues, 0 = largest (the bottom k at
    dim-k..dim-1). ``errors``: the residual r = ||A y - theta y||, a bound on the distance from
    each value to an eigenvalue of A. ``basis``: the orthonormal Krylov basis (rows), usable to
    deflate a trace estimate; ``vectors``: the Ritz vectors (rows) of the values.
    """

    values: np.ndarray
    indices: np.ndarray
    errors: np.ndarray
    matvecs: int
    converged: bool
    dim: int
    basis: Tensor | None = field(default=None, repr=False)
    projected_trace: float = 0.0  # tr(Q A Q^T) of the basis
    vectors: Tensor | None = field(default=None, repr=False)
    nodes: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    weights: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    def quadrature(self) -> pd.DataFrame:
        """The run as stochastic Lanczos quadrature (its random start block as probes):
        ``probe, node, weight`` with all Ritz values as nodes and weights summing to 1."""
        return pd.DataFrame({"probe": 0, "node": self.nodes, "weight": self.weights})


@dataclass
class TraceEstimate:
    """tr(A) by Hutchinson (deflated when a basis was given): value, standard error, cost."""

    value: float
    std_error: float
    probes: int
    matvecs: int
    deflated_dim: int


def _rayleigh_ritz(basis: Tensor, images: Tensor, k: int, which: str):
    """Wanted Ritz values (descending), positions, residual norms and Ritz vectors."""
    work = torch.float64
    projected = basis.to(work) @ images.to(work).T
    theta, weights = torch.linalg.eigh((projected + projected.T) / 2)
    theta, weights = theta.flip(0), weights.flip(1)
    positions = wanted(theta.numel(), k, which)
    chosen = weights[:, positions]
    vectors = chosen.T @ basis.to(work)
    residual = (chosen.T @ images.to(work) - theta[positions, None] * vectors).norm(dim=1)
    return theta, positions, residual, vectors, float(projected.trace()), weights


def eigenvalues(
    operator: SymmetricOperator,
    k: int = 1,
    which: str = "largest",
    tol: float = 1e-3,
    *,
    block_size: int = 1,
    max_matvecs: int = 200,
    min_matvecs: int = 0,
    seed: int = 0,
) -> EigenResult:
    """The k largest and/or smallest eigenvalues of a symmetric operator by block Lanczos,
    each with a certified bound (module docstring) <= tol * max|theta| unless the budget
    ``max_matvecs`` ran out (then ``converged`` is False). ``min_matvecs`` extends the run
    (more quadrature nodes for a density, a larger basis to deflate a trace)."""
    if k is None:
        raise UserInputError("k must be a positive integer (how many eigenvalues), got None")
    check_options(k, which, "lanczos", tol)
    if block_size < 1 or max_matvecs < 1:
        raise UserInputError("block_size and max_matvecs must be positive")
    dim, dtype = operator.dim, operator.dtype
    generator = probe_generator(seed)
    rounding = 50 * torch.finfo(dtype).eps
    basis = torch.empty(0, dim, dtype=dtype)
    images = torch.empty(0, dim, dtype=dtype)
    block = torch.randn(min(block_size, dim), dim, generator=generator, dtype=dtype)
    start = operator.products
    while True:
        block = orthonormal_rows(block, basis, generator)
        budget = max_matvecs - (operator.products - start)
        block = block[: max(budget, 0)]
        if block.shape[0] == 0:
            break
        image = operator.matmat(block)
        basis, images = torch.cat([basis, block]), torch.cat([images, image])
        theta, positions, residual, *_ = _rayleigh_ritz(basis, images, k, which)
        ok = residual <= max(tol, rounding) * float(theta.abs().max())
        enough = operator.products - start >= min_matvecs
        if (bool(ok.all()) and enough) or basis.shape[0] >= dim:
            break
        block = image
    theta, positions, residual, vectors, projected, weights = _rayleigh_ritz(
        basis, images, k, which
    )
    scale = float(theta.abs().max())
    converged = bool((residual <= max(tol, rounding) * scale).all()) or basis.shape[0] >= dim
    indices = positions.copy()
    if which != "largest":  # bottom values: rank counted from the end of the spectrum
        low = positions >= k if which == "both" else np.ones(len(positions), dtype=bool)
        indices[low] = dim - (theta.numel() - positions[low])
    return EigenResult(
        values=theta[positions].numpy(),
        indices=indices,
        errors=residual.numpy(),
        matvecs=operator.products - start,
        converged=converged,
        dim=dim,
        basis=basis,
        projected_trace=projected,
        vectors=vectors.to(dtype),
        nodes=theta.numpy(),
        weights=(weights[: min(block_size, dim)] ** 2).mean(dim=0).numpy(),
    )


def trace(
    operator: SymmetricOperator,
    probes: int = 16,
    *,
    basis: Tensor | None = None,
    projected_trace: float = 0.0,
    seed: int = 0,
) -> TraceEstimate:
    """Hutchinson's tr(A) with Rademacher probes, deflated by an orthonormal ``basis`` (rows)
    whose tr(Q A Q^T) = ``projected_trace`` is known (module docstring)."""
    if not isinstance(probes, int) or probes < 2:
        raise UserInputError(f"trace probes must be an integer >= 2, got {probes!r}")
    generator = probe_generator(seed + 1)
    signs = torch.randint(0, 2, (probes, operator.dim), generator=generator)
    vectors = (2 * signs - 1).to(operator.dtype)
    deflated = 0
    if basis is not None and basis.shape[0]:
        if basis.shape[0] >= operator.dim:  # the basis spans everything: the trace is exact
            return TraceEstimate(projected_trace, 0.0, 0, 0, operator.dim)
        basis = basis.to(operator.dtype)
        vectors = vectors - (vectors @ basis.T) @ basis
        deflated = basis.shape[0]
    start = operator.products
    quadratic = (operator.matmat(vectors) * vectors).sum(dim=1).double()
    return TraceEstimate(
        value=projected_trace + float(quadratic.mean()),
        std_error=float(quadratic.std() / probes**0.5),
        probes=probes,
        matvecs=operator.products - start,
        deflated_dim=deflated,
    )
