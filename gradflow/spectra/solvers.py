"""Singular values of a Jacobian at a point: dense SVD, block Lanczos, subspace iteration.

All iterative solvers work on the Gram matrix A^T A of the tall view A of J (J itself, or
J^T when J is wide), so they see exactly the min(m, n) squared singular values of J. They
share one loop: orthonormalise a block of vectors, apply A and A^T to it (batched products),
and take Ritz values of J on the current basis (Rayleigh-Ritz). Block Lanczos keeps every
block (the block Krylov space of A^T A), randomized subspace iteration only the last one.

Error estimates: for a Ritz pair (s, v) the residual r = ||A^T A v - s^2 v|| guarantees an
eigenvalue of A^T A in [s^2 - r, s^2 + r], hence a singular value of J within
``error = max(sqrt(s^2 + r) - s, s - sqrt(max(s^2 - r, 0)))`` of s (Weyl/Bauer-Fike for a
symmetric matrix; it bounds the distance to *some* singular value, not to the one of that rank).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..errors import UserInputError
from .bidiagonal import largest_triplets
from .operators import JacobianOperator, TallView, TensorFunction, probe_generator

WHICH = ("largest", "smallest", "both")
METHODS = ("auto", "dense", "lanczos", "randomized")
DENSE_AUTO_LIMIT = 512  # method="auto" forms J when min(m, n) is at most this
# The dense route forms J (min(m, n) products) and an SVD workspace of about the same size:
# refused above these, before any product (a k or a map too large for it is a user error).
DENSE_BYTES_LIMIT = 2**30
DENSE_PRODUCTS_LIMIT = 8192


@dataclass(frozen=True)
class DenseCost:
    """What forming J and its SVD costs: ``products`` J(^T)-vector products, ``bytes`` of J
    plus LAPACK's copy of it (the singular values alone need no singular vectors)."""

    products: int
    bytes: int

    @classmethod
    def of(cls, shape: tuple[int, int], dtype: torch.dtype) -> DenseCost:
        m, n = shape
        return cls(min(m, n), 2 * m * n * torch.finfo(dtype).bits // 8)

    @property
    def affordable(self) -> bool:
        return self.bytes <= DENSE_BYTES_LIMIT and self.products <= DENSE_PRODUCTS_LIMIT

    def describe(self, shape: tuple[int, int]) -> str:
        return (
            f"forming the {shape[0]} x {shape[1]} Jacobian takes {self.products} products and "
            f"{self.bytes / 2**30:.2f} GiB (limits: {DENSE_PRODUCTS_LIMIT} products, "
            f"{DENSE_BYTES_LIMIT / 2**30:.0f} GiB)"
        )


def check_dense_route(shape, dtype, k: int | None, which: str, asked: bool) -> None:
    """UserInputError, before any product, when the dense route this call would take costs
    more than the limits (``asked``: method="dense" was requested, else k forced it)."""
    cost = DenseCost.of(shape, dtype)
    if cost.affordable:
        return
    dim = min(shape)
    if asked:
        raise UserInputError(
            f"method='dense': {cost.describe(shape)}; pass method='lanczos' (or 'auto') with a "
            f"k well below {dim}, e.g. k=8"
        )
    wanted = "every singular value" if k is None else f"k={k} ({which}) covers all {dim} values"
    most = max((dim - 1) // 2 if which == "both" else dim - 1, 1)
    raise UserInputError(
        f"{wanted} of this map, which only the dense route finds: {cost.describe(shape)}; "
        f"pass k <= {min(most, 512)} (e.g. the default 8) for the iterative solver"
    )


def route(
    shape: tuple[int, int], dtype: torch.dtype, k: int | None, which: str, method: str
) -> str:
    """The method ``singular_values`` uses on a map of ``shape``: "dense" for method="dense",
    k=None, k covering the spectrum or (auto) min(m, n) <= DENSE_AUTO_LIMIT, refused by
    ``check_dense_route`` when too costly (before any product; callers may ask it first)."""
    dim = min(shape)
    asked = method == "dense"
    if method == "auto":
        method = "dense" if k is None or dim <= DENSE_AUTO_LIMIT else "lanczos"
    covers_all = k is not None and (k >= dim or (2 * k >= dim and which == "both"))
    if method == "dense" or (covers_all and method == "lanczos"):
        check_dense_route(shape, dtype, k, which, asked)
        return "dense"
    return method


@dataclass
class SpectrumResult:
    """Singular values of J (descending) with their rank, error bound and cost.

    ``indices``: rank of each value among all ``dim = min(m, n)`` singular values, 0 = largest
    (the bottom k sit at ranks dim-k..dim-1). ``errors``: bound on |sigma - nearest true
    singular value| (a priori LAPACK-style eps * max(m, n) * sigma_max for dense SVD).
    ``residuals``: ||J^T J v - s^2 v|| (or with J J^T) per value, NaN for dense.
    ``matvecs``: number of Jacobian-vector plus transposed-Jacobian-vector products.
    ``vectors``: the Ritz vectors (rows, on the smaller side of J) of iterative methods, usable
    as ``start=`` for a nearby map (e.g. the next depth of a cumulative product).
    ``mean_sq_estimate``: Hutchinson's ||J||_F^2 / dim when the solver computed it, else NaN.
    """

    values: np.ndarray
    indices: np.ndarray
    errors: np.ndarray
    residuals: np.ndarray
    matvecs: int
    method: str
    converged: bool
    dim: int
    shape: tuple[int, int] = field(default=(0, 0))
    vectors: Tensor | None = field(default=None, repr=False)  # Ritz vectors (rows), smaller side
    mean_sq_estimate: float = float("nan")  # Hutchinson ||J||_F^2 / dim, where computed

    def frame(self, **labels: object) -> pd.DataFrame:
        """One row per singular value: index, sigma, error, residual, method (+ label columns)."""
        frame = pd.DataFrame(
            {
                "index": self.indices,
                "sigma": self.values,
                "error": self.errors,
                "residual": self.residuals,
                "method": self.method,
            }
        )
        for name, value in reversed(labels.items()):
            frame.insert(0, name, value)
        return frame


def _check_options(k: int | None, which: str, method: str, tol: float) -> None:
    if which not in WHICH:
        raise UserInputError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    if method not in METHODS:
        raise UserInputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if k is not None and (not isinstance(k, int) or k < 1):
        raise UserInputError(f"k must be a positive integer or None (all values), got {k!r}")
    if k is None and method in ("lanczos", "randomized"):
        raise UserInputError("k=None (the whole spectrum) needs method='dense' or 'auto'")
    if method == "randomized" and which != "largest":
        raise UserInputError(
            "randomized subspace iteration only finds the largest singular values; "
            "use method='lanczos' (or 'dense') for the smallest"
        )
    if not tol > 0:
        raise UserInputError(f"tol must be positive, got {tol!r}")


def _wanted(count: int, k: int | None, which: str) -> np.ndarray:
    """Positions (descending order, 0 = largest) among ``count`` values that ``which`` asks for."""
    if k is None or (which == "both" and 2 * k >= count) or k >= count:
        return np.arange(count)
    if which == "largest":
        return np.arange(k)
    if which == "smallest":
        return np.arange(count - k, count)
    return np.concatenate([np.arange(k), np.arange(count - k, count)])


def _sigma_error(sigma: Tensor, residual: Tensor) -> Tensor:
    """Bound on |sigma - nearest singular value| from the Gram residual (module docstring)."""
    squared = sigma**2
    above = torch.sqrt(squared + residual) - sigma
    below = sigma - torch.sqrt(torch.clamp(squared - residual, min=0.0))
    return torch.maximum(above, below)


def _dense(operator: JacobianOperator, k: int | None, which: str) -> SpectrumResult:
    values = torch.linalg.svdvals(operator.dense())
    dim = values.numel()
    positions = _wanted(dim, k, which)
    chosen = values[positions].double()
    bound = torch.finfo(operator.dtype).eps * max(operator.m, operator.n) * float(values[0])
    return SpectrumResult(
        values=chosen.numpy(),
        indices=positions,
        errors=np.full(len(positions), bound),
        residuals=np.full(len(positions), np.nan),
        matvecs=operator.products,
        method="dense",
        converged=True,
        dim=dim,
        shape=(operator.m, operator.n),
    )


def orthonormal_rows(block: Tensor, basis: Tensor, generator: torch.Generator) -> Tensor:
    """Rows of ``block`` made orthonormal and orthogonal to the rows of ``basis``.

    Two passes of Gram-Schmidt against the basis, then QR; directions lost to cancellation
    (the Krylov space became invariant) are replaced by fresh random ones.
    """
    size = block.shape[1]
    room = size - basis.shape[0]
    block = block[: max(room, 0)]
    if room <= 0:
        return block
    threshold = torch.finfo(block.dtype).eps ** 0.5
    for attempt in range(3):
        scale = block.norm(dim=1, keepdim=True).clamp_min(torch.finfo(block.dtype).tiny)
        block = block / scale
        for _ in range(2):
            if basis.shape[0]:
                block = block - (block @ basis.T) @ basis
        q, r = torch.linalg.qr(block.T)
        healthy = r.diagonal().abs() > threshold
        if bool(healthy.all()) or attempt == 2:
            return q.T[healthy]
        fresh = torch.randn(int((~healthy).sum()), size, generator=generator, dtype=block.dtype)
        block = torch.cat([q.T[healthy], fresh])
    return block


TSQR_ROWS = 2**16  # rows of one float64 QR in tall_triangle: 64 MiB at 128 columns


def tall_triangle(tall: Tensor, rows: int = TSQR_ROWS) -> Tensor:
    """R of the QR of a tall matrix (n, d), in float64, by blocks of ``rows`` rows (TSQR:
    the R of each block, stacked, and their QR): the same R up to the signs of its rows as
    one Householder QR, equally stable, but it never holds a float64 copy of the whole
    matrix (a 802816 x 128 map of resnet152 at 224: 822 MB, twice with LAPACK's workspace)."""
    work = torch.float64
    rows = max(rows, 2 * tall.shape[1])  # the stacked triangles shrink at every level
    if tall.shape[0] <= rows:
        return torch.linalg.qr(tall.to(work), mode="r")[1]
    parts = [torch.linalg.qr(tall[i : i + rows].to(work), mode="r")[1]
             for i in range(0, tall.shape[0], rows)]  # fmt: skip
    return tall_triangle(torch.cat(parts), rows)


def _ritz(
    basis: Tensor, images: Tensor, grams: Tensor, k: int, which: str, exact: bool
) -> tuple[Tensor, np.ndarray, Tensor, Tensor, float, Tensor]:
    """Ritz values of J on span(basis), with residuals and error bounds.

    ``basis`` Q (d, c) orthonormal rows, ``images`` = A Q (d, rows), ``grams`` = A^T A Q
    (d, c). ``exact=False`` diagonalises the small projected Gram Q A^T A Q^T (cheap, for
    convergence checks); ``exact=True`` takes the SVD of A Q, which does not square the
    condition number (accurate small values in float32), as the SVD of the d x d triangle R^T
    of A Q = R^T Q'^T (QR first: several times faster than LAPACK's SVD of the wide A Q).
    Returns the wanted values (descending), their positions, residuals, error bounds, the
    largest Ritz value and the Ritz vectors (rows).
    """
    work = torch.float64
    if exact:  # images = R^T Q^T (QR of the tall images^T): the SVD of the small R^T
        coefficients, sigma, _ = torch.linalg.svd(tall_triangle(images.T).T)
    else:
        projected = basis.to(work) @ grams.to(work).T
        eigenvalues, coefficients = torch.linalg.eigh((projected + projected.T) / 2)
        eigenvalues, coefficients = eigenvalues.flip(0), coefficients.flip(1)
        sigma = eigenvalues.clamp_min(0.0).sqrt()
    top = float(sigma[0])
    positions = _wanted(sigma.numel(), k, which)
    sigma = sigma[positions]
    weights = coefficients[:, positions]  # (d, wanted): Ritz vector v = Q^T w
    gram_of_ritz = weights.T @ grams.to(work)
    ritz_vectors = weights.T @ basis.to(work)
    residual = (gram_of_ritz - sigma[:, None] ** 2 * ritz_vectors).norm(dim=1)
    return sigma, positions, residual, _sigma_error(sigma, residual), top, ritz_vectors


def _iterate(
    view: TallView,
    k: int,
    which: str,
    tol: float,
    block_size: int,
    max_dim: int,
    keep_history: bool,
    generator: torch.Generator,
    start: Tensor | None = None,
) -> SpectrumResult:
    """Block Lanczos (keep_history) or subspace iteration on A^T A until every wanted value
    has error <= tol * sigma (or its residual is at rounding level), or the budget is spent."""
    dtype, cols = view.operator.dtype, view.cols
    rounding = 50 * torch.finfo(dtype).eps
    basis = torch.empty(0, cols, dtype=dtype)
    images = torch.empty(0, view.rows, dtype=dtype)
    grams = torch.empty(0, cols, dtype=dtype)
    block = torch.randn(block_size, cols, generator=generator, dtype=dtype)
    if start is not None and start.ndim == 2 and start.shape[1] == cols:
        block = torch.cat([start.to(dtype)[:block_size], block])[:block_size]
    spent = 0
    while True:
        block = orthonormal_rows(block, basis if keep_history else basis[:0], generator)
        image = view.apply(block)
        gram = view.apply_transpose(image)
        spent += block.shape[0]
        if keep_history:
            basis, images, grams = (
                torch.cat([basis, block]),
                torch.cat([images, image]),
                torch.cat([grams, gram]),
            )
        else:
            basis, images, grams = block, image, gram
        exhausted = keep_history and basis.shape[0] >= cols
        sigma, positions, residual, error, top, _ = _ritz(basis, images, grams, k, which, False)
        ok = (error <= tol * sigma) | (residual <= rounding * top**2)
        converged = bool(ok.all()) or exhausted
        if keep_history:  # the last Lanczos block may be smaller, to fill the budget/space
            remaining = min(max_dim, cols) - spent
        else:
            remaining = block_size if spent + block_size <= max_dim else 0
        if converged or remaining <= 0:
            break
        block = gram[:remaining]
    sigma, positions, residual, error, top, ritz = _ritz(basis, images, grams, k, which, True)
    ok = (error <= tol * sigma) | (residual <= rounding * top**2)
    converged = bool(ok.all()) or exhausted
    dim = cols
    indices = positions.copy()
    if which in ("smallest", "both"):
        low = positions >= (k if which == "both" else 0)
        indices[low] = dim - (basis.shape[0] - positions[low])
    return SpectrumResult(
        values=sigma.numpy(),
        indices=indices,
        errors=error.numpy(),
        residuals=residual.numpy(),
        matvecs=view.operator.products,
        method="lanczos" if keep_history else "randomized",
        converged=converged,
        dim=dim,
        shape=(view.operator.m, view.operator.n),
        vectors=ritz.to(dtype),
    )


def _largest(
    operator: JacobianOperator,
    k: int,
    tol: float,
    max_matvecs: int | None,
    generator: torch.Generator,
    start: Tensor | None,
    bottom: bool = False,
    stop_at_top: bool = False,
) -> SpectrumResult:
    """Top k by Golub-Kahan-Lanczos bidiagonalisation (``bidiagonal.largest_triplets``); with
    ``bottom`` also the k smallest Ritz values of the same Krylov space, certified from the
    same stored products (honest bounds; converged only where the bound meets tol)."""
    view = operator.tall()
    dim = min(view.shape)
    budget = max_matvecs or 2 * max(40 * k, 512)
    found = largest_triplets(
        view, k, tol, budget, generator, start=start, bottom=k * bottom, stop_at_top=stop_at_top
    )
    parts = [found] + ([found.bottom] if bottom else [])
    low = np.arange(dim - len(found.bottom.values), dim) if bottom else np.arange(0)
    return SpectrumResult(
        values=torch.cat([part.values for part in parts]).numpy(),
        indices=np.concatenate([np.arange(k), low]),
        errors=torch.cat([part.errors for part in parts]).numpy(),
        residuals=torch.cat([part.residuals for part in parts]).numpy(),
        matvecs=operator.products,
        method="lanczos",
        converged=all(part.converged for part in parts),
        dim=dim,
        shape=operator.shape,
        vectors=found.right.to(operator.dtype),
    )


def singular_values(
    fn: TensorFunction,
    x: Tensor,
    k: int | None = 16,
    which: str = "largest",
    method: str = "auto",
    tol: float = 1e-4,
    *,
    block_size: int | None = None,
    max_matvecs: int | None = None,
    seed: int = 0,
    chunk_size: int = 64,
    start: Tensor | None = None,
    stop_at_top: bool = False,
) -> SpectrumResult:
    """The k largest and/or smallest singular values of J = d fn(x)/dx, without forming J.

    ``method="dense"`` forms J (min(m, n) products) and takes ``torch.linalg.svdvals``;
    ``"lanczos"``: Golub-Kahan-Lanczos bidiagonalisation (largest, both: one Krylov space
    serves the top and the bottom) or block Lanczos on J^T J (smallest), full
    reorthogonalisation, stopping when every wanted value has an error bound <= tol * sigma
    (``stop_at_top``: which="both" stops once the top is certified, the bottom values are then
    the smallest Ritz values so far, upper bounds with honest error bounds);
    ``"randomized"``: subspace iteration (largest only); ``"auto"``: dense when
    min(m, n) <= 512 or k is None, else lanczos. Computes in the dtype of x (float32 gives
    about 1e-6 relative accuracy on large values, ~1e-7 * sigma_max absolute on small ones).
    ``max_matvecs`` caps the Gram products (each is one J and one J^T product); the random
    start uses its own generator seeded by ``seed``, never the global RNG; ``start`` (rows of
    shape (p, min(m, n))) replaces the first p random start vectors (a warm start).
    A dense route (method="dense", k=None, or k covering the whole spectrum) is costed first
    (``DenseCost``) and refused with UserInputError above ``DENSE_*_LIMIT``.
    """
    _check_options(k, which, method, tol)
    operator = JacobianOperator(fn, x, chunk_size=chunk_size)
    dim = min(operator.m, operator.n)
    method = route(operator.shape, operator.dtype, k, which, method)
    if method == "dense":
        return _dense(operator, k, which)
    generator = probe_generator(seed)
    if method == "lanczos" and which in ("largest", "both"):
        both = which == "both"
        return _largest(operator, k, tol, max_matvecs, generator, start, both, stop_at_top)
    block_size = block_size or max(k, 16)  # more start vectors bought nothing (bench_spectra)
    budget = (max_matvecs // 2) if max_matvecs else max(40 * k, 512)
    return _iterate(
        TallView(operator),
        k,
        which,
        tol,
        min(block_size, dim),
        max(budget, block_size),
        keep_history=method == "lanczos",
        generator=generator,
        start=start,
    )
